"""`revise validate`: judge a revised model against acceptance criteria fixed before the run."""

from __future__ import annotations

from pathlib import Path

import click

from revise.cli._common import arch_option, cache_option, card_option, device_option, echo, spelling


@click.command("validate")
@click.argument("model_path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--original",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="The deployed model before revision.",
)
@click.option(
    "--data",
    "manifest_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="The site manifest (forget/retain training rows; held-out rows unless --heldout).",
)
@click.option("--forget", required=True, help="The selection that was forgotten.")
@click.option(
    "--criteria",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Acceptance criteria (YAML gates) written before the run.",
)
@click.option(
    "-o", "--out", required=True, type=click.Path(path_type=Path), help="Report folder to create."
)
@click.option(
    "--reference",
    type=click.Path(exists=True, path_type=Path),
    help="A model retrained without the forget set: adds distance and Avg. Gap.",
)
@click.option(
    "--onnx",
    "onnx_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The exported ONNX model: adds the parity check on held-out images.",
)
@click.option(
    "--heldout",
    help="Held-out images from a DICOM folder, a manifest or a DICOMweb URL (http[s]://...).",
)
@click.option("--heldout-select", help="Selection narrowing the held-out images (QIDO-RS too).")
@click.option(
    "--heldout-labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labels for --heldout images: CSV sop_instance_uid|sample_key|path,label.",
)
@click.option(
    "--timeout", default=30.0, show_default=True, help="DICOMweb connect/read timeout, seconds."
)
@click.option(
    "--by",
    multiple=True,
    default=("device", "label"),
    show_default=True,
    help="Report accuracy per group of these manifest columns (repeatable).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing report folder.")
@card_option
@arch_option
@cache_option
@device_option
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the MIA splits.")
@click.pass_context
def validate_cmd(
    ctx,
    model_path,
    original,
    manifest_path,
    forget,
    criteria,
    out,
    reference,
    onnx_path,
    heldout,
    heldout_select,
    heldout_labels,
    timeout,
    by,
    overwrite,
    card,
    arch,
    cache,
    device,
    seed,
):
    """Validate MODEL (the revised model) against --criteria; exit 0 only when every gate passes.

    Writes OUT/revision_report.json and OUT/report.html. When MODEL is a bundle (`revise
    export`), its model.onnx is checked for parity and the report is added to the bundle.
    Exit codes: 0 every gate passed, 1 a gate failed (or the data could not be read), 2 the
    command or criteria are wrong.
    """
    from revise.stages._options import build
    from revise.stages.validate import ValidateOptions, validate_model, verdict_lines

    options = build(
        ValidateOptions,
        {
            "reference": reference,
            "heldout": heldout,
            "heldout_select": heldout_select,
            "heldout_labels": heldout_labels,
            "timeout": timeout,
            "by": by,
        },
        what="revise validate",
        spell=spelling(ctx),
    )
    result = validate_model(
        model_path,
        original,
        manifest_path,
        forget,
        criteria,
        out,
        options,
        onnx=onnx_path,
        card=card,
        arch=arch,
        cache=cache,
        device=device,
        seed=seed,
        overwrite=overwrite,
        say=echo(ctx),
    )
    for line in verdict_lines(result):
        click.echo(line)
    click.echo(f"{result.record.summary}; report in {out}/report.html")
    if not result.passed:
        ctx.exit(1)


COMMANDS = [validate_cmd]
