"""Hyperparameter sweeps: run a grid of one method's settings on data prepared once, and rank.

Every sweep has one more row than its grid: the unchanged original, scored like every run, so a
grid where no setting beats doing nothing says so. Ranking (metrics.md), lower is better:

* with a retrained reference model: distance D = sqrt((RA - RA_ref)^2 + (FA - FA_ref)^2) on the
  training-side forget and retain sets (``distance_to_reference``);
* without one (the deployment case): the estimated distance to what retraining would give
  (``estimated_distance``, :class:`revise.unlearn.target.Target`), against a target built from
  the original's accuracies: for a forgotten class the target forget accuracy is 0, for a subset
  it is the original's accuracy on held-out images of the group; any held-out accuracy lost
  outside the group adds to the distance.

A run that collapsed ranks after every other run and after the original, whatever its score:
its held-out retain accuracy (retain accuracy without a held-out set) fell more than
COLLAPSE_MARGIN below the original's, or its predictions on those images concentrate in one
class. Diverged runs rank last. The best run's network is kept from the sweep itself (only the
current best is held), so writing it needs no second run. Whatever the ranking cannot judge for
this kind of forgetting is stated in ``SweepResult.warnings``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from revise._run_record import RunRecord
from revise.data.sets import DecodedSet, DecodedSets
from revise.errors import DivergedError, UsageError
from revise.models.card import ModelCard
from revise.models.pixel import resolve_device
from revise.unlearn.api import UnlearnResult
from revise.unlearn.evaluate import evaluate
from revise.unlearn.pipeline import run_unlearning
from revise.unlearn.sweep_grid import sweep_points
from revise.unlearn.sweep_ranking import (
    ESTIMATED,
    ORIGINAL,
    REFERENCE,
    SweepRow,
    collapse_reason,
    concentration,
    distance,
    kept_set,
    rank_key,
    ranking_warnings,
)
from revise.unlearn.target import (
    Target,
    forgetting_kind,
    reading_from_metrics,
    target_from_metrics,
)

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    method: str
    criterion: str  # REFERENCE or ESTIMATED, both lower is better
    rows: list[SweepRow]  # ranked, the original among them
    wall_clock_s: float
    reference: dict[str, float] = field(default_factory=dict)
    concurrent: int = 1  # runs that went at once
    warnings: list[str] = field(default_factory=list)  # what the ranking cannot judge here
    target: dict[str, Any] = field(default_factory=dict)  # the reference-free target, if used
    kind: str = ""  # "class" or "subset" forgetting
    # the ranked-first run's network and record, kept from the sweep (None: the original won)
    best_run: UnlearnResult | None = field(default=None, repr=False)

    def best(self) -> SweepRow:
        return self.rows[0]

    @property
    def original_is_best(self) -> bool:
        """No setting of the grid beat the unchanged model."""
        return self.rows[0].original

    def runs(self) -> list[SweepRow]:
        """The grid's rows, ranked, without the original."""
        return [row for row in self.rows if not row.original]

    def table(self) -> list[dict[str, Any]]:
        """One flat dict per row: settings, accuracies per set, score, collapse, unlearn seconds."""
        # every row has the grid's columns, in the grid's order (empty for the original)
        names = list(dict.fromkeys(name for row in self.rows for name in row.settings))
        out = []
        for rank, row in enumerate(self.rows, 1):
            metrics = row.record.metrics
            flat = {"rank": rank, "run": row.label, **{n: row.settings.get(n) for n in names}}
            flat.update({f"acc_{name}": stats["accuracy"] for name, stats in metrics.items()})
            flat[self.criterion] = round(row.score, 4)
            flat["collapsed"] = bool(row.collapsed)
            flat["unlearn_s"] = row.record.wall_clock_s.get("unlearn")
            notes = [n for n in (row.collapsed, row.record.error) if n]
            flat["note"] = "; ".join(notes)
            out.append(flat)
        return out


def sweep(
    net: nn.Module,
    card: ModelCard,
    data: DecodedSets,
    *,
    method: str,
    grid: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, Any] | None = None,
    reference: nn.Module | None = None,
    reference_record: RunRecord | None = None,
    device: str = "auto",
    seed: int = 0,
    concurrent: int = 1,
    base_digest: str = "",
    on_run: Callable[[int, int, SweepRow], None] | None = None,
) -> SweepResult:
    """Run ``method`` for every grid point (plus ``fixed`` settings) and rank the runs and the
    unchanged original (see the module docstring).

    ``reference_record``: the reference's run record (run.json), to check that it was made for
    this selection. ``on_run(done, total, row)`` is called with done = 0 for the original, then
    after each run. ``concurrent`` runs go at once, each in its own thread (and CUDA stream): a
    small model leaves most of a large GPU idle between kernel launches, and other runs fill the
    gaps. Every run is the one a sequential sweep makes (same seed, same batches). A grid of more
    than MAX_GRID_POINTS points is refused before anything runs.
    """
    points, configs = sweep_points(method, grid, fixed)  # every problem before any run
    sets = data.sets
    ref_acc: dict[str, float] = {}
    if reference is not None:
        ref_metrics = evaluate(reference, card, sets, by=(), device=device)
        ref_acc = {name: stats["accuracy"] for name, stats in ref_metrics.items()}
    retain = sets.get("retain", DecodedSet(torch.empty(0), torch.empty(0, dtype=torch.long)))
    kind = forgetting_kind(sets["forget"], retain)
    kept = kept_set(sets)
    # the original, measured once like every run (the same evaluation run_unlearning makes)
    original = evaluate(net, card, sets, device=device)
    target = None if ref_acc else target_from_metrics(kind, original)

    def score(metrics: Mapping[str, Any]) -> float:
        if ref_acc:
            value = distance(metrics, ref_acc)
        else:
            value = target.distance(reading_from_metrics(metrics))
        return math.inf if math.isnan(value) else value  # nan would break the ordering

    def predictions(model: nn.Module) -> dict[str, Any] | None:
        return concentration(model, card, sets[kept], device=device) if kept else None

    start = predictions(net)
    first = SweepRow(
        {},
        RunRecord(method=ORIGINAL, metrics=original, wall_clock_s={}),
        score(original),
        original=True,
        predictions=start,
    )
    warnings = ranking_warnings(
        kind,
        data.counts(),
        target=target,
        reference_record=reference_record,
        reference_given=reference is not None,
        digests=data.digests,
    )
    if start is not None and collapse_reason(original, original, kept, start):
        warnings.append(
            f"the original itself puts {start['prediction_share']:.0%} of its predictions on "
            f"{kept} in class {start['class']}: collapse is judged against a model that "
            "already answers mostly one class"
        )
    if on_run is not None:
        on_run(0, len(points), first)
    t0 = time.perf_counter()
    workers = effective_concurrency(concurrent, net)

    # The best network so far and its (rank key, grid index): each run compares itself as it
    # ends, so one network is held besides those in flight (not one per run); the index breaks
    # ties as the stable sort below does, whatever order concurrent runs end in.
    best: dict[str, Any] = {"key": (rank_key(first), -1), "result": None}
    lock = threading.Lock()

    def keep_if_best(row: SweepRow, index: int, result: UnlearnResult) -> None:
        with lock:
            if (rank_key(row), index) < best["key"]:
                best.update(key=(rank_key(row), index), result=result)

    def run(job: tuple[int, tuple[dict[str, Any], Any]]) -> SweepRow:
        index, (point, config) = job
        try:
            with own_stream(device):
                result = run_unlearning(
                    net,
                    card,
                    data,
                    method=method,
                    config=config,
                    device=device,
                    seed=seed,
                    base_digest=base_digest,
                )
        except DivergedError as exc:  # the sweep goes on; the run ranks last
            log.warning("%s: %s", point, exc)
            record = RunRecord(method=method, error=str(exc), metrics={}, wall_clock_s={})
            return SweepRow(point, record, math.inf)
        metrics, shares = result.record.metrics, predictions(result.model)
        why = collapse_reason(metrics, original, kept, shares)
        row = SweepRow(point, result.record, score(metrics), False, why, shares)
        keep_if_best(row, index, result)
        return row

    rows: list[SweepRow] = [first]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep") as pool:
        # map keeps the grid's order; runs are reported in that order too
        for row in pool.map(run, enumerate(zip(points, configs, strict=True))):
            rows.append(row)
            if on_run is not None:
                on_run(len(rows) - 1, len(points), row)
    total = time.perf_counter() - t0
    runs = rows[1:]
    if all(row.diverged for row in runs):
        raise DivergedError(
            f"every run of the sweep diverged; the first: {runs[0].record.error}",
            hint="lower the learning rate (--set lr=... or a smaller --grid lr=...)",
        )
    rows.sort(key=rank_key)  # stable: ties keep the original first, then the grid's order
    criterion = REFERENCE if ref_acc else ESTIMATED
    for rank, row in enumerate(rows, 1):  # the saved best run's run.json says it too
        row.record.sweep = {
            "rank": rank,
            "criterion": criterion,
            "score": _finite(row.score),
            "collapsed": row.collapsed or None,
            "predictions_on": kept,
            "predictions": row.predictions,
        }
    return SweepResult(
        method,
        criterion,
        rows,
        round(total, 3),
        ref_acc,
        workers,
        warnings,
        _target_record(target),
        kind,
        best["result"],
    )


def _finite(value: float) -> float | None:
    """JSON has no nan or infinity: None stands for them in records."""
    return round(value, 4) if math.isfinite(value) else None


def _target_record(target: Target | None) -> dict[str, Any]:
    if target is None:
        return {}
    return {
        k: _finite(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(target).items()
    }


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
