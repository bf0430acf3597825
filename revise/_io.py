"""Outputs and digests. Every output is atomic: complete or absent, never half-written.

The rules every command that writes follows, checked by :func:`check_output` before any work:

* an output never replaces one of the command's inputs: not the same file, not a folder that
  holds one (paths compared as given and with symlinks resolved, and by inode);
* an existing output, file or folder alike, is replaced only with ``--overwrite``;
* ``--overwrite`` replaces only what revise wrote (:func:`written_by_revise`): an empty folder,
  a folder holding one of the files revise writes in each kind of output folder it makes
  (:data:`MARKERS`: run.json, bundle.json, ...), or a file whose content is in a format revise
  writes (a manifest, an index failure list, a metrics JSON). No marker file is added, so a
  signed bundle's file set stays exactly what bundle.json lists and the signature covers.

A writer killed mid-write leaves a hidden temporary beside its output, named
``.NAME.<pid>-<host>.<random>.part``: the first write of a later process into that folder
removes those whose process is gone (never one of a running process: torchrun workers write
concurrently), and :func:`check_finished` keeps readers from taking one for a model or a
manifest. A write that fails on a full or read-only file system raises one
:class:`OutputError` naming the output and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from revise.errors import OptionError, RevisionError, UsageError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _process_umask() -> int:
    mask = os.umask(0o022)  # read by setting: done once, at import, before any thread runs
    os.umask(mask)
    return mask


# tempfile makes files 0600 and folders 0700 whatever the umask; outputs get the modes an open()
# or mkdir() would give them (a colleague, or a Docker host user, can read the report).
_UMASK = _process_umask()
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK

# -- what revise wrote ---------------------------------------------------------------------------

# A file that each kind of output folder revise makes holds (the folders are written atomically,
# but for the demo's and the recipe's, which hold theirs once the first run got that far).
RUN_RECORD = "run.json"  # a run folder: revise unlearn, revise merge (and a bundle)
BUNDLE_MANIFEST = "bundle.json"  # revise export
REPORT_JSON = "revision_report.json"  # revise validate (attached to a bundle)
REPORT_HTML = "report.html"  # revise validate, beside REPORT_JSON
SWEEP_RECORD = "sweep.json"  # revise sweep
DEMO_REPORT = "demo_report.json"  # revise demo
RESOLVED_RECIPE = "recipe.resolved.yaml"  # the workdir of revise run (before any stage)
MARKERS = (RUN_RECORD, BUNDLE_MANIFEST, REPORT_JSON, SWEEP_RECORD, DEMO_REPORT, RESOLVED_RECIPE)
MANIFEST_HEAD = ("sample_key", "path")  # a manifest's first columns (revise.data.manifest)
FAILURES_HEAD = ("path", "reason")  # `revise index --failures`
MAX_RECOGNISED_BYTES = 64 << 20  # a larger JSON is no metrics file of revise's


def _csv_head(path: Path) -> bool:
    with open(path, "rb") as f:
        header = f.readline(4096).decode("utf-8").lstrip("\ufeff").strip()
    columns = tuple(header.split(","))
    return columns[:2] == MANIFEST_HEAD or columns == FAILURES_HEAD


def _parquet_head(path: Path) -> bool:
    import pyarrow.parquet as pq

    return tuple(pq.read_schema(path).names[:2]) == MANIFEST_HEAD


def _metrics_json(path: Path) -> bool:
    """`revise evaluate --json`: {set: {n, accuracy, by}} (evaluate.evaluate's result)."""
    if path.stat().st_size > MAX_RECOGNISED_BYTES:
        return False
    doc = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(doc, dict) and all(
        isinstance(stats, dict) and {"n", "accuracy"} <= stats.keys() for stats in doc.values()
    )


_FILE_FORMATS: dict[str, Callable[[Path], bool]] = {
    ".csv": _csv_head,
    ".parquet": _parquet_head,
    ".json": _metrics_json,
}


def written_by_revise(path: str | os.PathLike) -> bool:
    """Whether ``--overwrite`` may replace ``path``: an empty folder, a folder holding one of
    :data:`MARKERS`, or a file in a format revise writes (recognised by its content)."""
    path = Path(path)
    try:
        if path.is_dir():
            empty = next(path.iterdir(), None) is None
            return empty or any((path / name).is_file() for name in MARKERS)
        recognise = _FILE_FORMATS.get(path.suffix.lower())
        return recognise is not None and recognise(path)
    except (OSError, ValueError):  # unreadable, or not the format: not something revise wrote
        return False


def _replaces(target: Path, source: Path) -> bool:
    """Whether writing ``target`` would replace ``source``: the same path or a folder above it,
    as given or with symlinks resolved, or the same file under another name (a hard link)."""
    pairs = ((Path(os.path.abspath(target)), Path(os.path.abspath(source))),)
    pairs += ((target.resolve(), source.resolve()),)
    if any(t == s or t in s.parents for t, s in pairs):
        return True
    try:
        return os.path.samefile(target, source)
    except OSError:  # one of them does not exist
        return False


def check_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    option: str | None = None,
) -> None:
    """Refuse, before any work, an output that would destroy an input or a file revise did not
    write (the rules are in this module's docstring). ``inputs`` are the paths the command
    reads (None for options not given); ``option`` is the library's name of the output option
    (``out``), which each shell says its own way (``-o``)."""
    target = Path(path)

    def refuse(rest: str, hint: str) -> UsageError:
        if option is None:
            return UsageError(f"output {target} {rest}", hint=hint, options=("overwrite",))
        return OptionError(option, f"{target} {rest}", hint=hint, options=("overwrite",))

    elsewhere = f"choose another {{{option}}}" if option else "write it elsewhere"
    for source in inputs:
        if source is not None and _replaces(target, Path(source)):
            raise refuse(f"would replace the input {source}", elsewhere)
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise refuse("already exists", f"{elsewhere} or pass {{overwrite}}")
    if not written_by_revise(target):
        raise refuse(
            "does not look like revise's output: revise replaces only its own outputs",
            f"{elsewhere}, or move {target} away yourself",
        )


# -- temporaries of interrupted writers ----------------------------------------------------------

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


# -- text inputs --------------------------------------------------------------------------------


def not_utf8(
    path: str | os.PathLike,
    what: str,
    kind: type[RevisionError] = UsageError,
    *,
    data: bytes | None = None,
    hint: str = "save it as UTF-8",
) -> RevisionError:
    """The error (of ``kind``) for a text input that is not UTF-8: the file and its first bad
    line, never the bytes (they may spell a patient's name). ``data``: the bytes, if read."""
    where = ""
    try:
        (Path(path).read_bytes() if data is None else data).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        where = f" line {line}"
    except OSError:
        pass
    return kind(f"{what} {path}{where} is not UTF-8 text", hint=hint)


def read_json_object(
    path: str | os.PathLike, what: str, kind: type[RevisionError], *, hint: str
) -> dict[str, Any]:
    """A JSON file that must hold an object (a run record, ...); not UTF-8, not JSON or not an
    object is an error of ``kind`` naming the file, with ``hint``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise not_utf8(path, what, kind, hint=hint) from None
    except ValueError as exc:
        raise kind(f"{path} is not valid JSON ({exc})", hint=hint) from None
    if not isinstance(data, dict):
        raise kind(f"{path} is not a JSON object (it holds a {type(data).__name__})", hint=hint)
    return data


# -- full and read-only file systems -------------------------------------------------------------

_SPACE_HINT = "free space there or write to another disk"
_REASONS = {  # errno -> (what happened, what to do)
    errno.ENOSPC: ("no space left on its file system", _SPACE_HINT),
    errno.EDQUOT: ("the disk quota is exceeded", _SPACE_HINT),
    errno.EFBIG: ("the file is too large for its file system", "write to another disk"),
    errno.EROFS: ("its file system is read-only", "write to a writable folder instead"),
}
FULL_BELOW_BYTES = 1 << 20  # a file system with less free space than this counts as full


class OutputError(RevisionError, OSError):
    """A write failed because its file system is full or read-only, or a file could not be
    opened for want of permission (exit 1). Also an OSError:
    code that carries on without an optional output (a cache entry) still catches it."""

    def __init__(self, message: str, *, hint: str, code: int) -> None:
        super().__init__(message, hint=hint)
        self.errno = code


def _full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < FULL_BELOW_BYTES


def write_error(exc: BaseException, target: str | os.PathLike | None = None) -> OutputError | None:
    """The one-line error for a write that failed because the file system is full or
    read-only, or for a permission denied, naming ``target`` (else the file the OSError names);
    None for other failures.

    Some writers hide the errno (safetensors, torch.save): their failure counts as "no space
    left" when ``target``'s file system has (almost) none left."""
    if isinstance(exc, RevisionError) or not isinstance(exc, Exception):
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    if code not in _REASONS and target is not None and _full(Path(target).parent):
        code = errno.ENOSPC
    where = _finished_name(target if target is not None else getattr(exc, "filename", None))
    if code in (errno.EACCES, errno.EPERM):  # a read or a write: the errno does not say which
        return OutputError(
            f"permission denied: {where}",
            hint="check that this user may read and write there (owner, mode), or use another "
            "folder",
            code=code,
        )
    if code not in _REASONS:
        return None
    what, hint = _REASONS[code]
    return OutputError(f"cannot write {where}: {what}", hint=hint, code=code)


def _finished_name(path: str | os.PathLike | None) -> str:
    """``path`` as the user knows it: a temporary folder in it shown as the output it becomes."""
    if path is None:
        return "a file"
    parts = [(_TEMPORARY.fullmatch(part) or {"name": part})["name"] for part in Path(path).parts]
    return str(Path(*parts))


@contextlib.contextmanager
def _reported(target: Path) -> Iterator[None]:
    """A write that fails on a full or read-only file system, as one RevisionError naming
    ``target``."""
    try:
        yield
    except Exception as exc:
        error = write_error(exc, target)
        if error is None:
            raise
        raise error from exc


# -- atomic writers ------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The file has the umask's usual mode from the start; a block that writes a secret narrows it
    (os.chmod) before writing."""
    target = Path(path)
    with _reported(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(target.parent)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".part", dir=target.parent)
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _reported(target):  # before the finally: a failed write's space is still taken
            yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name; rename it to ``path`` only when complete.

    A failed or interrupted run leaves no folder at ``path`` that looks complete. With
    ``overwrite`` an existing folder is first renamed aside (in the same parent), the new one
    renamed in, and only then the old one deleted: if the swap fails the old folder is put
    back, so ``path`` always holds either the old or the new folder, never neither. Whether
    ``overwrite`` may replace what is there is the caller's check (:func:`check_output`).
    """
    target = Path(path)
    if not overwrite:
        check_output(target)
    with _reported(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(target.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".part", dir=target.parent))
        tmp.chmod(DIR_MODE)
    try:
        with _reported(target):
            yield tmp
        _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, replacing a folder there without ever losing both."""
    if not (target.exists() or target.is_symlink()):
        os.replace(new, target)
        return
    # A fresh name beside the target (same file system: the renames are atomic); mkdtemp
    # reserves it, and renaming a folder over an empty folder is allowed.
    old = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".old", dir=target.parent))
    is_dir = target.is_dir() and not target.is_symlink()
    try:
        if not is_dir:
            old.rmdir()  # a file cannot be renamed over a folder
        os.replace(target, old)
    except BaseException:
        if old.is_dir() and not old.is_symlink():
            old.rmdir()
        raise
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)  # put the previous folder back
        raise
    if is_dir:
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()
