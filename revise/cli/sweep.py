"""`revise sweep`: a grid of one method's hyperparameters, ranked."""

from __future__ import annotations

from pathlib import Path

import click

from revise.cli._common import (
    arch_option,
    cache_option,
    card_option,
    data_option,
    device_option,
    echo,
    model_option,
    parse_scalar,
    parse_settings,
    seed_option,
)

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
    help="A retrained reference model: rank by distance to it.",
)
@click.option(
    "-o", "--out", required=True, type=click.Path(path_type=Path), help="Folder for results."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing results folder.")
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
    concurrent,
    cache,
    device,
    seed,
):
    """Run a grid of hyperparameters on data prepared once; rank the runs; write a CSV."""
    import pandas as pd

    from revise._io import atomic_dir, check_output, write_json_atomic
    from revise.data import manifest as manifest_mod
    from revise.models.io import load_model
    from revise.pipeline import prepare
    from revise.sweep import sweep, sweep_points

    say = echo(ctx)
    inputs = [model_path, card, manifest_path, reference]  # before any work: refusing is free
    check_output(out, overwrite=overwrite, inputs=inputs, option="-o")
    grid = parse_grid(grid_items)
    fixed = parse_settings(settings)
    sweep_points(method, grid, fixed)  # a huge grid or a bad value: refused before any loading
    loaded = load_model(model_path, card=card, architecture=arch)
    ref = load_model(reference, card=loaded.card).module if reference else None
    data = prepare(manifest_mod.load(manifest_path), loaded.card, forget, cache_dir=cache)

    def report(done: int, total: int, row) -> None:
        say(f"[{done}/{total}] {row.settings} score {row.score:.4f}")

    result = sweep(
        loaded.module,
        loaded.card,
        data,
        method=method,
        grid=grid,
        fixed=fixed,
        reference=ref,
        device=device,
        seed=seed,
        concurrent=concurrent,
        on_run=report,
    )
    table = pd.DataFrame(result.table())
    with atomic_dir(out, overwrite=overwrite) as tmp:
        table.to_csv(tmp / "results.csv", index=False)
        write_json_atomic(
            tmp / "sweep.json",
            {
                "method": method,
                "criterion": result.criterion,
                "grid": grid,
                "fixed": fixed,
                "reference_accuracy": result.reference,
                "wall_clock_s": result.wall_clock_s,
                "concurrent": result.concurrent,
                # with concurrent runs, each run's own clock includes the others' share
                "sum_of_unlearn_s": round(
                    sum(r.record["wall_clock_s"].get("unlearn", 0.0) for r in result.rows), 3
                ),
                "runs": [r.record for r in result.rows],
            },
        )
    click.echo(table.to_string(index=False))
    click.echo(
        f"best by {result.criterion}: {result.best().settings}; grid wall-clock "
        f"{result.wall_clock_s:.1f} s ({result.concurrent} at once); results in {out}"
    )


COMMANDS = [sweep_cmd]
