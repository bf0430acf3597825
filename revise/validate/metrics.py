"""Accuracies with bootstrap 95% intervals (overall, per group, paired change), agreement between
two models, confusion matrices, and the distances to a retrained reference.

The bootstrap here is exact and cheap: resampling n outcomes that are 0/1 with replacement gives
a count that is Binomial(n, p_hat), and resampling paired outcomes whose difference is -1/0/+1
gives category counts that are Multinomial(n, shares). Drawing those counts directly is the same
distribution as resampling indices, in O(draws) instead of O(draws * n).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

DRAWS = 4000  # bootstrap resamples per estimate
SEED = 20231  # fixed: a report is reproducible to the last digit


@dataclass(frozen=True)
class Estimate:
    """A proportion (or a difference of two) on ``n`` samples with its 95% bootstrap interval."""

    n: int
    value: float
    ci95: tuple[float, float] | None

    def as_dict(self) -> dict:
        ci = [round(self.ci95[0], 4), round(self.ci95[1], 4)] if self.ci95 else None
        return {"n": self.n, "value": round(self.value, 4), "ci95": ci}


def _percentiles(draws: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def proportion(hits: np.ndarray) -> Estimate:
    """Mean of 0/1 outcomes with the percentile bootstrap interval."""
    hits = np.asarray(hits, dtype=bool)
    n = int(hits.size)
    if n == 0:
        return Estimate(0, float("nan"), None)
    p = float(hits.mean())
    draws = np.random.default_rng(SEED).binomial(n, p, size=DRAWS) / n
    return Estimate(n, p, _percentiles(draws))


def paired_change(after: np.ndarray, before: np.ndarray) -> Estimate:
    """Mean of ``after - before`` over paired 0/1 outcomes (e.g. candidate minus original
    correctness on the same images), with the paired bootstrap interval."""
    diff = np.asarray(after, dtype=np.int8) - np.asarray(before, dtype=np.int8)
    n = int(diff.size)
    if n == 0:
        return Estimate(0, float("nan"), None)
    shares = [float((diff == d).mean()) for d in (-1, 0, 1)]
    counts = np.random.default_rng(SEED).multinomial(n, shares, size=DRAWS)
    draws = (counts[:, 2] - counts[:, 0]) / n
    return Estimate(n, float(diff.mean()), _percentiles(draws))


def group_values(rows: pd.DataFrame, column: str) -> np.ndarray:
    """The column as stripped text ('' for empty), the form groups are named and matched in."""
    return rows[column].astype("string").fillna("").str.strip().to_numpy(dtype=object)


def group_name(column: str, value: str, class_names: Sequence[str] | None) -> str:
    """A label group is shown by its class name; every other group by its value."""
    if column == "label" and class_names is not None and value.lstrip("-").isdigit():
        index = int(value)
        if 0 <= index < len(class_names):
            return str(class_names[index])
    return value


def by_group(
    hits: np.ndarray,
    rows: pd.DataFrame,
    column: str,
    class_names: Sequence[str] | None = None,
) -> dict[str, Estimate]:
    """{group name: proportion of hits in the group} for one manifest column, sorted by value
    (labels numerically)."""
    values = group_values(rows, column)
    unique = set(values)
    numeric = all(v.lstrip("-").isdigit() for v in unique)
    order = sorted(unique, key=int) if numeric and unique else sorted(unique)
    hits = np.asarray(hits, dtype=bool)
    return {group_name(column, v, class_names): proportion(hits[values == v]) for v in order}


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: rows are true classes, columns predicted classes."""
    flat = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def distance_to_reference(
    retain: float, forget: float, retain_reference: float, forget_reference: float
) -> float:
    """The seed paper's D = sqrt((RA - RA_ref)^2 + (FA - FA_ref)^2), accuracies in [0, 1]."""
    return float(np.hypot(retain - retain_reference, forget - forget_reference))


def average_gap(method: dict[str, float], reference: dict[str, float]) -> float:
    """SalUn's Avg. Gap: mean |method - reference| over UA, RA, TA and MIA-Efficacy, in percent
    (the four keys ``ua``, ``ra``, ``ta``, ``mia_efficacy``, each a fraction)."""
    keys = ("ua", "ra", "ta", "mia_efficacy")
    return float(np.mean([abs(method[k] - reference[k]) for k in keys]) * 100.0)
