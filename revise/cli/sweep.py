"""`revise sweep`: a grid of one method's hyperparameters, ranked with the unchanged original."""

from __future__ import annotations

from pathlib import Path

import click

from revise._io.outputs import RUN_RECORD, SWEEP_RECORD
from revise._run_record import BaseModelRef, RunRecord, read_run_record
from revise.cli._common import (
    arch_option,
    cache_option,
    card_option,
    data_option,
    device_option,
    echo,
    model_option,
    parse_settings,
    seed_option,
)
from revise.stages._options import parse_scalar

GRID_HELP = (
    "name=v1,v2,... (repeatable; at most 4096 points in all); e.g. --grid gamma=0,1e-4,0.1 "
    "--grid lam=0,1e-3"
)


def parse_grid(items: tuple[str, ...]) -> dict[str, list]:
    from revise.errors import UsageError

    grid: dict[str, list] = {}
    texts: dict[str, list[str]] = {}  # as typed, for the hint
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name or not values.strip():
            raise UsageError(f"--grid {item!r} is not name=v1,v2,...", hint=GRID_HELP)
        parts = [v.strip() for v in values.split(",")]
        if "" in parts:
            kept = ",".join(p for p in parts if p)
            raise UsageError(
                f"empty value in --grid {item}",
                hint=f"did you mean --grid {name}={kept}?" if kept else GRID_HELP,
            )
        if name in texts:
            raise UsageError(
                f"--grid {name} given twice",
                hint=f"give all values in one: --grid {name}={','.join(texts[name] + parts)}",
            )
        texts[name] = parts
        grid[name] = [parse_scalar(v) for v in parts]
    return grid


def reference_record(path: Path | None) -> RunRecord | None:
    """The reference's run record (run.json beside its weights), or None when it has none (a
    model trained with `revise train`, a bare weights file): the sweep then warns that it cannot
    check which selection the reference was retrained for."""
    record = path / RUN_RECORD if path is not None and path.is_dir() else None
    if record is None or not record.is_file():
        return None
    fix = "write the reference again with `revise unlearn --method retrain` (or restore it)"
    return read_run_record(record, hint=fix)


@click.command("sweep")
@model_option
@card_option
@arch_option
@data_option
@click.option("--forget", required=True, help="Selection to forget.")
@click.option("--method", default="psg", show_default=True)
@click.option("--grid", "grid_items", multiple=True, required=True, help=GRID_HELP)
@click.option("--set", "settings", multiple=True, help="Fixed hyperparameter name=value.")
@click.option(
    "--reference",
    type=click.Path(exists=True, path_type=Path),
    help="A retrained reference model: rank by distance D to it. Without one, runs are ranked "
    "by the estimated distance to what retraining would give (forget accuracy 0 for a "
    "forgotten class, the original's held-out accuracy for a subset; held-out accuracy lost "
    "outside the group adds to it). Lower is better either way.",
)
@click.option(
    "-o", "--out", required=True, type=click.Path(path_type=Path), help="Folder for results."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing results folder.")
@click.option(
    "--keep-best",
    is_flag=True,
    help="Also write the ranked-first run as a run folder OUT/best (model.safetensors, "
    "card.json, run.json), the network the sweep made, not a rerun; nothing is written when "
    "the unchanged original ranks first.",
)
@click.option(
    "--concurrent",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runs at once, each in its own thread and CUDA stream: pays on a GPU that one small "
    "model leaves idle; on a CPU the runs only share the cores.",
)
@cache_option
@device_option
@seed_option
@click.pass_context
def sweep_cmd(
    ctx,
    model_path,
    card,
    arch,
    manifest_path,
    forget,
    method,
    grid_items,
    settings,
    reference,
    out,
    overwrite,
    keep_best,
    concurrent,
    cache,
    device,
    seed,
):
    """Run a grid of hyperparameters on data prepared once; rank the runs and the unchanged
    original; write a CSV (and, with --keep-best, the best run).

    A run whose held-out retain accuracy fell more than 0.10 below the original's, or that
    answers nearly everything with one class, is marked collapsed and ranked after the original.
    """
    import pandas as pd

    from revise._io.atomic import atomic_dir, write_json_atomic
    from revise._io.outputs import check_output
    from revise.data import manifest as manifest_mod
    from revise.data.tensors import prepare
    from revise.models.io import load_model, weights_digest
    from revise.unlearn.api import save_run
    from revise.unlearn.sweep import sweep
    from revise.unlearn.sweep_grid import sweep_points
    from revise.unlearn.sweep_ranking import COLLAPSE_MARGIN

    say = echo(ctx)
    inputs = [model_path, card, manifest_path, reference]  # before any work: refusing is free
    check_output(out, overwrite=overwrite, inputs=inputs, option="out")
    grid = parse_grid(grid_items)
    fixed = parse_settings(settings)
    sweep_points(method, grid, fixed)  # a huge grid or a bad value: refused before any loading
    loaded = load_model(model_path, card=card, architecture=arch)
    ref = load_model(reference, card=loaded.card).module if reference else None
    ref_record = reference_record(reference)
    data = prepare(manifest_mod.load(manifest_path), loaded.card, forget, cache_dir=cache)

    def report(done: int, total: int, row) -> None:
        name = "distance to the reference" if ref is not None else "estimated distance"
        flag = f" ({row.collapsed})" if row.collapsed else ""
        flag = f" (diverged: {row.record.error})" if row.diverged else flag
        say(f"[{done}/{total}] {row.label}: {name} {row.score:.4f}{flag}")

    result = sweep(
        loaded.module,
        loaded.card,
        data,
        method=method,
        grid=grid,
        fixed=fixed,
        reference=ref,
        reference_record=ref_record,
        device=device,
        seed=seed,
        concurrent=concurrent,
        base_digest=weights_digest(loaded.module),
        on_run=report,
    )
    table = pd.DataFrame(result.table())
    best = result.best_run if keep_best else None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        table.to_csv(tmp / "results.csv", index=False)
        if best is not None:  # the sweep's own network: no second unlearning run
            best.record.base_model = BaseModelRef(  # as `revise unlearn` records it (merge)
                path=str(Path(model_path).resolve()),
                format=loaded.format,
                sha256=loaded.card.source_sha256,
            )
            save_run(best, tmp / "best")
        write_json_atomic(
            tmp / SWEEP_RECORD,
            {
                "method": method,
                "criterion": result.criterion,
                "lower_is_better": True,
                "kind": result.kind,
                "target": result.target,
                "collapse_margin": COLLAPSE_MARGIN,
                "warnings": result.warnings,
                "best": result.best().label,
                "original_is_best": result.original_is_best,
                "grid": grid,
                "fixed": fixed,
                "reference_accuracy": result.reference,
                "wall_clock_s": result.wall_clock_s,
                "concurrent": result.concurrent,
                # with concurrent runs, each run's own clock includes the others' share
                "sum_of_unlearn_s": round(
                    sum(r.record.wall_clock_s.get("unlearn", 0.0) for r in result.rows), 3
                ),
                "runs": [r.record.to_json() for r in result.rows],
            },
        )
    click.echo(table.to_string(index=False))
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    click.echo(best_line(result, keep_best, out))
    click.echo(
        f"grid wall-clock {result.wall_clock_s:.1f} s ({result.concurrent} at once); "
        f"results in {out}"
    )


def best_line(result, keep_best: bool, out: Path) -> str:
    """What ranked first, said plainly when it is the unchanged original."""
    criterion = f"{result.criterion} (lower is better)"
    if result.original_is_best:
        text = (
            f"no setting beat the unchanged model: the original ranks first by {criterion} "
            f"({result.best().score:.4f})"
        )
        return text + ("; no best run written" if keep_best else "")
    text = f"best by {criterion}: {result.best().label} ({result.best().score:.4f})"
    return text + (f"; its model is in {out / 'best'}" if keep_best else "")


COMMANDS = [sweep_cmd]
