"""The atomic writers: a file or a folder is written under a hidden temporary name beside its
output and renamed into place only when complete, so an output is complete or absent, never
half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from revise._io import DIR_MODE, FILE_MODE
from revise._io.outputs import check_output
from revise._io.temporaries import _remove_stale, _temp_prefix
from revise._io.write_errors import _reported


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
