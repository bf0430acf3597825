"""The index stage: a site's image files in (headers only), a manifest out; unreadable files
are counted and reported, never fatal unless nothing could be read."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from revise._io.atomic import atomic_path
from revise._io.outputs import check_output
from revise.data import manifest as manifest_mod
from revise.data.index import DICOM, apply_label_rule, choose_loader, index
from revise.data.manifest import normalize
from revise.errors import DataError, OptionError

if TYPE_CHECKING:
    from revise.data.loaders import IndexFailure, IndexResult

Say = Callable[[str], None]
SHOWN_FAILURES = 3


def check_label_rule(
    root: Path, loader: str, label_tag: str | None, label_map: Mapping[Any, int]
) -> None:
    """``label_map`` (VALUE -> class) for ``label_tag``, checked before anything is indexed."""

    if label_map and not label_tag:
        raise OptionError(
            "label_map",
            "needs {label_tag} (the column whose values it maps)",
            options=("label_tag",),
        )
    if not label_tag:
        return
    if not label_map:
        raise OptionError(
            "label_tag",
            f"{label_tag} needs {{label_map}} VALUE=CLASS (repeatable)",
            hint=f"e.g. {{label_tag}} {label_tag} {{label_map}} CHEST=0 {{label_map}} HAND=1",
            options=("label_map",),
        )
    if choose_loader(root, loader).name == DICOM:
        # the built-in loader writes exactly the manifest columns: a tag outside them is
        # refused now (a plugin's loader may add columns, known only once it has run)
        apply_label_rule(normalize(pd.DataFrame()), label_tag, dict(label_map))


def index_site(
    root: Path,
    out: Path,
    *,
    labels: Path | None = None,
    label_tag: str | None = None,
    label_map: Mapping[Any, int] | None = None,
    site: str = "",
    loader: str = "auto",
    failures: Path | None = None,
    overwrite: bool = False,
    say: Say = lambda _: None,
) -> IndexResult:
    """Index the images under ``root`` into the manifest ``out`` (.parquet or .csv); the
    :class:`~revise.data.loaders.IndexResult` (its manifest as written). ``failures``: a CSV
    listing every unreadable file and why. Every option is checked before the site is read
    (indexing a site can take long)."""

    if out.suffix not in (".parquet", ".csv"):
        raise OptionError("out", f"{out}: a manifest is .parquet or .csv")
    check_output(out, overwrite=overwrite, inputs=[root, labels], option="out")
    if failures:
        if failures.resolve() == out.resolve():
            raise OptionError(
                "failures",
                f"{failures} is the {{out}} manifest too; name another",
                options=("out",),
            )
        check_output(failures, overwrite=overwrite, inputs=[root, labels], option="failures")
    check_label_rule(root, loader, label_tag, label_map or {})
    result = index(root, loader=loader, site=site, labels=labels)
    if failures:  # written first: it is what explains a run where every file failed
        _write_failures(failures, result.failures)
    df = result.manifest
    if label_tag:
        df = apply_label_rule(df, label_tag, dict(label_map or {}))
    if df.empty:
        raise _nothing_indexed(root, result, failures)
    manifest_mod.save(df, out)
    result.manifest = df
    files = df["path"].nunique()
    labelled = int(df["label"].notna().sum())
    say(f"indexed {len(df)} images/frames from {files} files ({labelled} labelled) -> {out}")
    if result.skipped:
        say(
            f"skipped {len(result.skipped)} files without images "
            f"(e.g. {result.skipped[0].path}: {result.skipped[0].reason})"
        )
    return result


def failure_lines(result: IndexResult, shown: int = 20) -> list[str]:
    """The unreadable files (left out) and why, the first ``shown`` of them."""
    if not result.failures:
        return []
    lines = [f"{len(result.failures)} unreadable files (left out):"]
    lines += [f"  {failure.path}: {failure.reason}" for failure in result.failures[:shown]]
    if len(result.failures) > shown:
        lines.append(f"  ... and {len(result.failures) - shown} more")
    return lines


def _write_failures(path: Path, failures: list[IndexFailure]) -> None:
    """The failures CSV (path, reason): only its header when none failed."""

    table = pd.DataFrame([vars(f) for f in failures], columns=["path", "reason"])
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _nothing_indexed(root: Path, result: IndexResult, failures_out: Path | None) -> DataError:
    """The error for a run without a single image, naming the first few failures and why."""
    failures = result.failures
    detail = f"{len(failures)} unreadable files"
    if failures:
        shown = "; ".join(f"{f.path}: {f.reason}" for f in failures[:SHOWN_FAILURES])
        more = len(failures) - SHOWN_FAILURES
        detail += f": {shown}" + (f"; and {more} more" if more > 0 else "")
    elif result.skipped:
        detail += f", {len(result.skipped)} files without images"
    where = (
        f"every file and reason is in {failures_out}"
        if failures_out
        else "pass {failures} F.csv to list every file and reason"
    )
    return DataError(
        f"no image could be indexed under {root} ({detail})", hint=where, options=("failures",)
    )
