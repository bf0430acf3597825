"""The temporaries of writers. A writer killed mid-write leaves a hidden temporary beside its
output, named ``.NAME.<pid>-<host>.<random>.part``: the first write of a later process into that
folder removes those whose process is gone (never one of a running process: torchrun workers
write concurrently), and :func:`check_finished` keeps readers from taking one for a model or a
manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
from pathlib import Path

from revise.errors import OptionError

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# .NAME.<pid>-<host>.<random>.part (a temporary file or folder) or .old (a replaced folder)
_TEMPORARY = re.compile(
    r"\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[a-z0-9_]{8}\.(?P<kind>part|old)"
)
_UNFINISHED = re.compile(r"\..+\.[a-z0-9_]{8}\.(part|old)")  # also the names before the tag


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-{_HOST}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing the same output
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, run by another user
        return True
    return True


_SWEPT: set[str] = set()  # folders this process has already cleared of stale temporaries


def _remove_stale(folder: Path) -> None:
    """Remove, once per process and folder, the temporaries that writers which are gone left in
    ``folder``: a ``.old`` copy only once its output is back in place (otherwise it is the
    previous output's only copy). Those of running processes and of other machines stay."""
    key = os.path.abspath(folder)
    if key in _SWEPT:
        return  # once: a folder may hold a cache of many thousand files
    _SWEPT.add(key)
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            found = _TEMPORARY.fullmatch(entry.name)
            if not found or found["host"] != _HOST or _alive(int(found["pid"])):
                continue
            if found["kind"] == "old" and not (folder / found["name"]).exists():
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def check_finished(path: str | os.PathLike, what: str) -> None:
    """Refuse to read an unfinished output as a model or manifest: a writer's hidden temporary
    (``.NAME....part``, or the ``.old`` copy of a replaced folder), or anything inside one."""
    given = Path(path)
    if any(
        _UNFINISHED.fullmatch(part) for part in (*given.absolute().parts, *given.resolve().parts)
    ):
        raise OptionError(
            what,
            f"{given} is an unfinished output (the temporary of an interrupted or running "
            "write), not a finished one",
            hint="use the finished output beside it, or run the command that writes it again",
        )
