"""What a revision should reach when no retrained reference exists, and how far a model is from it.

A site unlearns because it cannot retrain, so the target must come from the data it has: the
forget and retain sets and a calibration slice of held-out images (never the images validation
judges). The kind of forgetting decides the target (metrics.md, "without a retrained reference"):

* ``class``: whole classes are forgotten (no retained image carries a forgotten label). A model
  that never saw a class never predicts it: the target forget accuracy is 0, on the training
  images and on held-out images of the class alike.
* ``subset``: some images of classes that stay (a device, a site, patients, instances). A model
  that never saw them reads them as it reads held-out images of the same group: the target forget
  accuracy is the original's accuracy on held-out images of that group (with a binomial interval);
  where the group's images are not told apart from the others' (patients, random rows), the
  automatic revision pools every calibration image, weighted to the forget set's class mix.
  Caveat, stated in every record: this cannot see that a model trained without a whole device
  might read that device worse than the original reads its held-out images.

Both kinds keep the retain accuracy of the original and its held-out accuracy outside the group.
The estimated distance to the retrained model is the seed paper's D with the target in place of
the reference: ``sqrt((RA - RA_0)^2 + (FA - FA*)^2)``, plus any drop of held-out accuracy outside
the group, which D alone would miss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from revise._run_record import TargetCheck
from revise.data.sets import DecodedSet

CLASS, SUBSET = "class", "subset"
Z95 = 1.96
# The ceiling is aimed under by this many standard errors of the calibration slice's reading
# (one-sided, about 84%): validation judges the gate on other held-out images of the group.
CEILING_Z = 1.0
# Images read per set at each check: the same ones every time, so that differences between
# checks are paired and finer than a +-0.03 interval; cheap beside the steps between checks.
CHECK_IMAGES = 256


def forgetting_kind(forget: DecodedSet, retain: DecodedSet) -> str:
    """``class`` when no retained image carries a label of the forget set, else ``subset``."""
    forgotten = set(forget.y.unique().tolist())
    kept = set(retain.y.unique().tolist()) if len(retain) else set()
    return CLASS if forgotten and not forgotten & kept else SUBSET


def binomial_half_width(p: float, n: int) -> float:
    """Half-width of the normal 95% interval of an accuracy ``p`` measured on ``n`` images."""
    if n <= 0:
        return 1.0
    return Z95 * math.sqrt(max(p * (1 - p), 0.25 / n) / n)


def subsample(data: DecodedSet, limit: int = CHECK_IMAGES, seed: int = 0) -> DecodedSet:
    """At most ``limit`` images of ``data``, the same ones for the same seed."""
    if len(data) <= limit:
        return data
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:limit].sort().values
    return DecodedSet(data.x[idx], data.y[idx])


@torch.no_grad()
def _hits(model: nn.Module, data: DecodedSet, batch_size: int = 1024) -> torch.Tensor:
    """Per image, whether a pixel-space model (in its current mode) gets it right: a bool
    tensor on the model's device (no host sync per batch)."""
    device = next(model.parameters()).device
    out = [
        model(data.x[i : i + batch_size].to(device, non_blocking=True)).argmax(1)
        == data.y[i : i + batch_size].to(device, non_blocking=True)
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=device)


def accuracy(model: nn.Module, data: DecodedSet) -> float:
    """Accuracy of a pixel-space model in its current mode (callers put it in eval mode)."""
    if len(data) == 0:
        return float("nan")
    return _hits(model, data).sum().item() / len(data)


@torch.no_grad()
def class_weighted_accuracy(
    model: nn.Module, heldout: DecodedSet, labels: torch.Tensor
) -> tuple[float, float] | None:
    """Accuracy on ``heldout`` re-weighted to the class mix of ``labels``, and its 95%
    half-width (per class, binomial); None when a class of ``labels`` has no held-out image."""
    classes, counts = labels.cpu().unique(return_counts=True)
    weights = counts.double() / counts.sum()
    hits = _hits(model, heldout).cpu()
    level = variance = 0.0
    for c, w in zip(classes.tolist(), weights.tolist(), strict=True):
        mine = hits[heldout.y.cpu() == c]
        if len(mine) == 0:
            return None
        p = mine.double().mean().item()
        level += w * p
        variance += w * w * max(p * (1 - p), 0.25 / len(mine)) / len(mine)
    return level, Z95 * math.sqrt(variance)


@dataclass
class Reading:
    """Accuracies of one model on the four sets a revision is judged on."""

    forget: float
    retain: float
    heldout_forget: float  # nan when there are no held-out images of the group
    heldout_retain: float


@dataclass(frozen=True)
class Ceiling:
    """The highest held-out accuracy on the forgotten group a site accepts, from its acceptance
    criteria (fixed before the run): for a distinct group (a device, a site) the only statement,
    without retraining, of how a model that never saw the group should read it."""

    value: float
    source: str  # the gate and its file, for the record
    # The most held-out accuracy outside the group the same criteria let the revision lose (a
    # gate `accuracy ... at_least: original - d` or `accuracy_change ... at_least: -d`), if any.
    slack: float | None = None


@dataclass
class Target:
    """The reference-free target of one revision."""

    kind: str
    forget: float  # the forget accuracy a model that never saw the forget set would have
    forget_half_width: float  # its 95% interval's half-width
    retain: float  # the original's retain accuracy
    heldout_retain: float  # the original's held-out accuracy outside the group
    heldout_retain_half_width: float  # its 95% interval's half-width
    heldout_forget_source: str  # which held-out images gave ``forget`` (subset kind)
    # A site's ceiling (Ceiling.source): ``forget`` is then an upper bound, not a level - any
    # reading at or under it is on target - and the group's held-out images count as for a class.
    ceiling_source: str | None = None
    retention_slack: float | None = None  # the ceiling's slack (Ceiling.slack)

    def distance(self, reading: Reading) -> float:
        """Estimated distance to the retrained model: D against the target, with the held-out
        accuracy lost outside the group (and, for a class, the held-out class still recognised).
        Terms nothing measured drop out: the forget term when the target is unknown (a subset
        without held-out images), the retain term without retain images."""
        d_forget = 0.0 if math.isnan(self.forget) else self._forget_read(reading) - self.forget
        if self.ceiling_source is not None:
            d_forget = max(0.0, d_forget)
        d_retain = reading.retain - self.retain
        if math.isnan(d_retain):
            d_retain = 0.0
        lost = self.heldout_retain - reading.heldout_retain
        drop = 0.0 if math.isnan(lost) else max(0.0, lost)  # no held-out set: nothing to lose
        return math.sqrt(d_retain**2 + d_forget**2 + drop**2)

    def as_record(self) -> dict[str, Any]:
        return {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in asdict(self).items()
            if v is not None
        }

    def _forget_read(self, reading: Reading) -> float:
        """The forget accuracy compared with ``forget``: for a class, and under a ceiling, the
        group's held-out images count as much as its training images."""
        pooled = self.kind == CLASS or self.ceiling_source is not None
        if pooled and not math.isnan(reading.heldout_forget):
            return (reading.forget + reading.heldout_forget) / 2
        return reading.forget

    def retention_lost(self, reading: Reading) -> float:
        """Retain or held-out accuracy outside the group lost against the original (the larger;
        what nothing measured drops out)."""
        drops = (self.retain - reading.retain, self.heldout_retain - reading.heldout_retain)
        return max([0.0, *(d for d in drops if not math.isnan(d))])

    def within_floor(self, reading: Reading) -> bool:
        """Whether ``reading`` loses no more retention than the site's criteria allow (always,
        without such a gate)."""
        slack = self.retention_slack
        return slack is None or self.retention_lost(reading) <= slack

    def under_ceiling(self, reading: Reading) -> bool:
        """With a site's ceiling: whether ``reading`` has the group at or under its aim."""
        return self.ceiling_source is not None and self._forget_read(reading) <= self.forget

    def under(self, ceiling: Ceiling, n_group: int) -> Target:
        """This target with the site's ceiling: the forget accuracy aimed at is the ceiling less
        CEILING_Z standard errors of a reading on the ``n_group`` held-out images it is read on
        (so that the gate, judged on other held-out images, passes too), or the original's level
        where that is lower already."""
        aim = ceiling.value - CEILING_Z / Z95 * binomial_half_width(ceiling.value, n_group)
        return replace(
            self,
            forget=max(0.0, min(aim, self.forget)) if not math.isnan(self.forget) else aim,
            forget_half_width=0.0,
            ceiling_source=ceiling.source,
            retention_slack=ceiling.slack,
        )

    def half_width(self) -> float:
        """Half-width of the 95% interval of an estimated distance: what the target's forget
        accuracy and held-out retention, each measured on a finite slice, leave uncertain."""
        return math.hypot(self.forget_half_width, self.heldout_retain_half_width)


@dataclass
class Judge:
    """Reads a model on subsampled copies of the sets (the same images at every check)."""

    forget: DecodedSet
    retain: DecodedSet
    heldout_forget: DecodedSet
    heldout_retain: DecodedSet

    @classmethod
    def build(
        cls,
        forget: DecodedSet,
        retain: DecodedSet,
        heldout_forget: DecodedSet,
        heldout_retain: DecodedSet,
        device: torch.device,
        seed: int = 0,
    ) -> Judge:
        sets = (forget, retain, heldout_forget, heldout_retain)
        return cls(*(subsample(s, seed=seed + i).to(device) for i, s in enumerate(sets)))

    def read(self, model: nn.Module) -> Reading:
        return Reading(
            accuracy(model, self.forget),
            accuracy(model, self.retain),
            accuracy(model, self.heldout_forget),
            accuracy(model, self.heldout_retain),
        )

    def target(self, kind: str, original: Reading, source: str) -> Target:
        n_group, n_kept = len(self.heldout_forget), len(self.heldout_retain)
        return make_target(kind, original, n_group, n_kept, source)


def make_target(kind: str, original: Reading, n_group: int, n_kept: int, source: str) -> Target:
    """The target from the original's reading; ``n_group`` / ``n_kept``: the held-out images
    inside / outside the group it was read on."""
    forget, half = 0.0, 0.0
    if kind == SUBSET:
        forget = original.heldout_forget
        half = math.nan if math.isnan(forget) else binomial_half_width(forget, n_group)
    return Target(
        kind,
        forget,
        half,
        original.retain,
        original.heldout_retain,
        binomial_half_width(original.heldout_retain, n_kept) if n_kept else 0.0,
        source if kind == SUBSET else "none: a forgotten class has target 0",
    )


def reading_from_metrics(metrics: Mapping[str, Any]) -> Reading:
    """A Reading from ``revise.unlearn.evaluate.evaluate``'s {set: {n, accuracy}} (nan where a set
    is missing)."""

    def acc(name: str) -> float:
        stats = metrics.get(name)
        return float(stats["accuracy"]) if stats else float("nan")

    return Reading(acc("forget"), acc("retain"), acc("heldout_forget"), acc("heldout_retain"))


def target_from_metrics(kind: str, original: Mapping[str, Any]) -> Target:
    """The target from the original's metrics on the judged sets (``evaluate``'s {set: {n,
    accuracy}}): forget accuracy 0 for a class; for a subset the original's held-out accuracy
    on the group, else on held-out images outside it, else unknown (nan: the forget term then
    drops out of :meth:`Target.distance`)."""
    reading = reading_from_metrics(original)
    n = {name: int(stats["n"]) for name, stats in original.items() if stats}
    group = next((s for s in ("heldout_forget", "heldout_retain") if s in n), None)
    if kind == SUBSET and group is not None:
        reading.heldout_forget = float(original[group]["accuracy"])
    source = {
        "heldout_forget": f"{n.get('heldout_forget', 0)} held-out images of the group",
        "heldout_retain": f"{n.get('heldout_retain', 0)} held-out images standing for the group",
        None: "none: no held-out images",
    }[group]
    return make_target(kind, reading, n.get(group or "", 0), n.get("heldout_retain", 0), source)


def check_against_target(
    kind: str, original: Mapping[str, Any], revised: Mapping[str, Any], margin: float
) -> TargetCheck:
    """The run record's ``target`` block for a method run with chosen settings: the estimated
    distance of the revised model, whether it is within ``margin``, and a warning when not."""
    target = target_from_metrics(kind, original)
    estimate = target.distance(reading_from_metrics(revised))
    half = target.half_width()
    interval = (
        None
        if math.isnan(half)
        else [round(max(0.0, estimate - half), 4), round(estimate + half, 4)]
    )
    block = {
        **target.as_record(),
        "estimated_distance": round(estimate, 4),
        "estimated_distance_interval": interval,
        "met": estimate <= margin,
    }
    if not block["met"]:
        block["warning"] = (
            f"estimated distance {estimate:.3f} to what retraining would give is above {margin}: "
            + "; ".join(_shortfalls(target, reading_from_metrics(revised)))
        )
    return TargetCheck(**block)


def _shortfalls(target: Target, reading: Reading) -> list[str]:
    """What keeps ``reading`` from the target, in words."""
    out = []
    forget, half = reading.forget, target.forget_half_width
    if forget > target.forget + half:
        out.append(
            f"the forget set is still read at {forget:.2f}, where a model that never saw it "
            f"would read about {target.forget:.2f} (too little forgetting)"
        )
    elif forget < target.forget - half:
        out.append(
            f"the forget set is read at {forget:.2f}, below the {target.forget:.2f} of held-out "
            "images of its group: more forgetting than the held-out images justify, unless a "
            "model retrained without the group would read it that badly too (possible for a "
            "whole device or site)"
        )
    lost = max(target.retain - reading.retain, target.heldout_retain - reading.heldout_retain)
    if lost > 0.01:
        out.append(f"retention fell by up to {lost:.2f}")
    return out or ["check the validation gates"]


# A subset whose held-out images a plain classifier tells from the others' by pixel statistics
# alone (cross-validated ROC AUC at least this) is a distinct group: a device, a site.
DISTINCT_AUC = 0.8
MIN_PER_SIDE = 10


def image_statistics(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel: mean, spread, quartiles and edge energy - what an acquisition
    (a detector's response, blur, noise, a colour cast) changes first."""
    flat = x.flatten(2).float()
    quartiles = flat.quantile(torch.tensor([0.25, 0.5, 0.75]), dim=2).permute(1, 2, 0)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(2).mean(2)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(2).mean(2)
    parts = [flat.mean(2), flat.std(2), *quartiles.unbind(2), dx, dy]
    return torch.cat(parts, dim=1)


def group_separability(group: DecodedSet, others: DecodedSet, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression telling ``group``'s images from
    ``others``' by :func:`image_statistics` (nan with fewer than MIN_PER_SIDE on a side)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if min(len(group), len(others)) < MIN_PER_SIDE:
        return math.nan
    features = torch.cat([image_statistics(group.x.cpu()), image_statistics(others.x.cpu())])
    labels = [1] * len(group) + [0] * len(others)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(n_splits=min(5, MIN_PER_SIDE // 2), shuffle=True, random_state=seed)
    scores = cross_val_score(model, features.numpy(), labels, cv=folds, scoring="roc_auc")
    return float(scores.mean())
