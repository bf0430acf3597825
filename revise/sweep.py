"""Hyperparameter sweeps: run a grid of one method's settings on data prepared once, and rank.

Ranking, from the seed paper and metrics.md:
* with a retrained reference model: distance D = sqrt((RA - RA_ref)^2 + (FA - FA_ref)^2) on the
  training-side forget and retain sets (lower is better);
* without one (the deployment case): ``retention - membership gap``, where retention is the
  held-out retain accuracy and the membership gap is |FA on the forget set - accuracy on held-out
  images of the forgotten group|: a model that forgot looks at its former training images as at
  images it never saw - neither better (memory) nor worse (over-forgetting). Without held-out
  forget images the gap falls back to the forget accuracy itself (higher is better).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from revise.errors import UsageError
from revise.evaluate import evaluate
from revise.models.card import ModelCard
from revise.pipeline import PreparedData, run_unlearning
from revise.unlearn.api import make_config


@dataclass
class SweepRow:
    settings: dict[str, Any]
    record: dict[str, Any]
    score: float


@dataclass
class SweepResult:
    method: str
    criterion: str  # "distance_to_reference" (lower is better) or "objective" (higher is better)
    rows: list[SweepRow]
    wall_clock_s: float
    reference: dict[str, float] = field(default_factory=dict)

    def best(self) -> SweepRow:
        return self.rows[0]

    def table(self) -> list[dict[str, Any]]:
        """One flat dict per run: settings, accuracies per set, score, unlearning seconds."""
        out = []
        for rank, row in enumerate(self.rows, 1):
            metrics = row.record["metrics"]
            flat = {"rank": rank, **row.settings}
            flat.update({f"acc_{name}": stats["accuracy"] for name, stats in metrics.items()})
            flat[self.criterion] = round(row.score, 4)
            flat["unlearn_s"] = row.record["wall_clock_s"]["unlearn"]
            out.append(flat)
        return out


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order (first key varies slowest)."""
    if not grid:
        return [{}]
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def distance(metrics: Mapping[str, Any], reference: Mapping[str, float]) -> float:
    d_retain = metrics["retain"]["accuracy"] - reference["retain"]
    d_forget = metrics["forget"]["accuracy"] - reference["forget"]
    return math.hypot(d_retain, d_forget)


def objective(metrics: Mapping[str, Any]) -> float:
    retention = metrics.get("heldout_retain", metrics["retain"])["accuracy"]
    forget = metrics["forget"]["accuracy"]
    if "heldout_forget" in metrics:
        return retention - abs(forget - metrics["heldout_forget"]["accuracy"])
    return retention - forget


def sweep(
    net: nn.Module,
    card: ModelCard,
    data: PreparedData,
    *,
    method: str,
    grid: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any] | None = None,
    reference: nn.Module | None = None,
    device: str = "auto",
    seed: int = 0,
    on_run: Callable[[int, int, SweepRow], None] | None = None,
) -> SweepResult:
    """Run ``method`` for every grid point (plus ``fixed`` settings) and rank the runs."""
    points = expand_grid(grid)
    overlap = set(grid) & set(fixed or {})
    if overlap:
        raise UsageError(f"{', '.join(sorted(overlap))} given both as --grid and --set")
    configs = [make_config(method, {**(fixed or {}), **point}) for point in points]  # fail early
    ref_acc: dict[str, float] = {}
    if reference is not None:
        ref_metrics = evaluate(reference, card, data.sets, by=(), device=device)
        ref_acc = {name: stats["accuracy"] for name, stats in ref_metrics.items()}
    t0 = time.perf_counter()
    rows = []
    for i, (point, config) in enumerate(zip(points, configs, strict=True)):
        result = run_unlearning(
            net, card, data, method=method, config=config, device=device, seed=seed
        )
        metrics = result.record["metrics"]
        score = distance(metrics, ref_acc) if ref_acc else objective(metrics)
        rows.append(SweepRow(point, result.record, score))
        if on_run is not None:
            on_run(i + 1, len(points), rows[-1])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    rows.sort(key=lambda r: r.score, reverse=not ref_acc)
    criterion = "distance_to_reference" if ref_acc else "objective"
    return SweepResult(method, criterion, rows, round(total, 3), ref_acc)
