"""Selections as records show them (patient values hidden) and the stage fingerprints that
see them keyed."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revise._io.digests import sha256_file
from revise.data._select_tree import PATIENT, Random
from revise.data.select import IDENTIFYING, InFile, _leaves, describe, parse
from revise.errors import UsageError
from revise.phi import site_key

if TYPE_CHECKING:
    from revise.recipe.model import Stage


# Options whose value is a selection: the command runs with the text as written, every record
# and log line shows it as describe() writes it (patient values hidden).
SELECTION_FLAGS = ("--forget", "--heldout-select")


def _selection_tree(text: Any):

    try:
        return parse(str(text))
    except UsageError:
        return None  # reported by _check_selection


def _selection_files(text: Any) -> list[Path]:
    """The ``@file`` lists a selection reads, resolved as the commands resolve them (against
    the working directory)."""

    tree = _selection_tree(text) if text is not None else None
    if tree is None:
        return []
    files = [Path(leaf.path).expanduser() for leaf in _leaves(tree) if isinstance(leaf, InFile)]
    return [f if f.is_absolute() else Path.cwd() / f for f in files]


def _names_patients(text: str) -> bool:
    """Whether a selection gives values describe() hides (patient IDs, file paths): its
    fingerprint must then see them keyed, as the shown text no longer does."""

    tree = _selection_tree(text)
    return tree is not None and any(
        leaf.column in IDENTIFYING and not isinstance(leaf, Random) for leaf in _leaves(tree)
    )


def shown_selection(text: Any) -> str:
    """A selection as records and logs show it: values given for ``patient`` and ``path``
    hidden."""

    tree = _selection_tree(text)
    return describe(tree) if tree is not None else "<selection that does not parse>"


def shown_args(args: list[str]) -> list[str]:
    """A command line with every selection as `shown_selection` writes it."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg in SELECTION_FLAGS:
            out[i + 1] = shown_selection(out[i + 1])
    return out


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "/._-=:,+@" for c in arg) else repr(arg)


def _fingerprint(stage: Stage, upstream: Mapping[str, str]) -> str:
    """sha256 over the stage's command line, the fingerprints of the stages it reads and the
    digests of its inputs. Selections naming patients go in as an HMAC under the site's PHI
    key (the state file must not hold an unkeyed hash of a patient ID)."""
    h = hashlib.sha256(json.dumps(shown_args(stage.args)).encode())
    for i, arg in enumerate(stage.args[:-1]):
        if arg in SELECTION_FLAGS and _names_patients(stage.args[i + 1]):
            h.update(f"\0{arg}={_keyed(stage.args[i + 1].encode())}".encode())
    for name in stage.after:
        h.update(f"\0{name}={upstream.get(name, '')}".encode())
    patient_lists = _patient_files(stage.args)
    for path in dict.fromkeys(stage.inputs):  # each once, in order
        h.update(f"\0{path}={_input_digest(path, keyed=path in patient_lists)}".encode())
    return h.hexdigest()


def _patient_files(args: list[str]) -> set[Path]:
    """The @files compared with ``patient`` in the selections of ``args``."""

    out: set[Path] = set()
    for i, arg in enumerate(args[:-1]):
        tree = _selection_tree(args[i + 1]) if arg in SELECTION_FLAGS else None
        for leaf in _leaves(tree) if tree is not None else []:
            if isinstance(leaf, InFile) and leaf.column == PATIENT:
                path = Path(leaf.path).expanduser()
                out.add(path if path.is_absolute() else Path.cwd() / path)
    return out


def _keyed(data: bytes) -> str:

    return hmac.new(site_key(), b"revise-recipe\0" + data, hashlib.sha256).hexdigest()


def _input_digest(path: Path, *, keyed: bool = False) -> str:
    """A file: sha256 of its content (HMAC when ``keyed``). A folder: sha256 over its entries
    in sorted order, each as relative path, size and mtime in ns (see the module docstring).
    Missing: empty (the command then reports it)."""
    if path.is_file():
        return _keyed(path.read_bytes()) if keyed else sha256_file(path)
    if not path.is_dir():
        return ""
    h = hashlib.sha256(b"folder")
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            entry = Path(root) / name
            try:
                st = entry.stat()
            except OSError:  # a dangling link: its name still counts
                st = None
            rel = entry.relative_to(path).as_posix()
            size, mtime = (st.st_size, st.st_mtime_ns) if st else (-1, -1)
            h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()
