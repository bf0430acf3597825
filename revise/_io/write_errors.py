"""Full and read-only file systems: a write that fails on one (or for want of permission)
raises one :class:`OutputError` naming the output and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from revise._io.temporaries import _TEMPORARY
from revise.errors import RevisionError

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
