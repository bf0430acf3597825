"""`revise unlearn`, `revise evaluate`, `revise export`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from revise.cli._common import (
    arch_option,
    cache_option,
    card_option,
    check_opset,
    data_option,
    device_option,
    echo,
    model_option,
    parse_settings,
    seed_option,
    spelling,
    step_progress,
    worker_argv,
)
from revise.errors import UsageError

SUMMARY_KEYS = (
    "method",
    "seed",
    "device",
    "attack_success_ratio",
    "wall_clock_s",
    "forget_samples",
    "resumed_from_step",
    "chosen",
    "target",
    "warning",
)


def _load(model_path: Path, card: Path | None, arch: str | None):
    from revise.models.io import load_model

    return load_model(model_path, card=card, architecture=arch)


def _load_manifest(path: Path):
    from revise.data import manifest as manifest_mod

    return manifest_mod.load(path)


@click.command("unlearn")
@model_option
@card_option
@arch_option
@data_option
@click.option(
    "--forget", required=True, help="Selection to forget, e.g. 'device == \"Cirrus 800 FA\"'."
)
@click.option(
    "--method",
    default="auto",
    show_default=True,
    help="Unlearning method (see `revise methods`); auto: no settings, no reference needed.",
)
@click.option("--set", "settings", multiple=True, help="Hyperparameter name=value, repeatable.")
@click.option(
    "-o", "--out", required=True, type=click.Path(path_type=Path), help="Run folder to create."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option(
    "--checkpoint-every",
    default=50,
    show_default=True,
    type=click.IntRange(0),
    help="Steps between checkpoints in <out>.partial/ (0: none).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from the checkpoint in <out>.partial/ (same result).",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the networks (pays on a GPU for long runs; the first steps compile).",
)
@click.option(
    "--criteria",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Acceptance criteria (YAML gates) fixed before the run: auto aims under their ceiling "
    "on the forgotten group's held-out accuracy (a device, a site).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout (only).")
@click.option(
    "--nproc-per-node",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Workers on this machine (torch.distributed via torchrun; one per GPU).",
)
@cache_option
@device_option
@seed_option
@click.pass_context
def unlearn_cmd(
    ctx,
    model_path,
    card,
    arch,
    manifest_path,
    forget,
    method,
    settings,
    out,
    overwrite,
    checkpoint_every,
    resume,
    compile_,
    criteria,
    as_json,
    nproc_per_node,
    cache,
    device,
    seed,
):
    """Revise a model to forget the images a selection names.

    The run is built in <out>.partial/ and moved to <out> when complete; with --checkpoint-every
    N a killed run can be continued with --resume and ends as the uninterrupted run would.
    """
    from revise._io.outputs import check_output
    from revise.stages.unlearn import UnlearnJob, check_job, unlearn_run
    from revise.stages.unlearn import summary as run_summary
    from revise.unlearn.auto import AUTO

    quiet_progress = bool(ctx.obj.get("quiet"))  # on stderr: shown with --json too
    if as_json:
        ctx.obj["quiet"] = True  # stdout carries the JSON alone
    say = echo(ctx)
    check_output(
        out, overwrite=overwrite, inputs=[model_path, card, manifest_path, criteria], option="out"
    )
    if method == AUTO and settings:
        if ctx.get_parameter_source("method") is ParameterSource.DEFAULT:
            raise UsageError(
                "--set gives a method's hyperparameters: name the method with --method",
                hint="e.g. --method psg; without --method revise runs auto, which chooses the "
                "method and its settings itself",
            )
        raise UsageError(
            "--method auto takes no --set: it chooses the method and its settings itself",
            hint="drop --set, or choose a method (e.g. psg) to set its hyperparameters",
        )
    job = UnlearnJob(
        model=model_path,
        manifest=manifest_path,
        forget=forget,
        out=out,
        method=method,
        settings=parse_settings(settings),
        card=card,
        arch=arch,
        checkpoint_every=checkpoint_every,
        compile=compile_,
        cache=cache,
        device=device,
        seed=seed,
        criteria=criteria,
    )
    check_job(job)  # bad settings fail before any work (and before workers start)
    from revise import distributed  # torch: loaded by the command, not by `revise --help`

    if nproc_per_node > 1 and not distributed.launched_by_torchrun():
        ctx.exit(distributed.relaunch(nproc_per_node, worker_argv(ctx, drop=("nproc_per_node",))))
    result = unlearn_run(
        job,
        overwrite=overwrite,
        resume=resume,
        say=say,
        progress=lambda text: step_progress(ctx, text, quiet=quiet_progress),
        quiet=bool(ctx.obj.get("quiet")),
    )
    if result is None:  # a torchrun worker other than rank 0
        distributed.finish()
        return
    if as_json:
        metrics, written = result.record.metrics, result.record.to_json()  # as run.json has it
        summary = {key: written.get(key) for key in SUMMARY_KEYS}
        summary["accuracy"] = {name: stats["accuracy"] for name, stats in metrics.items()}
        summary["run"] = str(out)
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        for line in run_summary(result.record):
            say(line)
        say(f"run written to {out}")
    distributed.finish()


@click.command("evaluate")
@model_option
@card_option
@arch_option
@data_option
@click.option(
    "--forget", help="Selection that was forgotten (splits forget/retain); omit for plain accuracy."
)
@click.option(
    "--by",
    multiple=True,
    default=("device", "label"),
    show_default=True,
    help="Group accuracy by these columns.",
)
@click.option(
    "--json", "json_out", type=click.Path(path_type=Path), help="Also write the metrics as JSON."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --json file.")
@cache_option
@device_option
def evaluate_cmd(
    model_path, card, arch, manifest_path, forget, by, json_out, overwrite, cache, device
):
    """Accuracy on forget / retain / held-out sets, per device and per class."""
    from revise._io.atomic import write_json_atomic
    from revise._io.outputs import check_output
    from revise.data.manifest import FORBIDDEN_COLUMNS
    from revise.data.tensors import prepare
    from revise.registry import did_you_mean
    from revise.unlearn.evaluate import evaluate

    if json_out is not None and json_out.is_dir():
        raise UsageError(f"--json {json_out} is a folder; give a file name")
    if json_out is not None:
        inputs = [model_path, card, manifest_path]
        check_output(json_out, overwrite=overwrite, inputs=inputs, option="json")
    bad = [column for column in by if column in FORBIDDEN_COLUMNS]
    if bad:  # its values would be printed and written to --json
        raise UsageError(
            f"--by {bad[0]}: file paths may identify patients; group by another column"
        )
    manifest = _load_manifest(manifest_path)
    unknown = [column for column in by if column not in manifest.columns]
    if unknown:
        raise UsageError(
            f"--by {', '.join(unknown)}: no such manifest column",
            hint=did_you_mean(unknown[0], [str(c) for c in manifest.columns]),
        )
    loaded = _load(model_path, card, arch)
    data = prepare(manifest, loaded.card, forget, cache_dir=cache)
    metrics = evaluate(loaded.module, loaded.card, data.sets, by=by, device=device)
    for name, stats in metrics.items():
        click.echo(f"{name:<16} n={stats['n']:<6} accuracy {stats['accuracy']:.3f}")
        for column, groups in stats["by"].items():
            for value, g in groups.items():
                click.echo(f"    {column}={value:<24} n={g['n']:<6} accuracy {g['accuracy']:.3f}")
    if json_out:
        write_json_atomic(json_out, metrics)


@click.command("export")
@click.argument("model_path", type=click.Path(exists=True, path_type=Path))
@card_option
@arch_option
@click.option(
    "-o", "--out", required=True, type=click.Path(path_type=Path), help="Bundle folder to create."
)
@click.option(
    "--data",
    "manifest_path",
    type=click.Path(exists=True, path_type=Path),
    help="Manifest whose held-out rows feed the parity checks (else random pixel-range images).",
)
@click.option(
    "--validation",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Report folder of `revise validate` on this model, to include in the bundle.",
)
@click.option(
    "--name", default="revised_model", show_default=True, help="Model name (Triton repository)."
)
@click.option("--fp16", is_flag=True, help="Also ship model.fp16.onnx (own parity gate).")
@click.option(
    "--int8",
    is_flag=True,
    help="Also ship model.int8.onnx: static QDQ quantization calibrated on retain images of "
    "--data (never forget-set images), own gate.",
)
@click.option(
    "--calibration-samples",
    default=256,
    show_default=True,
    type=click.IntRange(1),
    help="Retain images the INT8 variant is calibrated on.",
)
@click.option(
    "--int8-min-agreement",
    default=0.95,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="INT8 gate: least share of parity images on which it predicts as PyTorch does.",
)
@click.option(
    "--forget",
    help="The revision's forget selection, kept out of INT8 calibration (default: the model's "
    "run record's).",
)
@click.option(
    "--parity-samples",
    default=256,
    show_default=True,
    type=click.IntRange(1),
    help="Images for the parity check.",
)
@click.option(
    "--opset",
    default=18,
    show_default=True,
    type=int,
    callback=check_opset,
    help="ONNX opset: 7 up to the newest the installed onnx knows.",
)
@click.option(
    "--recipe",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The recipe that produced the model, stored in the bundle (`revise run` passes it).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle folder.")
@cache_option
@click.pass_context
def export_cmd(
    ctx,
    model_path,
    card,
    arch,
    out,
    manifest_path,
    validation,
    name,
    fp16,
    int8,
    calibration_samples,
    int8_min_agreement,
    forget,
    parity_samples,
    opset,
    recipe,
    overwrite,
    cache,
):
    """Export a model (e.g. a run folder) as a bundle: ONNX with a parity check in ONNX Runtime,
    weights, card, run record, validation report, Triton model repository."""
    from revise.stages._options import build
    from revise.stages.export import ExportOptions, export_bundle

    options = build(
        ExportOptions,
        {
            "name": name,
            "fp16": fp16,
            "int8": int8,
            "calibration_samples": calibration_samples,
            "int8_min_agreement": int8_min_agreement,
            "parity_samples": parity_samples,
            "opset": opset,
        },
        what="revise export",
        spell=spelling(ctx),
    )
    export_bundle(
        model_path,
        out,
        options,
        card=card,
        arch=arch,
        manifest=manifest_path,
        validation=validation,
        recipe=recipe,
        cache=cache,
        forget=forget,
        overwrite=overwrite,
        say=echo(ctx),
    )


COMMANDS = [unlearn_cmd, evaluate_cmd, export_cmd]
