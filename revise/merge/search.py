"""Strengths searched over a small grid per run against a validation criterion.

The criterion is the sweep's (:mod:`revise.unlearn.sweep`): with a retrained reference, the distance
of (forget, retain) accuracy to the reference's; without one, the estimated distance to the
reference-free target of the kind of forgetting (:mod:`revise.unlearn.target`), measured
against the base model on the same sets. Lower is better either way. Every candidate has its
BatchNorm statistics re-estimated on the retain set before it is scored. With acceptance gates
(``judge``), the candidates that fail fewer gates rank first, and the score orders those that
fail as few: the closest merge to Retrain is worth nothing if a gate then refuses it.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from revise.data.sets import DecodedSet
from revise.errors import UsageError
from revise.merge.arithmetic import Override, task_arithmetic
from revise.models.card import ModelCard
from revise.unlearn.batchnorm import reestimate_batchnorm
from revise.unlearn.evaluate import evaluate
from revise.unlearn.sweep_ranking import distance
from revise.unlearn.target import forgetting_kind, reading_from_metrics, target_from_metrics

DEFAULT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
MAX_CANDIDATES = 4096


@dataclass
class StrengthSearch:
    strengths: tuple[float, ...]  # the best candidate
    score: float
    criterion: str  # "distance_to_reference" or "estimated_distance" (lower is better)
    grid: tuple[float, ...]
    table: list[dict[str, Any]] = field(default_factory=list)  # every candidate, best first
    gates_failed: int | None = None  # by the best candidate, when gates were judged


@dataclass(frozen=True)
class GateJudge:
    """Acceptance gates a strength search steers by (``revise.validate.judge.gate_judge``
    makes one): ``failed(candidate)`` counts the gates the candidate fails; ``source`` and
    ``sha256`` name the criteria in the run record."""

    failed: Callable[[nn.Module], int]
    source: str
    sha256: str


def check_search_size(values: int, runs: int) -> None:
    """Refuse a search of more than MAX_CANDIDATES candidates (``values`` per run, every
    combination), counted without building them."""
    n_candidates = values**runs
    if n_candidates > MAX_CANDIDATES:
        raise UsageError(
            f"{values} values for {runs} runs are {n_candidates} candidates "
            f"(at most {MAX_CANDIDATES})",
            hint="use a smaller --grid or fewer runs",
        )


def search_strengths(
    template: nn.Module,
    card: ModelCard,
    base: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    sets: Mapping[str, DecodedSet],
    *,
    grid: Sequence[float] = DEFAULT_GRID,
    overrides: Sequence[Override] = (),
    reference: Mapping[str, float] | None = None,
    bn_batch_size: int = 1024,
    device: str = "auto",
    judge: Callable[[nn.Module], int] | None = None,
) -> StrengthSearch:
    """Try every combination of ``grid`` values (one per run) and keep the best.

    ``template`` is any network of the architecture (it is copied, not changed); ``sets``
    needs "retain" (BatchNorm re-estimation) and "forget" plus, for the estimated distance, the
    held-out sets; ``reference`` holds the retrained model's accuracy per set.
    ``judge(candidate)``, if given, counts the acceptance gates the candidate fails; fewer
    failures rank first.
    """
    grid = tuple(float(v) for v in grid)
    if not grid:
        raise UsageError("the strength grid is empty")
    if "retain" not in sets or "forget" not in sets:
        raise UsageError("searching strengths needs the forget and retain sets")
    check_search_size(len(grid), len(states))
    net = copy.deepcopy(template).cpu()
    retain = sets["retain"]
    rows: list[tuple[int, float, tuple[float, ...], dict[str, float]]] = []
    target = None
    if not reference:  # the base model's own metrics set the reference-free target
        net.load_state_dict(base)
        kind = forgetting_kind(sets["forget"], retain)
        target = target_from_metrics(kind, evaluate(net, card, sets, by=(), device=device))
    for candidate in itertools.product(grid, repeat=len(states)):
        net.load_state_dict(task_arithmetic(base, states, candidate, overrides))
        reestimate_batchnorm(net, card, retain, batch_size=bn_batch_size, device=device)
        metrics = evaluate(net, card, sets, by=(), device=device)
        if target is None:
            score = distance(metrics, reference)
        else:
            score = target.distance(reading_from_metrics(metrics))
        acc = {name: stats["accuracy"] for name, stats in metrics.items()}
        failed = judge(net) if judge is not None else 0
        rows.append((failed, score, candidate, acc))
    # best first: fewest failed gates, then the score; ties go to the smaller total strength
    # (the more conservative edit), then order
    rows.sort(key=lambda r: (r[0], r[1], sum(r[2])))
    criterion = "distance_to_reference" if reference else "estimated_distance"
    table = [
        {
            "strengths": list(c),
            criterion: round(s, 4),
            **({"gates_failed": f} if judge is not None else {}),
            **{f"acc_{k}": v for k, v in a.items()},
        }
        for f, s, c, a in rows
    ]
    best = rows[0]
    return StrengthSearch(best[2], best[1], criterion, grid, table, best[0] if judge else None)
