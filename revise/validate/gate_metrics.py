"""The metrics a gate may judge: what each measures (the report's definitions), on which sets
and against which baselines, what it needs of the data, and the values it can take.

A new metric is declared here, measured in :mod:`revise.validate.measure` and judged in
:class:`revise.validate.verdicts.GateContext`; the criteria file (:mod:`revise.validate.criteria`)
accepts it from then on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from revise.validate.mia import MIN_PER_GROUP

BASELINES = ("original", "reference")
HELDOUT_SETS = ("heldout_forget", "heldout_retain")


@dataclass(frozen=True)
class MetricSpec:
    """What a gate may ask of a metric."""

    definition: str
    per_set: bool  # measured on one of the four sets (and its groups), with a 95% interval
    baselines: tuple[str, ...] = ()  # models a threshold may be relative to
    requires: str | None = None  # "reference", "onnx", "int8": an input it cannot do without
    default_set: str | None = None
    needs: tuple[str, ...] = ()  # sets that must hold images (the whole-run metrics)
    min_images: int = 1  # in each of ``needs``: the attack models need both sides in a split
    # The values the metric can take: a threshold outside makes a gate that cannot fail (or pass)
    scale: tuple[float, float] = (0.0, 1.0)
    sets: tuple[str, ...] | None = None  # the sets it is measured on (None: all four)


METRICS: dict[str, MetricSpec] = {
    "accuracy": MetricSpec(
        "share of images whose predicted class is the label; 95% percentile bootstrap interval",
        per_set=True,
        baselines=BASELINES,
    ),
    "accuracy_change": MetricSpec(
        "candidate accuracy minus the original model's on the same images; paired bootstrap "
        "95% interval",
        per_set=True,
        scale=(-1.0, 1.0),
    ),
    "agreement": MetricSpec(
        "share of images on which candidate and original predict the same class; 95% bootstrap "
        "interval",
        per_set=True,
        default_set="heldout_retain",
    ),
    "loss_mia": MetricSpec(
        "loss-MIA (seed paper, NeurIPS 2023 kit): held-out accuracy of a logistic regression on "
        "per-sample cross-entropy (clipped to [-100, 100]) telling the forget set (members) from "
        "held-out images of the forgotten group (non-members; all held-out images when there are "
        "none), groups subsampled to equal size, StratifiedShuffleSplit(5, test_size=0.1); "
        "0.5 = indistinguishable",
        per_set=False,
        baselines=BASELINES,
        needs=("forget", "heldout_forget|heldout_retain"),
        min_images=MIN_PER_GROUP,
    ),
    "mia_efficacy": MetricSpec(
        "MIA-Efficacy (SalUn): SVC(C=3, gamma='auto', rbf) on the true-class probability of the "
        "first N_test retain images (members) vs the N_test held-out retained images "
        "(non-members); share of the forget set predicted non-member",
        per_set=False,
        baselines=BASELINES,
        needs=("forget", "retain", "heldout_retain"),
        min_images=MIN_PER_GROUP,
    ),
    "distance_to_reference": MetricSpec(
        "seed paper's D = sqrt((RA - RA_ref)^2 + (FA - FA_ref)^2) against the retrained reference",
        per_set=False,
        requires="reference",
        needs=("forget", "retain", "heldout_retain"),
        scale=(0.0, math.sqrt(2.0)),  # two accuracy differences
    ),
    "avg_gap": MetricSpec(
        "SalUn's Avg. Gap: mean |candidate - reference| over UA, RA, TA and MIA-Efficacy, percent",
        per_set=False,
        requires="reference",
        needs=("forget", "retain", "heldout_retain"),
        min_images=MIN_PER_GROUP,
        scale=(0.0, 100.0),
    ),
    "parity_max_abs_diff": MetricSpec(
        "largest |logit difference| between the ONNX model in ONNX Runtime and the candidate in "
        "PyTorch on held-out images",
        per_set=False,
        requires="onnx",
        scale=(0.0, math.inf),
    ),
    "parity_label_agreement": MetricSpec(
        "share of held-out images on which the ONNX model and the candidate predict the same class",
        per_set=False,
        requires="onnx",
    ),
    "int8_label_agreement": MetricSpec(
        "share of images on which the INT8 variant (model.int8.onnx) and the fp32 ONNX model "
        "predict the same class, both in ONNX Runtime (CPU); 95% bootstrap interval",
        per_set=True,
        requires="int8",
        default_set="heldout_retain",
        sets=HELDOUT_SETS,
    ),
    "int8_accuracy_change": MetricSpec(
        "INT8 variant's accuracy minus the fp32 ONNX model's on the same images, both in ONNX "
        "Runtime (CPU); paired bootstrap 95% interval",
        per_set=True,
        requires="int8",
        default_set="heldout_retain",
        scale=(-1.0, 1.0),
        sets=HELDOUT_SETS,
    ),
}
