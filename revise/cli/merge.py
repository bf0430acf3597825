"""`revise merge`: combine several unlearning runs of one base model into one run folder."""

from __future__ import annotations

import json
from pathlib import Path

import click

from revise.cli._common import cache_option, device_option, echo, seed_option, spelling


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
    from revise.stages._options import build
    from revise.stages.merge import MergeOptions, merge_to_run, summary

    if as_json:
        ctx.obj["quiet"] = True
    say = echo(ctx)
    given = {
        "backbone": backbone,
        "head": head,
        "take": take,
        "strengths": strengths,
        "search_strengths": search_strengths,
        "grid": grid,
        "strength": overrides,
        "base": base_path,
        "reference": reference,
        "criteria": criteria,
        "finetune_epochs": finetune_epochs,
        "finetune_lr": finetune_lr,
        "reestimate_bn": reestimate_bn,
    }
    options = build(MergeOptions, given, what="revise merge", spell=spelling(ctx))
    result = merge_to_run(
        runs,
        out,
        options,
        manifest=manifest_path,
        forget=forget,
        cache=cache,
        device=device,
        seed=seed,
        overwrite=overwrite,
        say=say,
    )
    if as_json:
        recipe = result.record.merge or {}
        metrics = result.record.metrics
        summary_json = {
            "run": str(out),
            "mode": recipe["mode"],
            "strengths": recipe.get("strengths"),
            "accuracy": {name: stats["accuracy"] for name, stats in metrics.items()},
        }
        click.echo(json.dumps(summary_json, sort_keys=True))
        return
    for line in summary(result.record):
        say(line)
    say(f"run written to {out}")


COMMANDS = [merge_cmd]
