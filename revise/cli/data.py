"""`revise index` and `revise select`: site files to a manifest; checking selections."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from revise.cli._common import echo
from revise.errors import DataError, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from revise.data.loaders import IndexFailure, IndexResult


@click.command("index")
@click.argument("root", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o", "--out", required=True, type=click.Path(path_type=Path), help="manifest.parquet or .csv"
)
@click.option(
    "--labels",
    type=click.Path(exists=True, path_type=Path),
    help="CSV: sop_instance_uid|sample_key|path,label[,split]",
)
@click.option(
    "--label-tag", help="Label from a manifest column instead, e.g. body_part (with --label-map)."
)
@click.option(
    "--label-map", multiple=True, help="VALUE=CLASS for --label-tag, repeatable, e.g. CHEST=0."
)
@click.option("--site", default="", help="Site name recorded in every row.")
@click.option(
    "--loader", default="auto", show_default=True, help="Site loader: auto, dicom or a plugin's."
)
@click.option(
    "--failures",
    "failures_out",
    type=click.Path(path_type=Path),
    help="Write unreadable files and reasons to this CSV.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing manifest (and --failures).")
@click.pass_context
def index_cmd(
    ctx, root, out, labels, label_tag, label_map, site, loader, failures_out, overwrite
) -> None:
    """Index images under ROOT (headers only) into a manifest; unreadable files are reported."""
    from revise._io import check_output
    from revise.data import manifest as manifest_mod
    from revise.data.index import apply_label_rule, index

    say = echo(ctx)
    # every option is checked before the site is read (indexing a site can take long)
    if out.suffix not in (".parquet", ".csv"):
        raise UsageError(f"-o {out}: a manifest is .parquet or .csv")
    check_output(out, overwrite=overwrite, inputs=[root, labels], option="-o")
    if failures_out:
        if failures_out.resolve() == out.resolve():
            raise UsageError(f"--failures {failures_out} is the -o manifest too; name another")
        check_output(failures_out, overwrite=overwrite, inputs=[root, labels], option="--failures")
    mapping = _label_rule(root, loader, label_tag, label_map)
    result = index(root, loader=loader, site=site, labels=labels)
    if failures_out:  # written first: it is what explains a run where every file failed
        _write_failures(failures_out, result.failures)
    df = result.manifest
    if label_tag:
        df = apply_label_rule(df, label_tag, mapping)
    if df.empty:
        raise _nothing_indexed(root, result, failures_out)
    manifest_mod.save(df, out)
    files = df["path"].nunique()
    labelled = int(df["label"].notna().sum())
    say(f"indexed {len(df)} images/frames from {files} files ({labelled} labelled) -> {out}")
    if result.skipped:
        say(
            f"skipped {len(result.skipped)} files without images "
            f"(e.g. {result.skipped[0].path}: {result.skipped[0].reason})"
        )
    if result.failures:
        click.echo(f"{len(result.failures)} unreadable files (left out):", err=True)
        for failure in result.failures[:20]:
            click.echo(f"  {failure.path}: {failure.reason}", err=True)
        if len(result.failures) > 20:
            click.echo(f"  ... and {len(result.failures) - 20} more", err=True)


SHOWN_FAILURES = 3


def _label_rule(
    root: Path, loader: str, label_tag: str | None, label_map: tuple[str, ...]
) -> dict[str, int]:
    """--label-map as VALUE -> class, checked (with --label-tag) before anything is indexed."""
    import pandas as pd

    from revise.data.index import DICOM, apply_label_rule, choose_loader
    from revise.data.manifest import normalize

    if label_map and not label_tag:
        raise UsageError("--label-map needs --label-tag (the column whose values it maps)")
    if not label_tag:
        return {}
    if not label_map:
        raise UsageError(
            f"--label-tag {label_tag} needs --label-map VALUE=CLASS (repeatable)",
            hint=f"e.g. --label-tag {label_tag} --label-map CHEST=0 --label-map HAND=1",
        )
    mapping: dict[str, int] = {}
    for item in label_map:
        value, sep, cls = item.partition("=")
        if not sep or not cls.strip().lstrip("-").isdigit():
            raise UsageError(f"--label-map {item!r} is not VALUE=CLASS (CLASS an integer)")
        mapping[value] = int(cls)
    if choose_loader(root, loader).name == DICOM:
        # the built-in loader writes exactly the manifest columns: a tag outside them is
        # refused now (a plugin's loader may add columns, known only once it has run)
        apply_label_rule(normalize(pd.DataFrame()), label_tag, mapping)
    return mapping


def _write_failures(path: Path, failures: list[IndexFailure]) -> None:
    """The --failures CSV (path, reason): only its header when none failed."""
    import pandas as pd

    from revise._io import atomic_path

    table = pd.DataFrame([vars(f) for f in failures], columns=["path", "reason"])
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _nothing_indexed(root: Path, result: IndexResult, failures_out: Path | None) -> DataError:
    """The error for a run without a single image, naming the first few failures and why."""
    failures = result.failures
    detail = f"{len(failures)} unreadable files"
    if failures:
        shown = "; ".join(f"{f.path}: {f.reason}" for f in failures[:SHOWN_FAILURES])
        more = (
            f"; and {len(failures) - SHOWN_FAILURES} more" if len(failures) > SHOWN_FAILURES else ""
        )
        detail += f": {shown}{more}"
    elif result.skipped:
        detail += f", {len(result.skipped)} files without images"
    where = (
        f"every file and reason is in {failures_out}"
        if failures_out
        else "pass --failures F.csv to list every file and reason"
    )
    return DataError(f"no image could be indexed under {root} ({detail})", hint=where)


@click.command("select")
@click.argument("manifest", type=click.Path(exists=True, path_type=Path))
@click.argument("expression")
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), help="Write the selected rows as a manifest."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing -o manifest.")
@click.pass_context
def select_cmd(ctx, manifest, expression, out, overwrite) -> None:
    """Show what EXPRESSION selects in MANIFEST, e.g. 'device == "Cirrus 800 FA"'."""
    from revise._io import check_output
    from revise.data import manifest as manifest_mod
    from revise.data.select import describe, select

    if out is not None and out.suffix not in (".parquet", ".csv"):
        raise UsageError(
            f"-o {out}: a manifest is .parquet or .csv", hint=f"e.g. -o {out.stem}.csv"
        )
    if out is not None:
        check_output(out, overwrite=overwrite, inputs=[manifest], option="-o")
    df = manifest_mod.load(manifest)
    chosen = select(df, expression)
    # describe() hides values given for patient: a clear patient ID never reaches the console.
    click.echo(f"{describe(expression)} selects {_share(df, chosen)}")
    unlabelled = df["label"].isna()
    if unlabelled.any() and not unlabelled.all():
        click.echo(
            f"  and {int(chosen['label'].isna().sum()):,} of {int(unlabelled.sum()):,} "
            "unlabelled rows (revisions leave unlabelled rows out)"
        )
    for column in ("device", "label", "split"):
        counts = chosen[column].astype("string").fillna("<empty>").value_counts().to_dict()
        click.echo(f"  by {column}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if out:
        manifest_mod.save(chosen, out)
        echo(ctx)(f"wrote {out}")


def _share(df: pd.DataFrame, chosen: pd.DataFrame) -> str:
    """What ``chosen`` (rows of ``df``) takes of the labelled training and held-out rows a
    revision uses, e.g. ``435 of 1,363 training rows (and 110 of 434 held-out rows)``."""
    import pandas as pd

    from revise.data.split import selection_share

    if df["label"].isna().all():
        return f"{len(chosen):,} of {len(df):,} rows (no row has a label yet)"
    return selection_share(df, pd.Series(df.index.isin(chosen.index), index=df.index))


COMMANDS = [index_cmd, select_cmd]
