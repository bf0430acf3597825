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
import itertools
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
from revise.errors import DivergedError, UsageError
from revise.evaluate import EvalSet, evaluate, predict
from revise.models.card import ModelCard
from revise.models.pixel import resolve_device
from revise.pipeline import PreparedData, run_unlearning
from revise.unlearn.api import UnlearnResult, make_config
from revise.unlearn.base import LabelledTensors
from revise.unlearn.target import (
    CLASS,
    Target,
    forgetting_kind,
    reading_from_metrics,
    subsample,
    target_from_metrics,
)

log = logging.getLogger(__name__)

# Each grid point is a whole unlearning run: a grid larger than this is a typo or a job for
# several sweeps, and is refused before anything is built or run.
MAX_GRID_POINTS = 4096

REFERENCE, ESTIMATED = "distance_to_reference", "estimated_distance"  # both: lower is better
ORIGINAL = "(original)"  # the settings shown for the unchanged model's row

# A run is collapsed when its held-out retain accuracy fell more than this below the original's:
# a tenth of the images it read right is lost, far beyond what forgetting a group should cost.
COLLAPSE_MARGIN = 0.10
# ... or when more than CONCENTRATION of its predictions on retained images are one class that
# carries under RARE_LABEL of their labels: the model answers one class whatever it is shown.
CONCENTRATION = 0.90
RARE_LABEL = 0.50
# A target forget accuracy known only to +- this (95% interval) is too coarse to rank by alone.
COARSE_TARGET = 0.10


@dataclass
class SweepRow:
    settings: dict[str, Any]
    record: RunRecord  # the run's (the original's: its metrics; a diverged run's: its error)
    score: float
    original: bool = False  # the unchanged model
    collapsed: str = ""  # why the run is collapsed ("" when it is not)
    predictions: dict[str, Any] | None = None  # concentration() on the retained images

    @property
    def diverged(self) -> bool:
        return self.record.error is not None

    @property
    def label(self) -> str:
        """The row's settings as shown: ``(original)`` or ``lr=0.01 phi=1``."""
        if self.original:
            return ORIGINAL
        return " ".join(f"{k}={v}" for k, v in self.settings.items()) or "(defaults)"


def rank_key(row: SweepRow) -> tuple[bool, bool, float]:
    """Diverged runs last, collapsed runs after every other run and the original, then by score
    (ties keep the grid's order, the original first: a tie has not beaten it)."""
    return (row.diverged, bool(row.collapsed), row.score)


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


def kept_set(sets: Mapping[str, EvalSet]) -> str | None:
    """The retained images a collapse is judged on: held-out ones, else the retain set."""
    return next((s for s in ("heldout_retain", "retain") if s in sets and len(sets[s])), None)


def concentration(
    net: nn.Module, card: ModelCard, data: LabelledTensors, *, device: str = "auto"
) -> dict[str, Any]:
    """Which class ``net`` predicts most on (a fixed subsample of) ``data``, the share of its
    predictions in that class and the share of labels that class carries."""
    part = subsample(data)
    predicted = predict(net, card, part.x, device=device).argmax(1)
    counts = torch.bincount(predicted, minlength=card.num_classes)
    top = int(counts.argmax())
    return {
        "class": top,
        "prediction_share": round(counts[top].item() / len(part), 4),
        "label_share": round((part.y == top).float().mean().item(), 4),
        "images": len(part),
    }


def collapse_reason(
    metrics: Mapping[str, Any],
    original: Mapping[str, Any],
    kept: str | None,
    predictions: Mapping[str, Any] | None,
) -> str:
    """Why a run counts as collapsed ("" when it does not): its accuracy on the ``kept`` set
    fell more than COLLAPSE_MARGIN below the original's, or ``predictions`` (from
    :func:`concentration`) put more than CONCENTRATION of the images in one class carrying
    under RARE_LABEL of their labels."""
    reasons = []
    if kept is not None and kept in metrics and kept in original:
        now, was = metrics[kept]["accuracy"], original[kept]["accuracy"]
        if now < was - COLLAPSE_MARGIN:
            reasons.append(
                f"{kept} accuracy {now:.3f} is {was - now:.3f} below the original's {was:.3f} "
                f"(more than {COLLAPSE_MARGIN:g})"
            )
    if predictions is not None:
        share, labels = predictions["prediction_share"], predictions["label_share"]
        if share > CONCENTRATION and labels < RARE_LABEL:
            reasons.append(
                f"{share:.0%} of its predictions on {kept} are class {predictions['class']}, "
                f"which is {labels:.0%} of the labels"
            )
    return "collapsed: " + "; ".join(reasons) if reasons else ""


# --- warnings --------------------------------------------------------------------------------


def ranking_warnings(
    kind: str,
    counts: Mapping[str, int],
    *,
    target: Target | None = None,
    reference_record: RunRecord | None = None,
    reference_given: bool = False,
    digests: Mapping[str, str] | None = None,
) -> list[str]:
    """One plain line for each thing the ranking's criterion cannot judge for this kind of
    forgetting and these sets: ``target`` for the reference-free ranking, ``reference_given``
    (and the reference's run record, when known) for ranking by distance to a reference."""
    out: list[str] = []
    if not counts.get("retain"):
        out.append("there are no retain images: the ranking judges forgetting only")
    if reference_given:
        out.extend(_reference_warnings(reference_record, digests or {}))
        return out
    if target is None:
        return out
    n_group, n_outside = counts.get("heldout_forget", 0), counts.get("heldout_retain", 0)
    if kind != CLASS and n_group:
        out.append(
            f"subset forgetting of a distinct group: the target forget accuracy is how the "
            f"original reads {n_group} held-out images of the group ({target.forget:.3f}); a "
            "model retrained without a whole device or site may read it worse than that, which "
            "this ranking cannot see (give --reference to judge it)"
        )
    elif kind != CLASS and n_outside:
        out.append(
            f"subset forgetting without held-out images of the forgotten group: the target "
            f"forget accuracy falls back to the original's accuracy on {n_outside} held-out "
            f"images outside it ({target.forget:.3f}), right for random rows or patients but "
            "not for a group read differently (a device, a site)"
        )
    elif kind != CLASS:
        out.append(
            "subset forgetting without held-out images: the target forget accuracy cannot be "
            "estimated, so the ranking judges retention only and cannot tell forgetting from "
            "not forgetting (mark some rows split=heldout, or give --reference)"
        )
    if kind != CLASS and target.forget_half_width > COARSE_TARGET:
        out.append(
            f"the target forget accuracy is known only to +-{target.forget_half_width:.2f} "
            f"({target.heldout_forget_source}): runs closer than that cannot be told apart"
        )
    if not n_outside:
        what = "classes" if kind == CLASS else "group"
        out.append(
            f"no held-out images outside the forgotten {what}: accuracy lost on new images "
            "cannot be measured, so retention and collapse are judged on the training images "
            "the model was fit to"
        )
    return out


def _reference_warnings(record: RunRecord | None, digests: Mapping[str, str]) -> list[str]:
    """Whether the reference was retrained for this sweep's selection, as far as its run
    record (run.json) tells."""
    if record is None:
        return [
            "the reference has no run record (run.json): the sweep cannot check that it was "
            "retrained without exactly this forget selection; a reference made for another "
            "selection ranks the runs against the wrong target"
        ]
    out = []
    method = record.method
    if method != "retrain":
        out.append(
            f"the reference is a {method or 'unknown'} run, not a retrained model: distances to "
            "it say how close a run comes to that run, not to retraining"
        )
    theirs = record.selection_digests or {}
    differ = [s for s in ("forget", "retain") if s in digests and theirs.get(s) != digests[s]]
    if differ:
        made_for = record.forget_selection or "an unrecorded selection"
        out.append(
            f"the reference was made for another selection ({made_for}): its "
            f"{' and '.join(differ)} set{'s differ' if len(differ) > 1 else ' differs'} from "
            "this sweep's, so the runs are ranked against the wrong target"
        )
    return out


# --- the sweep ---------------------------------------------------------------------------------


def sweep(
    net: nn.Module,
    card: ModelCard,
    data: PreparedData,
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
    empty = LabelledTensors(torch.empty(0), torch.empty(0, dtype=torch.long))
    retain = sets["retain"].data if "retain" in sets else empty
    kind = forgetting_kind(sets["forget"].data, retain)
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
        return concentration(model, card, sets[kept].data, device=device) if kept else None

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
