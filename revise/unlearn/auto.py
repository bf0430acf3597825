"""The automatic revision: no hand-tuning, no retrained reference, and a plain verdict.

From the selection it knows the kind of forgetting (``target.forgetting_kind``) and derives the
reference-free target for it (``target.Target``). It then tries candidates in order - the
unchanged original first, then the seed method (psg) in settings suited to the kind, from a
bolder learning rate to a gentler one - checking every few steps how far the model is from the
target on fixed subsamples of the forget and retain sets and of the calibration slice. Each
candidate stops early once it meets the target, stops improving, or collapses, and the closest
state seen is kept (no rerun). The whole search works within a budget counted in image passes,
so that a 45-image and a 6,000-image forget set both get a real revision at a bounded cost.

The record says which candidate won, the target, the estimated distance with its interval, what
every candidate reached, and - when the best state still misses the target - a warning.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable

import torch
from torch import nn

from revise._run_record import RunRecord, TargetCheck
from revise.data.sets import DecodedSet
from revise.errors import UsageError
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel, resolve_device
from revise.unlearn._auto_group import first_rung, group_budget, second_rung
from revise.unlearn._auto_search import (
    Best,
    Candidate,
    Trial,
    meets,
    rounded,
    run_candidate,
)
from revise.unlearn.api import UnlearnResult, software_versions
from revise.unlearn.target import (
    CLASS,
    DISTINCT_AUC,
    SUBSET,
    Ceiling,
    Judge,
    Reading,
    Target,
    class_weighted_accuracy,
    forgetting_kind,
    group_separability,
)

log = logging.getLogger(__name__)

AUTO = "auto"  # its method name: a method with no settings of its own

MIN_SHARE = 0.2  # a further candidate runs only with at least this share of the budget left
MIN_BUDGET_IMAGES = 6_000  # about 30 steps of psg at batch 64, checks included
MISS_MARGIN = 0.03  # the estimated distance above which the record warns (the suite's target)
# The seed paper's retrain recipe (15 epochs over the retain set), against which a revision's
# work is weighed: a group revision that needs as much is no cheaper than retraining.
RETRAIN_EPOCHS = 15


# psg with the forgotten labels excluded and soft targets taken where the image is (eps = 0):
# each image learns the original's belief among the other classes - what a model that never
# saw the class answers - while retained images are distilled to the original.
_CLASS_SETTINGS = {
    "eps": 0.0,
    "eta": 0.0,
    "gamma": 0.0,
    "target": "soft",
    "exclude_label": True,
    "phi": 1.0,
    "retain_loss": "distill",
    "lr": 1e-2,
    "cosine": True,
}
# psg with its boundary search: a subset's images move toward the labels of their nearest
# boundary, softly, and only as far as held-out images of the group are read.
_SUBSET_SETTINGS = {
    "target": "soft",
    "phi": 1.0,
    "retain_loss": "distill",
    "lr": 1e-3,
    "cosine": True,
}


def candidates(kind: str, *, below_ceiling: bool = False) -> list[Candidate]:
    """The candidates tried after the original, in order. Measured on the scenario suite
    (docs/benchmarks/scenarios-full.md): for a class, psg with soft targets among the other
    classes keeps held-out accuracy best, then random labels on mixed batches; for a subset,
    psg's soft boundary targets, then fine-tuning the last block on the retain set (catastrophic
    forgetting of what only the forget set taught it, as retraining forgets it).
    ``below_ceiling``: a subset must go under a site's ceiling (:class:`Ceiling`): psg with hard
    boundary targets and a retain term, as the seed paper forgets a device, on two thirds of the
    budget; then :func:`revise.unlearn._auto_group.second_rung`."""
    if kind == CLASS:
        return [
            Candidate("psg (class)", "psg", dict(_CLASS_SETTINGS), 8 / 3, "forget"),
            Candidate("random_label", "random_label", {"cosine": True}, 1.0, "union"),
        ]
    if below_ceiling:  # the subset candidates do not move a distinct group (measured)
        return [first_rung()]
    return [
        Candidate("psg (subset)", "psg", dict(_SUBSET_SETTINGS), 4.0, "forget"),
        Candidate("cf_k", "cf_k", {"k": 1}, 1.0, "retain"),
    ]


def auto_revise(
    net: nn.Module,
    card: ModelCard,
    forget: DecodedSet,
    retain: DecodedSet,
    calibration_forget: DecodedSet,
    calibration_retain: DecodedSet,
    *,
    device: str = "auto",
    seed: int = 0,
    budget_passes: float = 6.0,
    min_budget_images: int = MIN_BUDGET_IMAGES,
    forget_ceiling: Ceiling | None = None,
    progress: Callable[[str], None] | None = None,
) -> UnlearnResult:
    """Revise ``net`` to forget ``forget`` without a reference or hand-set hyperparameters.

    ``calibration_forget`` / ``calibration_retain``: held-out images inside / outside the
    forgotten group, set aside for this search (never the images validation judges). For a
    subset with no held-out images of its own group (patients, random rows), pass an empty
    ``calibration_forget``: held-out images outside it stand for the group.

    ``budget_passes``: the work allowed, in passes over the retain set's worth of images
    (forward and backward), over all candidates and checks. The count is conservative (a step
    of a small network costs more in overhead than in images). ``min_budget_images``: a floor,
    so that a small site still gets a real revision (its images are cheap). On the scenario
    suite (docs/benchmarks/scenarios-full.md) the whole search took 0.02-0.5 of a 15-epoch
    retrain's time. ``forget_ceiling``: the site's ceiling on held-out accuracy of the group
    (from its acceptance criteria, :func:`revise.validate.aims.forget_ceiling`): a subset's
    target is then at most that, read on the group's training and held-out images alike. The
    input model is not modified.
    """
    if len(forget) == 0:
        raise UsageError("the forget set is empty", hint="check the --forget selection")
    if len(calibration_retain) == 0:
        raise UsageError(
            "the automatic revision needs held-out images outside the forgotten group",
            hint="mark some rows split=heldout, or choose a method and its settings yourself",
        )
    if not budget_passes > 0:
        raise UsageError(f"budget_passes must be > 0, not {budget_passes}")
    say = progress or (lambda text: None)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    kind = forgetting_kind(forget, retain)
    own_group = len(calibration_forget) > 0
    ceiling = forget_ceiling if kind == SUBSET else None
    # under a ceiling the group is read on its own images alone (its training images, where the
    # calibration slice holds none of it): others' images would hide how it is read
    heldout_forget = calibration_forget if own_group or ceiling else calibration_retain
    source = (
        f"{len(calibration_forget)} held-out images of the group"
        if own_group
        else f"{len(calibration_retain)} held-out images standing for the group"
    )
    judge = Judge.build(forget, retain, heldout_forget, calibration_retain, dev, seed)
    # A distinct group (a device, a site) may be read worse by a model retrained without it than
    # by the original on its held-out images: the target cannot see that, and the record says so.
    separability = (
        group_separability(calibration_forget, calibration_retain, seed)
        if kind == SUBSET and own_group
        else math.nan
    )
    original = PixelSpaceModel(copy.deepcopy(net).float(), card).to(dev).eval()
    start = judge.read(original)
    target = judge.target(kind, start, source)
    if kind == SUBSET and not separability >= DISTINCT_AUC:
        target = _pooled_target(target, original, calibration_forget, calibration_retain, forget)
    if ceiling is not None:
        target = target.under(ceiling, len(judge.heldout_forget) or len(judge.forget))
    best = Best("original (unchanged)", start, target.distance(start))
    say(f"auto: {kind} forgetting; the original is at estimated distance {best.distance:.3f}")
    # a small site still gets a real revision: a floor in images, cheap where images are few
    budget = max(budget_passes * max(len(retain), len(forget)), min_budget_images)
    below_ceiling = ceiling is not None and not meets(target, best.distance)
    if below_ceiling:  # GROUP_PASSES over the forget set for the group candidates
        budget = max(budget, group_budget(len(forget)))
    check_cost = sum(len(s) for s in (judge.forget, judge.retain, judge.heldout_forget)) / 3
    check_cost += len(judge.heldout_retain) / 3  # a forward pass is about a third of a step
    spent, trials = 0.0, []
    if meets(target, best.distance):
        say("auto: the original already meets the target; nothing to change")
    queue = candidates(kind, below_ceiling=below_ceiling)
    while queue:
        cand = queue.pop(0)
        # a candidate may use all that earlier ones left; one that stops early leaves the rest
        if meets(target, best.distance) or spent >= budget * (1 - MIN_SHARE):
            break
        if below_ceiling and target.under_ceiling(best.reading):
            break  # under the ceiling: another rate would only cost retention
        share = (budget - spent) * cand.share
        trial, best, used = run_candidate(
            cand,
            net,
            card,
            forget,
            retain,
            judge,
            target,
            best,
            share,
            check_cost,
            dev,
            seed,
        )
        spent += used
        trials.append(trial)
        if below_ceiling and len(trials) == 1:
            queue.append(second_rung(trial, target))
        say(f"auto: {cand.name}: best estimated distance so far {best.distance:.3f}")
    model = copy.deepcopy(net).float()
    if best.state is not None:
        model.load_state_dict(best.state)
    seconds = time.perf_counter() - t0
    record = _record(kind, target, best, trials, start, spent, budget, seconds, seed, dev)
    if separability >= DISTINCT_AUC:
        _distinct_group(record, separability, ceiling)
    record.forget_samples, record.retain_samples = len(forget), len(retain)
    if below_ceiling and budget >= RETRAIN_EPOCHS * len(retain):
        costly = (
            f"moving this group under the ceiling was allowed {budget:,.0f} image passes, as "
            f"much as retraining for {RETRAIN_EPOCHS} epochs on the {len(retain):,} retained "
            "images: where the site still has its training data, retraining (revise unlearn "
            "--method retrain) costs no more and needs no ceiling"
        )
        record.note = "; ".join(filter(None, [record.note, costly]))
    if not record.target.met:
        log.warning("auto: %s", record.warning)
    return UnlearnResult(model=model.cpu().eval(), card=card, record=record)


def _pooled_target(
    target: Target,
    original: nn.Module,
    calibration_forget: DecodedSet,
    calibration_retain: DecodedSet,
    forget: DecodedSet,
) -> Target:
    """A subset its held-out images do not tell apart from the rest (patients, random rows,
    instances) is read by a model that never saw it as that model reads held-out images of the
    same classes: the target forget accuracy is then the original's on every calibration image,
    weighted to the forget set's class mix - several times the images of the group's own slice,
    so an interval tight enough to see the gap between seen and unseen images."""
    pooled = DecodedSet(
        torch.cat([calibration_forget.x, calibration_retain.x]),
        torch.cat([calibration_forget.y, calibration_retain.y]),
    )
    estimate = class_weighted_accuracy(original, pooled, forget.y)
    if estimate is None:  # a forgotten class has no held-out image: keep the group's own slice
        return target
    level, half = estimate
    source = (
        f"{len(pooled)} held-out images, weighted to the forget set's class mix (the group's "
        "images are not told apart from the others')"
    )
    return dataclasses.replace(
        target, forget=level, forget_half_width=half, heldout_forget_source=source
    )


def _record(
    kind: str,
    target: Target,
    best: Best,
    trials: list[Trial],
    start: Reading,
    spent: float,
    budget: float,
    seconds: float,
    seed: int,
    dev: torch.device,
) -> RunRecord:
    """The run record of an automatic revision."""
    met = meets(target, best.distance) or best.distance <= MISS_MARGIN
    interval = target.half_width()
    record = RunRecord(
        method="auto",
        chosen=best.name,
        chosen_step=best.step,
        hyperparameters=next(
            (dict(t.candidate.settings) for t in trials if t.candidate.name == best.name), {}
        ),
        seed=seed,
        device=str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        target=TargetCheck(
            **target.as_record(),
            estimated_distance=round(best.distance, 4),
            estimated_distance_interval=[
                round(max(0.0, best.distance - interval), 4),
                round(best.distance + interval, 4),
            ],
            met=met,
            original=rounded(start),
            reached=rounded(best.reading),
        ),
        candidates=[
            {
                "name": t.candidate.name,
                "method": t.candidate.method,
                "settings": t.candidate.settings,
                "steps": t.steps,
                "seconds": t.seconds,
                "stopped": t.stopped,
                "best_distance": min((c["distance"] for c in t.checks), default=None),
                **({"error": t.error} if t.error else {}),
                "checks": t.checks,
            }
            for t in trials
        ],
        budget_image_passes={"used": round(spent), "allowed": round(budget)},
        wall_clock_s={"unlearn": round(seconds, 4)},
        versions=software_versions(),
    )
    if best.state is None:
        record.note = "the unchanged original was the closest to the target"
    if not met:
        record.warning = (
            f"the best state found ({best.name}) is at estimated distance {best.distance:.3f} "
            f"from the target, above {MISS_MARGIN}: the revision may fall short of what "
            "retraining would give; check the validation gates"
        )
    if target.ceiling_source is not None:
        record.target.caveat = (
            f"the forget target is the site's ceiling ({target.ceiling_source}), read on the "
            "group's training and held-out images alike, not an estimate of what retraining "
            "would give: retraining may read the group lower still"
        )
    elif kind != CLASS:
        record.target.caveat = (
            "the subset target is how the original reads held-out images of the group; a model "
            "retrained without a whole device or site may read it worse than that"
        )
    return record


def _distinct_group(record: RunRecord, auc: float, ceiling: Ceiling | None) -> None:
    """Mark a revision of a distinct group: one the target cannot judge, unless the site's
    ceiling judges it (then said so)."""
    record.target.distinct_group_auc = round(auc, 3)
    group = (
        f"the forget set is a distinct group (its held-out images are told from the others' by "
        f"pixel statistics alone, AUC {auc:.2f}), such as a device or a site: a model retrained "
        "without it may read it far worse than the original reads its held-out images"
    )
    if ceiling is not None:  # the ceiling judges it (the caveat says so)
        record.target.caveat = f"{group}; {record.target.caveat}"
        return
    record.target.met = False
    record.warning = (
        f"{group}, which no estimate without retraining can see; the estimated distance is a "
        "lower bound. Judge the revision with gates on the group's held-out images (give them "
        "to the automatic revision: revise unlearn --criteria), or compare with a model "
        "retrained on a sample (revise unlearn --method retrain)"
    )
