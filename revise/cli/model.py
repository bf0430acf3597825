"""`revise unlearn`, `revise evaluate`, `revise export`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click
from click.core import ParameterSource

from revise import distributed
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


def _auto_summary(record: dict) -> str:
    """What the automatic revision chose, how close it estimates it came, and any warning."""
    target = record["target"]
    low, high = target["estimated_distance_interval"]
    text = (
        f"auto ({target['kind']} forgetting): chose {record['chosen']} in "
        f"{record['wall_clock_s']['unlearn']:.2f} s; estimated distance to a retrained model "
        f"{target['estimated_distance']:.3f} (95% interval {low:.3f}-{high:.3f})"
    )
    if record.get("warning"):
        text += f"\nWARNING: {record['warning']}"
    return text


def _first_worker() -> bool:
    """Rank 0 under torchrun (known from its environment before the process group exists)."""
    return os.environ.get("RANK", "0") == "0"


def _prepare_partial(say, out: Path, resume: bool) -> None:
    """Say what happens to an unfinished run of ``out`` (its ``.partial`` folder): continued
    with --resume when it holds a checkpoint, otherwise removed for a fresh start."""
    from revise.unlearn import checkpoint
    from revise.unlearn.api import check_partial, checkpoint_dir_for, partial_dir

    check_partial(out)  # never remove a folder revise did not make
    partial = partial_dir(out)
    saved = checkpoint.peek(checkpoint_dir_for(out)) if partial.exists() else None
    if resume and saved is not None:
        say(f"resuming from step {saved['global_step']} (checkpoint in {partial})")
    elif resume:
        say(f"no checkpoint in {partial}: starting fresh")
        shutil.rmtree(partial, ignore_errors=True)
    elif partial.exists():
        what = f"its checkpoint at step {saved['global_step']}" if saved else "it"
        say(f"starting fresh: removing the unfinished run {partial} (--resume continues {what})")
        shutil.rmtree(partial)


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
    from revise._io import check_output
    from revise.data.split import share_of_sets
    from revise.models.io import weights_digest
    from revise.pipeline import prepare, run_unlearning
    from revise.unlearn.api import (
        checkpoint_dir_for,
        discard_partial,
        make_config,
        save_run,
    )
    from revise.unlearn.auto import AUTO

    quiet_progress = bool(ctx.obj.get("quiet"))  # on stderr: shown with --json too
    if as_json:
        ctx.obj["quiet"] = True  # stdout carries the JSON alone
    say = echo(ctx)
    check_output(out, overwrite=overwrite, inputs=[model_path, card, manifest_path], option="-o")
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
    # bad settings fail before any work; auto has none
    config = None if method == AUTO else make_config(method, parse_settings(settings))
    launcher = nproc_per_node > 1 and not distributed.launched_by_torchrun()
    if not launcher and _first_worker():  # the run's own process, or rank 0 of torchrun's
        _prepare_partial(say, out, resume)
    if launcher:
        ctx.exit(distributed.relaunch(nproc_per_node, worker_argv(ctx, drop=("nproc_per_node",))))
    loaded = _load(model_path, card, arch)
    quiet = bool(ctx.obj.get("quiet"))
    data = prepare(
        _load_manifest(manifest_path), loaded.card, forget, cache_dir=cache, progress=not quiet
    )
    say("sets: " + ", ".join(f"{k} {v}" for k, v in data.counts().items()))
    say(f"the forget selection selects {share_of_sets(data.counts())}")
    try:
        with step_progress(ctx, f"unlearn {method}", quiet=quiet_progress) as progress:
            result = run_unlearning(
                loaded.module,
                loaded.card,
                data,
                method=method,
                config=config,
                device=device,
                seed=seed,
                base_digest=weights_digest(loaded.module),
                progress=progress,
                checkpoint_dir=checkpoint_dir_for(out),
                checkpoint_every=checkpoint_every,
                resume=resume,
                compile=compile_,
            )
    except BaseException:
        if _first_worker():
            discard_partial(out)  # kept if it holds a checkpoint: --resume continues from it
        raise
    if not distributed.is_main_process():
        distributed.finish()
        return
    result.record["base_model"] = {
        "path": str(Path(model_path).resolve()),  # found again from any folder (revise merge)
        "format": loaded.format,
        "sha256": loaded.card.source_sha256,
    }
    try:
        save_run(result, out, overwrite=overwrite)
    except BaseException:
        if not overwrite or out.exists():  # else the previous run may wait in the partial folder
            discard_partial(out)  # e.g. a full disk: no half-written run is left behind
        raise
    metrics = result.record["metrics"]
    if as_json:
        summary = {key: result.record.get(key) for key in SUMMARY_KEYS}
        summary["accuracy"] = {name: stats["accuracy"] for name, stats in metrics.items()}
        summary["run"] = str(out)
        click.echo(json.dumps(summary, sort_keys=True))
        distributed.finish()
        return
    resumed = result.record.get("resumed_from_step")
    if method == AUTO:
        say(_auto_summary(result.record))
    else:
        say(
            f"{method}: unlearned in {result.record['wall_clock_s']['unlearn']:.2f} s; attack "
            f"success {result.record.get('attack_success_ratio')}"
            + (f"; resumed from step {resumed}" if resumed else "")
        )
        if result.record.get("warning"):
            say(f"WARNING: {result.record['warning']}")
    for name, stats in metrics.items():
        say(f"  {name:<16} n={stats['n']:<6} accuracy {stats['accuracy']:.3f}")
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
    from revise._io import check_output, write_json_atomic
    from revise.data.manifest import FORBIDDEN_COLUMNS
    from revise.evaluate import evaluate
    from revise.pipeline import prepare
    from revise.registry import did_you_mean

    if json_out is not None and json_out.is_dir():
        raise UsageError(f"--json {json_out} is a folder; give a file name")
    if json_out is not None:
        inputs = [model_path, card, manifest_path]
        check_output(json_out, overwrite=overwrite, inputs=inputs, option="--json")
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
    parity_samples,
    opset,
    recipe,
    overwrite,
    cache,
):
    """Export a model (e.g. a run folder) as a bundle: ONNX with a parity check in ONNX Runtime,
    weights, card, run record, validation report, Triton model repository."""
    import torch

    from revise._io import check_output
    from revise.export.bundle import write_bundle
    from revise.export.onnx import require_onnxruntime
    from revise.models.pixel import normalize

    say = echo(ctx)
    if out.suffix.lower() == ".onnx":
        raise UsageError(
            f"-o {out}: the bundle is a folder (its ONNX file is model.onnx inside it)",
            hint=f"e.g. -o {out.with_suffix('')}; then use {out.with_suffix('') / 'model.onnx'}",
        )
    inputs = [model_path, card, manifest_path, validation, recipe]
    check_output(out, overwrite=overwrite, inputs=inputs, option="-o")
    require_onnxruntime()  # the parity check needs it: say so before any work
    loaded = _load(model_path, card, arch)
    c = loaded.card
    source = "random pixel-range images"
    if manifest_path is not None:
        samples, source = _heldout_samples(manifest_path, c, parity_samples, cache)
    else:
        g = torch.Generator().manual_seed(0)
        low, high = c.pixel_range
        samples = low + (high - low) * torch.rand(
            parity_samples, c.in_channels, *c.input_size, generator=g
        )
    bundle = write_bundle(
        loaded,
        out,
        samples=normalize(samples, c),
        name=name,
        opset=opset,
        fp16=fp16,
        validation=validation,
        recipe=recipe.read_text() if recipe else None,
        overwrite=overwrite,
    )
    for file, variant in bundle.manifest["onnx"]["variants"].items():
        p = variant["parity"]
        say(
            f"{file}: parity on {p['n']} {source}: max |diff| {p['max_abs_diff']:.2e}, "
            f"labels agree {p['label_agreement']:.3f}"
        )
    verdict = bundle.verdict or "not validated"
    files = len(bundle.manifest["files"]) + 1  # and bundle.json, which lists the others
    say(f"wrote bundle {out} ({files} files; validation: {verdict})")


def _heldout_samples(manifest_path: Path, card, n: int, cache):
    """Images for the parity check: the held-out rows of the manifest, or its first rows
    (training images) when it has none; and the words saying which were used."""
    from revise.data.tensors import load_tensors

    df = _load_manifest(manifest_path)
    heldout = df[df["split"].astype("string").fillna("").str.lower() == "heldout"]
    if len(heldout):
        rows, source = heldout.head(n), "held-out images"
    else:
        rows = df.head(n)
        source = f"training images ({manifest_path} has no held-out rows)"
    return load_tensors(rows, card, cache_dir=cache).x, source


COMMANDS = [unlearn_cmd, evaluate_cmd, export_cmd]
