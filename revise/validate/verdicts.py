"""Verdicts: each gate judged on the measured estimates, per group where it asks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from revise._validation_record import Membership, Parity, ReferenceDistance
from revise.errors import DataError
from revise.validate import metrics as m
from revise.validate.criteria import Gate
from revise.validate.gate_metrics import METRICS
from revise.validate.measure import Outputs
from revise.validate.metrics import Estimate, group_values


def label_value(value: str, class_names: Sequence[str]) -> str:
    """A label given by class name or index, as the index text the manifest holds."""
    if value in class_names and not value.lstrip("-").isdigit():
        return str(list(class_names).index(value))
    return value


def where_mask(gate: Gate, rows: pd.DataFrame, class_names: Sequence[str]) -> pd.Series:
    """Rows of a set that match every ``where`` pair of the gate."""
    keep = pd.Series(True, index=rows.index)
    for column, value in gate.where:
        wanted = label_value(value, class_names) if column == "label" else value
        keep &= group_values(rows, column) == wanted
    return keep


@dataclass(frozen=True)
class Verdict:
    gate: Gate
    group: dict[str, str] | None  # the where pairs and, for per-gates, the group judged
    estimate: Estimate
    threshold: tuple[float, ...]
    threshold_text: str  # e.g. "original 0.972 - 0.02"
    judged_on: str
    judged_value: float | tuple[float, float]
    passed: bool
    margin: float  # > 0: passed by this much; < 0: failed by this much
    unit: str  # what n counts: images, members+non-members, ...

    def message(self) -> str:
        value = self.judged_value
        shown = f"[{value[0]:.3f}, {value[1]:.3f}]" if isinstance(value, tuple) else f"{value:.4g}"
        what = {
            "estimate": self.gate.metric,
            "lower_bound": "lower bound",
            "upper_bound": "upper bound",
            "interval": "interval",
        }[self.judged_on]
        if self.passed:
            return f"{what} {shown} meets {self.threshold_text} on {self.estimate.n} {self.unit}"
        return (
            f"{what} {shown} misses {self.threshold_text} by {abs(self.margin):.4g} "
            f"on {self.estimate.n} {self.unit}"
        )

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        threshold: Any = self.threshold[0] if len(self.threshold) == 1 else list(self.threshold)
        judged = self.judged_value
        return {
            "name": self.gate.name,
            "metric": self.gate.metric,
            "set": self.gate.set,
            "group": self.group,
            "rule": self.gate.rule,
            "threshold": _round(threshold),
            "value": _round(self.estimate.value),
            "interval": _round(list(self.estimate.ci95)) if self.estimate.ci95 else None,
            "judged_on": self.judged_on,
            "judged_value": _round(list(judged) if isinstance(judged, tuple) else judged),
            "n": self.estimate.n,
            "passed": self.passed,
            "margin": _round(self.margin),
            "message": self.message(),
        }


def _round(value: Any) -> Any:
    if isinstance(value, list):
        return [_round(v) for v in value]
    return round(float(value), 6) if value is not None and math.isfinite(value) else value


def judge(
    gate: Gate,
    estimate: Estimate,
    baseline_values: Mapping[str, float],
    *,
    group: dict[str, str] | None = None,
    unit: str = "images",
) -> Verdict:
    """The verdict of one gate on one measurement; ``baseline_values`` gives the original's /
    reference's value of the same measurement for relative thresholds."""
    resolved = [
        t.offset + (baseline_values[t.baseline] if t.baseline else 0.0) for t in gate.thresholds
    ]
    texts = [f"{value:.4g}" for value in resolved]
    relative = sorted({t.baseline for t in gate.thresholds if t.baseline})
    note = (
        f" [{' .. '.join(str(t) for t in gate.thresholds)}; "
        + ", ".join(f"{b} = {baseline_values[b]:.4g}" for b in relative)
        + "]"
        if relative
        else ""
    )
    interval = estimate.ci95 if gate.judge == "interval" and estimate.ci95 else None
    value = estimate.value
    if gate.operator == "at_most":
        judged_on, judged = ("upper_bound", interval[1]) if interval else ("estimate", value)
        margin = resolved[0] - judged
        text = f"at most {texts[0]}{note}"
    elif gate.operator == "at_least":
        judged_on, judged = ("lower_bound", interval[0]) if interval else ("estimate", value)
        margin = judged - resolved[0]
        text = f"at least {texts[0]}{note}"
    else:
        low, high = resolved
        judged_on = "interval" if interval else "estimate"
        judged = (interval[0], interval[1]) if interval else value
        lo, hi = (judged, judged) if not isinstance(judged, tuple) else judged
        margin = min(lo - low, high - hi)
        text = f"between {texts[0]} and {texts[1]}{note}"
    passed = bool(math.isfinite(margin) and margin >= -1e-12)
    return Verdict(
        gate=gate,
        group=group,
        estimate=estimate,
        threshold=tuple(resolved),
        threshold_text=text,
        judged_on=judged_on,
        judged_value=judged,
        passed=passed,
        margin=float(margin),
        unit=unit,
    )


@dataclass
class GateContext:
    """What the gates are judged on: every model's outputs on every set, the membership
    attacks, the distance to the reference, the ONNX parity and the outputs of the fp32 and
    INT8 ONNX models on the held-out sets (None: not measured)."""

    outputs: Mapping[str, Outputs]
    sets: Mapping[str, Any]
    class_names: list[str]
    mia: Mapping[str, Membership]
    reference: ReferenceDistance | None
    parity: Parity | None
    int8: tuple[Outputs, Outputs] | None = None  # (fp32, int8): revise.validate.int8

    def verdicts(self, gate: Gate) -> list[Verdict]:
        if METRICS[gate.metric].per_set:
            return self._per_set(gate)
        estimate, baselines, unit = self._whole_run(gate)
        return [judge(gate, estimate, baselines, unit=unit)]

    def _per_set(self, gate: Gate) -> list[Verdict]:
        rows: pd.DataFrame = self.sets[gate.set].rows
        base = where_mask(gate, rows, self.class_names).to_numpy()
        shown = {c: m.group_name(c, v, self.class_names) for c, v in gate.where}
        groups: list[tuple[dict[str, str] | None, np.ndarray]] = [(shown or None, base)]
        if gate.per:
            values = m.group_values(rows, gate.per)
            groups = [
                (
                    {**shown, gate.per: m.group_name(gate.per, v, self.class_names)},
                    base & (values == v),
                )
                for v in sorted(set(values[base]))
            ]
        verdicts = []
        for group, mask in groups:
            estimate, baselines = self._measure(gate, mask)
            verdicts.append(judge(gate, estimate, baselines, group=group))
        return verdicts

    def _measure(self, gate: Gate, mask: np.ndarray) -> tuple[Estimate, dict[str, float]]:
        s = gate.set
        if METRICS[gate.metric].requires == "int8":
            assert self.int8 is not None  # check_models rejected INT8 gates without the variant
            fp32, int8 = self.int8
            if gate.metric == "int8_accuracy_change":
                return m.paired_change(int8.correct(s)[mask], fp32.correct(s)[mask]), {}
            return m.proportion(int8.predicted(s)[mask] == fp32.predicted(s)[mask]), {}
        candidate = self.outputs["candidate"]
        original = self.outputs.get("original")
        if gate.metric == "accuracy":
            baselines = {
                name: m.proportion(out.correct(s)[mask]).value
                for name, out in self.outputs.items()
                if name != "candidate"
            }
            return m.proportion(candidate.correct(s)[mask]), baselines
        if original is None:
            raise DataError(f"{gate.metric} compares with the original model: pass --original")
        if gate.metric == "accuracy_change":
            return m.paired_change(candidate.correct(s)[mask], original.correct(s)[mask]), {}
        same = candidate.predicted(s)[mask] == original.predicted(s)[mask]
        return m.proportion(same), {}

    def _whole_run(self, gate: Gate) -> tuple[Estimate, dict[str, float], str]:
        metric = gate.metric
        if metric in ("loss_mia", "mia_efficacy"):
            key = "mean" if metric == "loss_mia" else "value"  # loss-MIA: mean over splits
            values = {}
            for name, entry in self.mia.items():
                attack = getattr(entry, metric)
                if attack is not None and getattr(attack, key) is not None:
                    values[name] = getattr(attack, key)
            if "candidate" not in values:
                attack = getattr(self.mia.get("candidate"), metric, None)
                why = attack.error if attack is not None else None
                raise DataError(
                    f"gate {gate.name!r}: {metric} cannot be measured: {why or 'no forget set'}"
                )
            attack = getattr(self.mia["candidate"], metric)
            n = 2 * attack.n_per_group if metric == "loss_mia" else len(self.sets["forget"])
            unit = "members + non-members" if metric == "loss_mia" else "forget-set images"
            return Estimate(n, values.pop("candidate"), None), values, unit
        if metric in ("distance_to_reference", "avg_gap"):
            key = "distance" if metric == "distance_to_reference" else "avg_gap"
            value = getattr(self.reference, key) if self.reference is not None else None
            if value is None:
                raise DataError(
                    f"gate {gate.name!r}: {metric} needs forget, retain and held-out retained "
                    "images and the reference's MIA-Efficacy"
                )
            n = len(self.sets["forget"]) + len(self.sets["retain"])
            return Estimate(n, float(value), None), {}, "forget + retain images"
        assert self.parity is not None  # check_inputs rejected parity gates without --onnx
        key = metric.removeprefix("parity_")
        return Estimate(self.parity.n, getattr(self.parity, key), None), {}, "held-out images"
