"""The automatic revision's candidates for a group under a site's ceiling
(:func:`revise.unlearn.auto.auto_revise` with ``forget_ceiling``): psg as the seed paper forgets a
device, then the same at another learning rate, chosen by how the first went."""

from __future__ import annotations

import math

from revise.unlearn._auto_search import CHECK_SHARE, Candidate, Trial, reading_of
from revise.unlearn.base import steps_per_pass
from revise.unlearn.target import Target

# psg as the seed paper runs it on a device, with a retain term: each image of the group moves to
# the label across its nearest boundary, and frozen BatchNorm statistics keep the group's
# batches from shifting every other image. Soft targets do not move a distinct group (measured
# on the demo site: 14 steps, no change), so a site's ceiling on the group calls for this one.
_GROUP_SETTINGS = {
    "target": "hard",
    "exclude_label": True,
    "eps": 0.1,
    "eta": 0.1,
    "phi": 2.0,
    "freeze_bn": True,
    "lr": 1e-3,
    "cosine": True,
}
# Moving a distinct group under a site's ceiling while keeping the rest takes psg about the seed
# paper's 10 passes over the forget set (demo site: retention recovers after 4-5 passes): 15 in
# all, two thirds at the first learning rate and the rest at another.
GROUP_PASSES = 15
# Retention lost (retain or held-out accuracy outside the group) by the first candidate's closest
# state beyond which the second runs gentler rather than bolder, where the criteria say nothing.
RETENTION_SLACK = 0.05
BATCH = 64  # psg's batch (run_candidate's, for sets of at least that many images)


def first_rung() -> Candidate:
    return Candidate("psg (group)", "psg", dict(_GROUP_SETTINGS), 4.0, "forget", share=2 / 3)


def group_budget(forget_images: int) -> float:
    """The image passes the group candidates may use: GROUP_PASSES over the forget set, and
    their checks."""
    steps = GROUP_PASSES * steps_per_pass(forget_images, BATCH)
    return steps * BATCH * first_rung().cost_per_image / (1 - CHECK_SHARE)


def second_rung(first: Trial, target: Target) -> Candidate:
    """After the first rung left the group above the ceiling: the same at a third of its learning
    rate where its closest state lost more retention than the site's criteria allow (else
    RETENTION_SLACK; the lesions suite: 1e-3 collapses it, 3e-4 does not), else at three times it
    (a model of 8x8 digits needs 3e-3)."""
    closest = min(first.checks, key=lambda c: c["distance"], default=None)
    lost = math.inf
    if closest is not None and not first.error:
        lost = target.retention_lost(reading_of(closest))
    slack = RETENTION_SLACK if target.retention_slack is None else target.retention_slack
    gentler = lost > slack
    settings = dict(first.candidate.settings)
    settings["lr"] *= 1 / 3 if gentler else 3
    name = "psg (group, gentler)" if gentler else "psg (group, bolder)"
    return Candidate(name, "psg", settings, 4.0, "forget")
