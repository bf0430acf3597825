"""The merge stage: several unlearning runs of one base model in, one run folder out - by
composition (whole parts of each run) or by strengths (task-vector arithmetic, searched or
given, steered by acceptance criteria)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import Field, field_validator

from revise._io.outputs import check_output
from revise._run_record import RunRecord
from revise._schema import fail
from revise.data import manifest as manifest_mod
from revise.data.split import share_of_sets
from revise.data.tensors import prepare
from revise.errors import OptionError
from revise.merge import load_run, merge_runs
from revise.merge.arithmetic import parse_override, parse_strengths
from revise.merge.compose import parse_rule
from revise.merge.search import check_search_size
from revise.models.io import load_model
from revise.stages._options import StageOptions
from revise.unlearn.api import save_run
from revise.validate.criteria import load_criteria
from revise.validate.judge import gate_judge

Say = Callable[[str], None]
GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)


class MergeOptions(StageOptions):
    """How the runs are combined (`revise merge` flags, a recipe's merge: section)."""

    backbone: str | None = Field(
        None, description="Run (index or name) supplying all but the head."
    )
    head: str | None = Field(None, description="Run (index or name) supplying the classifier head.")
    take: tuple[str, ...] = Field((), description="PATTERN=RUN rules: which run supplies each key.")
    strengths: str | None = Field(None, description="Task-vector strengths, one per run.")
    search_strengths: bool = Field(False, description="Search the strengths over grid.")
    grid: tuple[float, ...] = Field(
        GRID,
        description="Strengths tried per run by the search.",
        json_schema_extra={"joined": ","},
    )
    strength: tuple[str, ...] = Field((), description="PATTERN=S overrides for matching keys.")
    base: Path | None = Field(None, description="The base model (default: the runs' record).")
    reference: Path | None = Field(None, description="A retrained model the search aims at.")
    criteria: Path | None = Field(None, description="Acceptance gates that steer the search.")
    finetune_epochs: int = Field(0, ge=0, description="Retain-set epochs after merging.")
    finetune_lr: float = Field(1e-4, gt=0, description="Learning rate of that fine-tune.")
    reestimate_bn: bool | None = Field(
        None,
        description="Recompute BatchNorm statistics on the retain set after merging.",
        json_schema_extra={"off_flag": "--keep-bn"},
    )

    @field_validator("grid", mode="before")
    @classmethod
    def _numbers(cls, grid: object) -> object:
        """A grid as the CLI writes it (``0,0.5,1``) or as a list."""
        if not isinstance(grid, str):
            return grid
        try:
            return tuple(float(v) for v in grid.split(",") if v.strip())
        except ValueError:
            raise fail(f"{grid!r} is not comma-separated numbers") from None

    @field_validator("grid")
    @classmethod
    def _finite(cls, grid: tuple[float, ...]) -> tuple[float, ...]:
        if not grid:
            raise fail("is empty")
        if not all(math.isfinite(v) for v in grid):  # a nan strength makes a model of nans
            raise fail(f"{','.join(map(str, grid))}: every strength must be a finite number")
        return grid

    @field_validator("criteria")
    @classmethod
    def _criteria_steer_search(cls, criteria: Path | None, info) -> Path | None:
        if criteria is not None and not info.data.get("search_strengths"):
            raise fail("steer the strength search: add {search_strengths}")
        return criteria


def merge_to_run(
    runs: Sequence[Path],
    out: Path,
    options: MergeOptions | None = None,
    *,
    manifest: Path | None = None,
    forget: str | None = None,
    cache: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    say: Say = lambda _: None,
):
    """Merge the run folders ``runs`` into the run folder ``out``; the merged
    :class:`~revise.unlearn.api.UnlearnResult`. ``manifest`` and ``forget`` give the sets that
    strength weighting, the search, the BatchNorm re-estimation and the fine-tune read."""

    o = options or MergeOptions()
    inputs = [*runs, o.base, manifest, o.reference, o.criteria]
    check_output(out, overwrite=overwrite, inputs=inputs, option="out")
    if forget is not None and manifest is None:
        raise OptionError("forget", "needs {data}: the manifest it selects from", options=("data",))
    loaded = [load_run(path) for path in runs]
    n = len(loaded)
    rules = [parse_rule(text) for text in o.take]
    fixed = [parse_override(text, n) for text in o.strength]
    given = parse_strengths(o.strengths, n) if o.strengths else None
    if o.search_strengths:  # before the base model and the data are read
        check_search_size(len(o.grid), n)
    base = None
    if given is not None or o.search_strengths or fixed:
        base = load_model(o.base or _recorded_base(loaded[0])).module
    data = None
    if manifest is not None:
        data = prepare(manifest_mod.load(manifest), loaded[0].card, forget, cache_dir=cache)
        say("sets: " + ", ".join(f"{k} {v}" for k, v in data.counts().items()))
        if forget:
            say(f"the forget selection selects {share_of_sets(data.counts())}")
    reference = load_model(o.reference).module if o.reference is not None else None
    judge = None
    if o.criteria is not None and data is not None and base is not None:
        gates = load_criteria(o.criteria)
        judge = gate_judge(gates, data, base, reference, loaded[0].card, device)
    result = merge_runs(
        loaded,
        base=base,
        take=rules or None,
        backbone=o.backbone,
        head=o.head,
        strengths=given,
        overrides=fixed,
        search=o.search_strengths,
        grid=o.grid,
        data=data,
        reference=reference,
        judge=judge,
        finetune_epochs=o.finetune_epochs,
        finetune_lr=o.finetune_lr,
        reestimate_bn=o.reestimate_bn,
        device=device,
        seed=seed,
    )
    save_run(result, out, overwrite=overwrite)
    return result


def summary(record: RunRecord) -> list[str]:
    """What a merge says: the composition or the strengths (and the gates they reached), and
    the accuracy on each set."""
    recipe = record.merge or {}
    if recipe["mode"] == "compose":
        lines = [
            "composed: "
            + ", ".join(f"{k} keys from {r}" for r, k in recipe["keys_per_run"].items())
        ]
    else:
        chosen = ", ".join(f"{r}={s:g}" for r, s in recipe["strengths"].items())
        searched = recipe.get("search")
        lines = [
            f"strengths {chosen}" + (f" (searched, {searched['criterion']})" if searched else "")
        ]
        judged = (searched or {}).get("criteria")
        if judged:
            failed = judged["gates_failed_by_best"]
            lines.append(
                f"acceptance gates ({judged['path']}): "
                + ("every gate passes" if not failed else f"{failed} gate(s) fail even at best")
            )
    for name, stats in record.metrics.items():
        lines.append(f"  {name:<16} n={stats['n']:<6} accuracy {stats['accuracy']:.3f}")
    return lines


def _recorded_base(run) -> Path:
    """The base model the run's record names; asked for when it names none that exists."""
    path = run.record.base_model.path if run.record.base_model is not None else None
    if not path:
        raise OptionError("base", f"is needed: run {run.name} does not record its base model")
    if not Path(path).exists():
        raise OptionError(
            "base",
            f"is needed: run {run.name} records its base model at {path}, which does not exist "
            f"(from {Path.cwd()})",
        )
    return Path(path)
