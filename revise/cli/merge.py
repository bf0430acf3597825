"""`revise merge`: combine several unlearning runs of one base model into one run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from revise.cli._common import cache_option, device_option, echo, seed_option
from revise.errors import UsageError


@click.command("merge")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o", "--out", required=True, type=click.Path(path_type=Path), help="Run folder to create."
)
@click.option("--backbone", help="Run (index or folder name) that supplies all but the head.")
@click.option("--head", help="Run (index or folder name) that supplies the classifier head.")
@click.option(
    "--take",
    multiple=True,
    help="PATTERN=RUN: state-dict keys matching PATTERN (fnmatch) come from RUN; first match "
    'wins, every key must be covered. Repeatable, e.g. --take "fc.*=1" --take "*=0".',
)
@click.option("--strengths", help="Task-vector strengths, one per run (e.g. 0.7,0.5).")
@click.option(
    "--search-strengths", is_flag=True, help="Search the strengths over --grid (per run)."
)
@click.option(
    "--grid",
    default="0,0.25,0.5,0.75,1,1.25",
    show_default=True,
    help="Strength values tried per run by --search-strengths.",
)
@click.option(
    "--strength",
    "overrides",
    multiple=True,
    help='PATTERN=S[,S...]: strengths for matching keys (e.g. "fc.*=1.0"). Repeatable.',
)
@click.option(
    "--base",
    "base_path",
    type=click.Path(exists=True, path_type=Path),
    help="The base model the runs revise (default: the path in the first run's run.json).",
)
@click.option(
    "--data",
    "manifest_path",
    type=click.Path(exists=True, path_type=Path),
    help="Manifest: its retain set re-estimates BatchNorm, fine-tunes and scores the search.",
)
@click.option("--forget", help="Selection the runs forgot (splits forget/retain).")
@click.option(
    "--reference",
    type=click.Path(exists=True, path_type=Path),
    help="Retrained reference model: the search minimises the distance to it.",
)
@click.option(
    "--criteria",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Acceptance gates (revise validate's YAML): the search prefers strengths whose merged "
    "model passes them, then the best score.",
)
@click.option(
    "--finetune-epochs",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Epochs of Adam fine-tuning on the retain set after merging.",
)
@click.option("--finetune-lr", default=1e-4, show_default=True, type=float)
@click.option(
    "--reestimate-bn/--keep-bn",
    default=None,
    help="Re-estimate BatchNorm statistics on the retain set "
    "[default: after strength merging, not after composition].",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout (only).")
@cache_option
@device_option
@seed_option
@click.pass_context
def merge_cmd(
    ctx,
    runs,
    out,
    backbone,
    head,
    take,
    strengths,
    search_strengths,
    grid,
    overrides,
    base_path,
    manifest_path,
    forget,
    reference,
    criteria,
    finetune_epochs,
    finetune_lr,
    reestimate_bn,
    overwrite,
    as_json,
    cache,
    device,
    seed,
):
    """Merge unlearning runs RUNS of one base model into the run folder OUT.

    \b
    Composition:  revise merge A B --backbone A --head B -o merged
                  revise merge A B --take "fc.*=B" --take "*=A" -o merged
    Strengths:    revise merge A B --strengths 0.7,0.5 --data M --forget SEL -o merged
                  revise merge A B --search-strengths --data M --forget SEL -o merged
    """
    from revise._io import check_output
    from revise.merge import load_run, merge_runs
    from revise.merge.arithmetic import parse_override, parse_strengths
    from revise.merge.compose import parse_rule
    from revise.models.io import load_model
    from revise.unlearn.api import save_run

    if as_json:
        ctx.obj["quiet"] = True
    say = echo(ctx)
    inputs = [*runs, base_path, manifest_path, reference, criteria]
    check_output(out, overwrite=overwrite, inputs=inputs, option="-o")
    if forget is not None and manifest_path is None:
        raise UsageError("--forget needs --data")
    loaded = [load_run(path) for path in runs]
    n = len(loaded)
    rules = [parse_rule(text) for text in take]
    fixed = [parse_override(text, n) for text in overrides]
    given = parse_strengths(strengths, n) if strengths else None
    values = _grid(grid)
    if search_strengths:  # before the base model and the data are read
        from revise.merge.search import check_search_size

        check_search_size(len(values), n)
    weighting = given is not None or search_strengths or fixed
    base = None
    if weighting:
        base = load_model(base_path or _recorded_base(loaded[0])).module
    data = None
    if manifest_path is not None:
        from revise.data import manifest as manifest_mod
        from revise.data.split import share_of_sets
        from revise.pipeline import prepare

        data = prepare(manifest_mod.load(manifest_path), loaded[0].card, forget, cache_dir=cache)
        say("sets: " + ", ".join(f"{k} {v}" for k, v in data.counts().items()))
        if forget:
            say(f"the forget selection selects {share_of_sets(data.counts())}")
    ref_model = load_model(reference).module if reference is not None else None
    judge = None
    if criteria is not None:
        from revise.validate.criteria import load_criteria
        from revise.validate.judge import gate_judge

        gates = load_criteria(criteria)
        if not search_strengths:
            raise UsageError("--criteria steer the strength search: add --search-strengths")
        if data is not None and base is not None:  # else merge_runs says what is missing
            judge = gate_judge(gates, data, base, ref_model, loaded[0].card, device)
    result = merge_runs(
        loaded,
        base=base,
        take=rules or None,
        backbone=backbone,
        head=head,
        strengths=given,
        overrides=fixed,
        search=search_strengths,
        grid=values,
        data=data,
        reference=ref_model,
        judge=judge,
        finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr,
        reestimate_bn=reestimate_bn,
        device=device,
        seed=seed,
    )
    save_run(result, out, overwrite=overwrite)
    recipe = result.record["merge"]
    metrics = result.record.get("metrics", {})
    if as_json:
        summary = {
            "run": str(out),
            "mode": recipe["mode"],
            "strengths": recipe.get("strengths"),
            "accuracy": {name: stats["accuracy"] for name, stats in metrics.items()},
        }
        click.echo(json.dumps(summary, sort_keys=True))
        return
    if recipe["mode"] == "compose":
        say(
            "composed: "
            + ", ".join(f"{k} keys from {r}" for r, k in recipe["keys_per_run"].items())
        )
    else:
        chosen = ", ".join(f"{r}={s:g}" for r, s in recipe["strengths"].items())
        searched = recipe.get("search")
        say(f"strengths {chosen}" + (f" (searched, {searched['criterion']})" if searched else ""))
        judged = (searched or {}).get("criteria")
        if judged:
            failed = judged["gates_failed_by_best"]
            say(
                f"acceptance gates ({judged['path']}): "
                + ("every gate passes" if not failed else f"{failed} gate(s) fail even at best")
            )
    for name, stats in metrics.items():
        say(f"  {name:<16} n={stats['n']:<6} accuracy {stats['accuracy']:.3f}")
    say(f"run written to {out}")


def _grid(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--grid {text!r}: not comma-separated numbers") from None
    if not values:
        raise UsageError("--grid is empty")
    if not all(math.isfinite(v) for v in values):  # a nan strength makes a model of nans
        raise UsageError(f"--grid {text!r}: every strength must be a finite number")
    return values


def _recorded_base(run) -> Path:
    path = (run.record.get("base_model") or {}).get("path")
    if not path:
        raise UsageError(
            f"run {run.name} does not record where its base model is",
            hint="give the base model with --base",
        )
    if not Path(path).exists():
        raise UsageError(
            f"run {run.name} records its base model at {path}, which does not exist (from "
            f"{Path.cwd()})",
            hint="give the base model with --base",
        )
    return Path(path)


COMMANDS = [merge_cmd]
