"""How a sweep ranks its runs (see :mod:`revise.unlearn.sweep`): the two criteria, collapse,
and what the ranking cannot judge for a kind of forgetting (its warnings)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from revise._run_record import RunRecord
from revise.data.sets import DecodedSet
from revise.models.card import ModelCard
from revise.unlearn.evaluate import predict
from revise.unlearn.target import CLASS, Target, subsample

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


def distance(metrics: Mapping[str, Any], reference: Mapping[str, float]) -> float:
    d_retain = metrics["retain"]["accuracy"] - reference["retain"]
    d_forget = metrics["forget"]["accuracy"] - reference["forget"]
    return math.hypot(d_retain, d_forget)


def kept_set(sets: Mapping[str, DecodedSet]) -> str | None:
    """The retained images a collapse is judged on: held-out ones, else the retain set."""
    return next((s for s in ("heldout_retain", "retain") if s in sets and len(sets[s])), None)


def concentration(
    net: nn.Module, card: ModelCard, data: DecodedSet, *, device: str = "auto"
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
