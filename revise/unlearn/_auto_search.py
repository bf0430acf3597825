"""One candidate of the automatic revision (:mod:`revise.unlearn.auto`), run under a monitor
that reads it every few steps against the target, keeps the closest state seen, and stops it
once it meets the target, stops improving, collapses or has used its share of the budget."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from revise.data.sets import DecodedSet
from revise.errors import DivergedError
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel
from revise.unlearn.api import unlearn
from revise.unlearn.base import steps_per_pass
from revise.unlearn.target import Judge, Reading, Target

# A candidate stops once its estimated distance is this small: closer than anything the
# estimate itself can tell apart.
GOOD_ENOUGH = 0.005
# A candidate stops when a third of its steps (and at least PATIENCE checks) bring no
# improvement: early steps may lose retention before the retain term wins it back.
PATIENCE = 4
COLLAPSE = 0.25  # retain accuracy lost that ends a candidate at once
CHECKS_PER_CANDIDATE = 12  # how often a candidate is read, spread over its share of the budget
MIN_CHECKS = 4
CHECK_SHARE = 0.3  # of a candidate's budget, at most, spent reading it


@dataclass
class Candidate:
    name: str
    method: str
    settings: dict[str, Any]
    # What one step costs, in images passed forward and backward per image of its batch, and
    # which images one pass of the method goes over (its epochs count those passes).
    cost_per_image: float
    passes_over: str  # "forget", "retain" or "union"
    share: float = 1.0  # of the budget left when it starts, the part it may use


@dataclass
class Best:
    name: str
    reading: Reading
    distance: float
    state: dict[str, torch.Tensor] | None = None  # None: the original's weights
    step: int = 0


@dataclass
class Trial:
    """What one candidate did, for the record."""

    candidate: Candidate
    checks: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped: str = ""
    error: str = ""


def meets(target: Target, distance: float) -> bool:
    """The estimate cannot tell ``distance`` from zero: it is within the target's own interval
    (a subset's target is an accuracy measured on a finite held-out slice), or below
    GOOD_ENOUGH. Chasing a smaller estimate would fit the slice's noise, not the retrained
    model."""
    return distance <= max(GOOD_ENOUGH, target.forget_half_width)


def replaces(target: Target, distance: float, best: Best, reading: Reading) -> bool:
    """Whether a state at ``distance`` (reading ``reading``) replaces ``best``. A state within
    the site's retention floor ranks before any outside it; then a state that meets the target
    replaces a best that does not. Leaving the original takes a clear gain (a quarter of the
    interval; the checks read the same images, so differences are finer than the interval): the
    best of many noisy checks on a small calibration slice would otherwise win by chance."""
    inside, best_inside = target.within_floor(reading), target.within_floor(best.reading)
    if inside != best_inside:
        return inside
    if meets(target, distance) and not meets(target, best.distance):
        return True
    margin = target.half_width() / 4 if best.state is None else 1e-4
    return distance < best.distance - margin


def run_candidate(
    cand: Candidate,
    net: nn.Module,
    card: ModelCard,
    forget: DecodedSet,
    retain: DecodedSet,
    judge: Judge,
    target: Target,
    best: Best,
    budget_left: float,
    check_cost: float,
    dev: torch.device,
    seed: int,
) -> tuple[Trial, Best, float]:
    """Run one candidate under the monitor; return its trial, the best state so far and the
    image passes it used."""
    trial = Trial(cand)
    pass_size = {
        "forget": len(forget),
        "retain": len(retain),
        "union": len(forget) + len(retain),
    }[cand.passes_over]
    batch = min(64, pass_size)
    step_cost = cand.cost_per_image * batch
    # At most CHECK_SHARE of the budget goes to checks, and at least MIN_CHECKS are made.
    checks = int(
        min(CHECKS_PER_CANDIDATE, max(MIN_CHECKS, CHECK_SHARE * budget_left // check_cost))
    )
    every = max(1, int((budget_left - checks * check_cost) // step_cost) // checks)
    max_steps = every * checks  # the last step is a checked one: the budget is not overrun
    patience = max(PATIENCE, max_steps // (3 * every))
    epochs = math.ceil(max_steps / steps_per_pass(pass_size, batch))
    state = {"best": best, "stale": 0, "own": math.inf}  # own: this candidate's best distance

    def monitor(model: nn.Module, step: int) -> bool:
        reading = judge.read(model)
        distance = target.distance(reading)
        trial.checks.append({"step": step, "distance": round(distance, 4), **rounded(reading)})
        if replaces(target, distance, state["best"], reading):
            snapshot = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
            state["best"] = Best(cand.name, reading, distance, snapshot, step)
        if distance < state["own"] - 1e-4:  # improving on its own best, whatever others did
            state["own"], state["stale"] = distance, 0
        else:
            state["stale"] += 1
        reasons = (
            (meets(target, distance), "met the target"),
            # early steps may lose much retention before the retain term wins it back
            (reading.retain < target.retain - COLLAPSE and step >= max_steps // 2, "collapsed"),
            (state["stale"] >= patience, "stopped improving"),
            (step >= max_steps, "used its budget"),
        )
        trial.stopped = next((why for hit, why in reasons if hit), "")
        return bool(trial.stopped)

    t0 = time.perf_counter()
    config = {**cand.settings, "epochs": epochs, "batch_size": batch}
    if "cosine" in config or cand.method == "cf_k":  # decay over the steps this run may take
        config["epochs"] = max(1, max_steps // steps_per_pass(pass_size, batch))
    try:
        result = unlearn(
            net, card, forget, retain, method=cand.method, config=config,
            device=str(dev), seed=seed, monitor=monitor, monitor_every=every,
        )  # fmt: skip
        trial.steps = result.record.stopped_at_step or result.record.steps or 0
        if result.record.stopped_at_step is None:  # its last step was not read yet
            monitor(PixelSpaceModel(result.model, card).to(dev).eval(), trial.steps)
    except DivergedError as exc:
        trial.error, trial.steps = str(exc), max_steps
    trial.seconds = round(time.perf_counter() - t0, 4)
    used = trial.steps * step_cost + len(trial.checks) * check_cost
    return trial, state["best"], used


def rounded(reading: Reading) -> dict[str, float | None]:
    return {k: (None if math.isnan(v) else round(v, 4)) for k, v in reading.__dict__.items()}


def reading_of(check: dict[str, Any]) -> Reading:
    """The Reading a check recorded (:func:`rounded`'s None back to nan)."""
    names = Reading.__dataclass_fields__
    return Reading(**{k: math.nan if check.get(k) is None else check[k] for k in names})
