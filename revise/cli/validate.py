"""`revise validate`: judge a revised model against acceptance criteria fixed before the run."""

from __future__ import annotations

from pathlib import Path

import click

from revise.cli._common import arch_option, cache_option, card_option, device_option, echo
from revise.errors import UsageError
from revise.registry import did_you_mean


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
    from revise._io import check_finished, check_output
    from revise.data import manifest as manifest_mod
    from revise.data.calibration import run_record, without_calibration
    from revise.data.manifest import FORBIDDEN_COLUMNS
    from revise.data.split import partition, share_of_sets
    from revise.export.bundle import attach_validation, is_bundle
    from revise.export.onnx import require_onnxruntime
    from revise.models.io import load_model
    from revise.pipeline import decode_sets
    from revise.validate.api import check_onnx_matches, validate, write_report
    from revise.validate.criteria import (
        check_inputs,
        check_models,
        load_criteria,
    )
    from revise.validate.heldout import load_heldout, with_heldout

    say = echo(ctx)
    named = {"MODEL": model_path, "--original": original, "--reference": reference}
    named["--data"] = manifest_path
    for what, path in named.items():
        if path is not None:
            check_finished(path, what)
    bundle = model_path if is_bundle(model_path) else None
    if bundle is not None and onnx_path is None:
        onnx_path = bundle / "model.onnx"  # a bundle is validated with the ONNX file it ships
    if onnx_path is not None:
        require_onnxruntime()  # the parity check needs it: say so before any work
    gates = load_criteria(criteria)  # a wrong criteria file stops here, before any work
    have = ["original"] + (["reference"] if reference else []) + (["onnx"] if onnx_path else [])
    check_models(gates, have)
    local = heldout if heldout and "://" not in heldout else None  # a folder or manifest
    inputs = [*named.values(), criteria, onnx_path, local, heldout_labels, card]
    check_output(out, overwrite=overwrite, inputs=inputs, option="-o")
    if heldout_labels and not heldout:
        raise UsageError("--heldout-labels needs --heldout")
    bad = [column for column in by if column in FORBIDDEN_COLUMNS]
    if bad:
        raise UsageError(
            f"--by {bad[0]}: file paths may identify patients; group by another column"
        )
    manifest = manifest_mod.load(manifest_path)
    inputs = {"data": {"path": str(manifest_path), "digest": manifest_mod.digest(manifest)}}
    if heldout:
        held = load_heldout(
            heldout,
            selection=heldout_select,
            labels=heldout_labels,
            cache_dir=cache,
            timeout=timeout,
        )
        manifest, dropped = with_heldout(manifest, held)
        inputs["heldout"] = {**held.describe(), "dropped_as_training_images": dropped}
        say(f"held-out: {len(held.rows)} images from {held.kind} {heldout}")
    unknown = [column for column in by if column not in manifest.columns]
    if unknown:
        raise UsageError(
            f"--by {', '.join(unknown)}: no such manifest column",
            hint=did_you_mean(unknown[0], list(manifest.columns)) or None,
        )
    models = {"candidate": load_model(model_path, card=card, architecture=arch)}
    models["original"] = load_model(original, card=card, architecture=arch)
    if reference:
        models["reference"] = load_model(reference, card=card, architecture=arch)
    model_card = models["candidate"].card
    if onnx_path is not None:  # before any image is decoded
        check_onnx_matches(models["candidate"], onnx_path)
    parts = partition(manifest, forget)
    record = run_record(model_path)  # an automatic revision's calibration rows are not judged
    parts = without_calibration(parts, record)
    if record and record.get("calibration"):
        say("left out: the held-out rows the automatic revision calibrated on")
    check_inputs(gates, parts, have=have, class_names=model_card.class_names)
    data = decode_sets(parts, model_card, forget, cache_dir=cache)
    say("sets: " + ", ".join(f"{k} {v}" for k, v in data.counts().items()))
    say(f"the forget selection selects {share_of_sets(data.counts())}")
    result = validate(
        models, data, gates, onnx_path=onnx_path, by=by, device=device, seed=seed, inputs=inputs
    )
    write_report(result, out, overwrite=overwrite)
    if bundle is not None:
        attach_validation(bundle, out)
        say(f"report attached to the bundle {bundle} (sign it again if it was signed)")
    for verdict in result.verdicts:
        mark = "PASS" if verdict.passed else "FAIL"
        group = ", ".join(f"{k}={v}" for k, v in (verdict.group or {}).items())
        click.echo(
            f"{mark}  {verdict.gate.name}{f' [{group}]' if group else ''}: {verdict.message()}"
        )
    click.echo(f"{result.report['summary']}; report in {out}/report.html")
    if not result.passed:
        ctx.exit(1)


COMMANDS = [validate_cmd]
