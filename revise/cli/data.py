"""`revise index` and `revise select`: site files to a manifest; checking selections."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from revise.cli._common import echo
from revise.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd


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
    from revise.stages.index import failure_lines, index_site

    mapping: dict[str, int] = {}
    for item in label_map:  # VALUE=CLASS
        value, sep, cls = item.partition("=")
        if not sep or not cls.strip().lstrip("-").isdigit():
            raise UsageError(f"--label-map {item!r} is not VALUE=CLASS (CLASS an integer)")
        mapping[value] = int(cls)
    result = index_site(
        root,
        out,
        labels=labels,
        label_tag=label_tag,
        label_map=mapping,
        site=site,
        loader=loader,
        failures=failures_out,
        overwrite=overwrite,
        say=echo(ctx),
    )
    for line in failure_lines(result):
        click.echo(line, err=True)


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
    from revise._io.outputs import check_output
    from revise.data import manifest as manifest_mod
    from revise.data.select import describe, select

    if out is not None and out.suffix not in (".parquet", ".csv"):
        raise UsageError(
            f"-o {out}: a manifest is .parquet or .csv", hint=f"e.g. -o {out.stem}.csv"
        )
    if out is not None:
        check_output(out, overwrite=overwrite, inputs=[manifest], option="out")
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
