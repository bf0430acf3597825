"""A recipe's inputs opened as its stages will open them, while it is planned: what they
refuse is a problem of the recipe now, not a failure hours later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from revise.data import manifest as manifest_mod
from revise.data._select_eval import _read_list
from revise.data.select import InFile, _leaves, parse, select
from revise.data.split import partition
from revise.errors import RevisionError, SelectionError, UsageError
from revise.export.bundle import check_name
from revise.models.pixel import resolve_device
from revise.recipe.model import _Build, _Problems
from revise.recipe.selection import _selection_tree


def _check_runtime(b: _Build) -> None:
    """What every computing stage reads: the device, the deployed model (with the card and
    arch), the manifest and the forget selection on it."""

    b.problems.check("device", lambda: resolve_device(b.device))
    b.check_model("model", b.model)
    _check_data(b)


def _check_data(b: _Build) -> None:
    """The manifest loaded and the forget selection applied as the stages do it (partition:
    its @files read, a selection that matches no labelled training row refused). With an index
    stage the manifest does not exist yet: only the selection's @files are read."""

    if any(s.name == "index" for s in b.stages) or not b.manifest.exists():
        _check_list_files(b.problems, "forget", b.forget)
        return
    try:
        df = manifest_mod.load(b.manifest)
    except RevisionError as exc:
        b.problems.add("data.manifest", str(exc))
        return
    if b.forget is None or _selection_tree(b.forget) is None:
        return  # missing or not parsing: reported already
    try:
        partition(df, str(b.forget))
    except SelectionError as exc:
        b.problems.add("forget", str(exc))
    except RevisionError as exc:  # e.g. no labelled row
        b.problems.add("data.manifest", str(exc))


def _check_list_files(problems: _Problems, where: str, text: Any) -> None:
    """Read every @file of a selection as the stages will: a missing or unreadable one is a
    problem now."""

    tree = _selection_tree(text) if text is not None else None
    for leaf in _leaves(tree) if tree is not None else []:
        if isinstance(leaf, InFile):
            problems.check(where, lambda leaf=leaf: _read_list(leaf.path, None))


def _check_heldout(problems: _Problems, heldout: Any, selection: Any) -> None:
    """A held-out manifest loaded and narrowed by the selection as `revise validate` does; a
    folder or a DICOMweb server is read only when validation runs, so only the selection's
    @files are read now."""

    manifest = isinstance(heldout, Path) and heldout.suffix in (".parquet", ".csv")
    if not (manifest and heldout.is_file()):
        _check_list_files(problems, "validate.heldout_select", selection)
        return
    try:
        rows = manifest_mod.load(heldout)
    except RevisionError as exc:
        problems.add("validate.heldout", str(exc))
        return
    if selection is not None and _selection_tree(selection) is not None:
        problems.check("validate.heldout_select", lambda: select(rows, str(selection)))


def _check_name(problems: _Problems, where: str, name: str) -> None:

    problems.check(where, lambda: check_name(name, "name"))


def _check_selection(problems, text: str, where: str = "forget") -> None:

    try:
        parse(text)
    except UsageError as exc:
        problems.add(where, str(exc))
