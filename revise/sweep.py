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

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from revise.errors import DivergedError, UsageError
from revise.evaluate import evaluate
from revise.models.card import ModelCard
from revise.models.pixel import resolve_device
from revise.pipeline import PreparedData, run_unlearning
from revise.unlearn.api import make_config

log = logging.getLogger(__name__)

# Each grid point is a whole unlearning run: a grid larger than this is a typo or a job for
# several sweeps, and is refused before anything is built or run.
MAX_GRID_POINTS = 4096


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
    concurrent: int = 1  # runs that went at once

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
            flat["unlearn_s"] = row.record["wall_clock_s"].get("unlearn")
            if "error" in row.record:
                flat["error"] = row.record["error"]
            out.append(flat)
        return out


def grid_size(grid: Mapping[str, Sequence[Any]]) -> int:
    """The number of points of ``grid`` (the product of its value counts), without building it."""
    return math.prod(len(values) for values in grid.values())


def sweep_points(
    method: str, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The grid's points and each point's config, with every problem refused (UsageError)
    before any run: a grid of more than MAX_GRID_POINTS points (counted, not built), a setting
    given both in the grid and fixed, a value outside its bound."""
    size = grid_size(grid)
    if size > MAX_GRID_POINTS:
        counts = " x ".join(f"{len(values)} {name}" for name, values in grid.items())
        raise UsageError(
            f"the grid has {size} points ({counts}); a sweep runs at most {MAX_GRID_POINTS}",
            hint="give fewer values, or split the grid over several sweeps",
        )
    overlap = set(grid) & set(fixed or {})
    if overlap:
        raise UsageError(f"{', '.join(sorted(overlap))} given both as --grid and --set")
    points = expand_grid(grid)
    return points, [make_config(method, {**(fixed or {}), **point}) for point in points]


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
    # no retain images at all (psg allows it): only forgetting can be ranked
    kept = next((metrics[s] for s in ("heldout_retain", "retain") if s in metrics), None)
    retention = kept["accuracy"] if kept else 0.0
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
    concurrent: int = 1,
    on_run: Callable[[int, int, SweepRow], None] | None = None,
) -> SweepResult:
    """Run ``method`` for every grid point (plus ``fixed`` settings) and rank the runs.

    ``concurrent`` runs go at once, each in its own thread (and CUDA stream): a small model
    leaves most of a large GPU idle between kernel launches, and other runs fill the gaps. Every
    run is the one a sequential sweep makes (same seed, same batches). A grid of more than
    MAX_GRID_POINTS points is refused before anything runs.
    """
    points, configs = sweep_points(method, grid, fixed)  # every problem before any run
    ref_acc: dict[str, float] = {}
    if reference is not None:
        ref_metrics = evaluate(reference, card, data.sets, by=(), device=device)
        ref_acc = {name: stats["accuracy"] for name, stats in ref_metrics.items()}
    t0 = time.perf_counter()
    workers = effective_concurrency(concurrent, net)

    def run(point_config: tuple[dict[str, Any], Any]) -> SweepRow:
        point, config = point_config
        try:
            with own_stream(device):
                result = run_unlearning(
                    net, card, data, method=method, config=config, device=device, seed=seed
                )
        except DivergedError as exc:  # the sweep goes on; the run ranks last
            log.warning("%s: %s", point, exc)
            record = {"method": method, "error": str(exc), "metrics": {}, "wall_clock_s": {}}
            return SweepRow(point, record, math.inf if ref_acc else -math.inf)
        metrics = result.record["metrics"]
        score = distance(metrics, ref_acc) if ref_acc else objective(metrics)
        return SweepRow(point, result.record, score)

    rows: list[SweepRow] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep") as pool:
        # map keeps the grid's order; runs finish (and are reported) in that order too
        for row in pool.map(run, zip(points, configs, strict=True)):
            rows.append(row)
            if on_run is not None:
                on_run(len(rows), len(points), row)
    total = time.perf_counter() - t0
    if all("error" in row.record for row in rows):
        raise DivergedError(
            f"every run of the sweep diverged; the first: {rows[0].record['error']}",
            hint="lower the learning rate (--set lr=... or a smaller --grid lr=...)",
        )
    rows.sort(key=lambda r: r.score, reverse=not ref_acc)
    criterion = "distance_to_reference" if ref_acc else "objective"
    return SweepResult(method, criterion, rows, round(total, 3), ref_acc, workers)


def effective_concurrency(concurrent: int, net: nn.Module) -> int:
    """How many runs may go at once: 1 when a layer draws from torch's global generator while
    training (dropout), since threads would interleave its draws and break reproducibility."""
    if concurrent < 1:
        raise UsageError(f"concurrent must be >= 1, not {concurrent}")
    random_layers = [name for name, m in net.named_modules() if _draws_while_training(m)]
    if concurrent > 1 and random_layers:
        log.warning(
            "running the sweep one run at a time: %s draws random numbers during training "
            "(dropout), which concurrent runs would make irreproducible",
            random_layers[0],
        )
        return 1
    return concurrent


def _draws_while_training(m: nn.Module) -> bool:
    """Dropout and its relatives (timm's DropPath, torchvision's StochasticDepth, DropBlock) by
    their drop probability; a functional dropout call inside forward() cannot be seen here."""
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return m.p > 0
    name = type(m).__name__.lower()
    if "drop" not in name and "stochasticdepth" not in name:
        return False
    rate = next((getattr(m, a) for a in ("p", "drop_prob", "drop_rate") if hasattr(m, a)), 1.0)
    return isinstance(rate, (int, float)) and rate > 0


@contextlib.contextmanager
def own_stream(device: str) -> Iterator[None]:
    """A CUDA stream of its own for this thread's run (nothing to do elsewhere)."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        yield
        return
    with torch.cuda.stream(torch.cuda.Stream(dev)):
        yield
