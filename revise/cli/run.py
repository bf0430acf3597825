"""`revise run recipe.yaml`: the whole revision from one file (see revise.recipe)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from revise.cli._common import echo


@click.command("run")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check the recipe, print the commands, run nothing.")
@click.option("--restart", is_flag=True, help="Forget earlier progress: run every stage again.")
@click.pass_context
def run_cmd(ctx: click.Context, recipe: Path, dry_run: bool, restart: bool) -> None:
    """Run RECIPE: index, unlearn, merge, export, validate and sign as one resumable job.

    The whole recipe is checked before anything runs, its models, data, selections and key
    opened as the stages will open them (every problem reported at once, exit 2). Run it
    again after an interruption or an edit: finished stages whose inputs did not change are
    skipped, and an interrupted unlearning run continues from its checkpoint. Exit 0 when the
    bundle is complete, 1 when the validation gates failed (the bundle is then left unsigned).
    """
    from revise.cli._common import step_progress
    from revise.recipe import load_plan, run_plan

    say = echo(ctx)
    plan = load_plan(recipe)
    if dry_run:
        for stage in plan.stages:
            click.echo(f"[{stage.name}] revise {shlex.join(stage.shown())}")  # pasteable
        return
    flags = [
        *(["--debug"] if ctx.obj.get("debug") else []),
        *(["-q"] if ctx.obj.get("quiet") else []),
    ]
    code = run_plan(
        plan,
        say=say,
        tell=click.echo,
        progress=lambda description: step_progress(ctx, description),
        restart=restart,
        global_args=flags,
    )
    bundle = plan.workdir / "bundle"
    if code == 0:
        click.echo(f"bundle ready: {bundle}")
    else:
        click.echo(f"validation gates failed: see {plan.workdir / 'validation' / 'report.html'}")
    ctx.exit(code)


COMMANDS = [run_cmd]
