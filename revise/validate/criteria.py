"""Acceptance criteria: a YAML file of gates, written before the revision is run, that a revised
model must pass (the way a predetermined change control plan works).

```yaml
gates:
  - name: retired device forgotten on held-out images
    metric: accuracy
    set: heldout_forget
    at_most: 0.45
  - name: every remaining device within 2 points of the original
    metric: accuracy
    set: heldout_retain
    per: device                 # one verdict per device
    at_least: original - 0.02   # a number, or original/reference +- a number
    judge: interval             # on the lower bound of the 95% interval
  - metric: loss_mia
    between: [0.45, 0.55]
```

Everything is checked before any image is decoded: unknown metrics, sets, keys and columns, a
group that does not exist in its set, a threshold relative to a reference that was not given.
"""

from __future__ import annotations

import hashlib
import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from revise._io import not_utf8
from revise._schema import Problem, fail, problems
from revise.data.manifest import FORBIDDEN_COLUMNS
from revise.errors import UsageError
from revise.registry import did_you_mean
from revise.validate.metrics import Estimate, group_values
from revise.validate.mia import MIN_PER_GROUP

SETS = ("forget", "retain", "heldout_forget", "heldout_retain")
BASELINES = ("original", "reference")
OPERATORS = ("at_most", "at_least", "between")
MAX_BYTES = 1 << 20  # a criteria file is a few lines: anything larger is another file


@dataclass(frozen=True)
class MetricSpec:
    """What a gate may ask of a metric."""

    definition: str
    per_set: bool  # measured on one of SETS (and its groups), with a 95% interval
    baselines: tuple[str, ...] = ()  # models a threshold may be relative to
    requires: str | None = None  # "reference" or "onnx": an input the metric cannot do without
    default_set: str | None = None
    needs: tuple[str, ...] = ()  # sets that must hold images (the whole-run metrics)
    min_images: int = 1  # in each of ``needs``: the attack models need both sides in a split
    # The values the metric can take: a threshold outside makes a gate that cannot fail (or pass)
    scale: tuple[float, float] = (0.0, 1.0)


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
}

# fullmatch on stripped text: a leading or trailing \s* tried at every start is quadratic.
_RELATIVE = re.compile(r"(original|reference)\s*(?:([+-])\s*([0-9.]+(?:e-?[0-9]+)?))?")


@dataclass(frozen=True)
class Threshold:
    """A number, or a baseline model's value of the same measurement plus an offset."""

    offset: float
    baseline: str | None = None

    def __str__(self) -> str:
        if self.baseline is None:
            return f"{self.offset:g}"
        if self.offset == 0:
            return self.baseline
        sign = "+" if self.offset > 0 else "-"
        return f"{self.baseline} {sign} {abs(self.offset):g}"


@dataclass(frozen=True)
class Gate:
    name: str
    metric: str
    set: str | None
    where: tuple[tuple[str, str], ...]  # (column, value) pairs every image must match
    per: str | None  # a column: one verdict per group
    operator: str  # at_most | at_least | between
    thresholds: tuple[Threshold, ...]  # one, or two for between
    judge: str  # estimate | interval

    @property
    def rule(self) -> str:
        if self.operator == "between":
            return f"between {self.thresholds[0]} and {self.thresholds[1]}"
        return f"{self.operator} {self.thresholds[0]}"

    def baselines(self) -> set[str]:
        return {t.baseline for t in self.thresholds if t.baseline}


@dataclass(frozen=True)
class Criteria:
    gates: tuple[Gate, ...]
    source: str  # the file (or "<string>")
    sha256: str  # of the file's bytes, recorded with the results


def load_criteria(path: str | Path) -> Criteria:
    """Parse and check a criteria file; every mistake is a UsageError naming the gate."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block, a device never end
        raise UsageError(
            f"criteria file {path} is not a regular file", hint="pass the YAML file of gates"
        )
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read criteria file {path}: {exc.strerror}") from exc
    if len(raw) > MAX_BYTES:
        raise UsageError(
            f"criteria file {path} is over {MAX_BYTES >> 20} MiB: not a file of gates",
            hint="pass the YAML file of gates",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path, "criteria file", data=raw) from None
    return parse_criteria(text, source=str(path))


def _text(value: Any) -> Any:
    """A YAML scalar as text (a column or group written as a number or date); lists and
    mappings stay what they are, and are refused."""
    return value if isinstance(value, str | list | dict) or value is None else str(value)


Text = Annotated[str, BeforeValidator(_text)]


class _File(BaseModel):
    """A criteria file: its gates, each checked on its own (:class:`_GateSpec`)."""

    model_config = ConfigDict(extra="forbid")

    gates: list[Any] = Field(min_length=1, description="the gates, - metric: ... each")
    version: Any = None


class _GateSpec(BaseModel):
    """One gate as written; the rules between its keys, which depend on the metric, are
    checked once its keys are each valid."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    metric: Literal[tuple(METRICS)] = Field(  # type: ignore[valid-type]
        description="what is measured: " + ", ".join(METRICS)
    )
    set: Literal[SETS] | None = None  # type: ignore[valid-type]
    where: dict[Text, Text] = Field(default_factory=dict)  # column: value, e.g. {device: X}
    per: Text | None = None  # a column: one verdict per group
    judge: Literal["estimate", "interval"] = "estimate"
    at_most: Any = None
    at_least: Any = None
    between: tuple[Any, Any] | None = None  # [low, high]

    _gate: Gate | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _judgeable(self) -> _GateSpec:
        self._gate = self._judged()
        return self

    def gate(self) -> Gate:
        assert self._gate is not None  # made by the validator
        return self._gate

    def _judged(self) -> Gate:
        """The gate, or the first rule between its keys it breaks (a PydanticCustomError)."""
        spec, metric = METRICS[self.metric], self.metric
        set_name = self.set or spec.default_set
        if spec.per_set and set_name is None:
            raise fail(f"{metric} is measured on a set: give `set:`, one of {', '.join(SETS)}")
        if not spec.per_set and (self.set or self.where or self.per is not None):
            raise fail(f"{metric} is measured on the whole run: no set/where/per")
        operators = [op for op in OPERATORS if getattr(self, op) is not None]
        if len(operators) != 1:
            raise fail("give exactly one of at_most, at_least, between")
        operator = operators[0]
        given = getattr(self, operator)
        field = f"`{operator}:`"
        values = list(given) if operator == "between" else [given]
        thresholds = tuple(_threshold(v, spec, metric, field) for v in values)
        low, high = thresholds[0], thresholds[-1]
        if low.baseline == high.baseline and low.offset > high.offset:  # comparable only then
            raise fail(
                f"{field} [{low}, {high}] is reversed: the gate could never pass",
                f"write between: [{high}, {low}]",
            )
        if self.judge == "interval" and not spec.per_set:
            raise fail(f"{metric} has no interval: use judge: estimate")
        gate = Gate(
            name=self.name or "",
            metric=metric,
            set=set_name if spec.per_set else None,
            where=tuple((_column(c), v.strip()) for c, v in self.where.items()),
            per=_column(self.per) if self.per is not None else None,
            operator=operator,
            thresholds=thresholds,
            judge=self.judge,
        )
        return gate if gate.name else _named(gate)


def parse_criteria(text: str, *, source: str = "<string>") -> Criteria:
    """Parse and check criteria; every mistake of every gate is reported at once, each naming
    its gate and key, as one UsageError."""
    import yaml

    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a scalar PyYAML cannot convert
        raise UsageError(f"{source} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(doc, Mapping):
        found = "an empty file" if doc is None else f"a YAML {type(doc).__name__}"
        raise UsageError(
            f"{source}: expected a mapping with a list `gates:`, found {found}",
            hint="start the file with `gates:`",
        )
    try:
        items = _File.model_validate({str(k): v for k, v in doc.items()}).gates
    except ValidationError as exc:
        _refuse(source, [_said(source, p) for p in problems(exc, _File, **_STYLE)])
    gates: list[Gate] = []
    found: list[str] = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, Mapping):
            found.append(f"{source}, gate {number}: {_NOT_A_GATE}")
            continue
        try:
            gates.append(_GateSpec.model_validate(_keys(item)).gate())
        except ValidationError as exc:
            place = f"{source}, gate {number}"
            found += [_said(place, p) for p in problems(exc, _GateSpec, **_STYLE)]
    _refuse(source, found)
    return Criteria(tuple(gates), source, sha)


_NOT_A_GATE = "a gate is a mapping with `metric:` and one of at_most/at_least/between"


def _keys(item: Mapping) -> dict[str, Any]:
    """A gate's keys as text, so that a key YAML reads as a number is named, not crashed on."""
    return {str(k): v for k, v in item.items()}


def _where_key(loc: list[Any]) -> str:
    """A key of the file as written in YAML: `at_least:`, `where:` ... (none: the gate)."""
    return f"`{loc[0]}:`" + "".join(f"[{part!r}]" for part in loc[1:]) if loc else ""


_STYLE: dict[str, Any] = {"where": _where_key, "unknown": "key"}


def _said(place: str, problem: Problem) -> str:
    return _with_hint(f"{place}: {problem.text}", problem.hint)


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's error on one line: the problem and where (its own text spans several lines)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def _named(gate: Gate) -> Gate:
    scope = f" on {gate.set}" if gate.set else ""
    scope += "".join(f", {c}={v}" for c, v in gate.where)
    scope += f", per {gate.per}" if gate.per else ""
    from dataclasses import replace

    return replace(gate, name=f"{gate.metric}{scope} {gate.rule}")


def _column(name: str) -> str:
    from revise.data._select_tree import resolve_column

    column = resolve_column(name)
    if column in FORBIDDEN_COLUMNS:
        raise fail(f"column {name!r} cannot name a group: file paths may identify patients")
    return column


def _threshold(value: Any, spec: MetricSpec, metric: str, field: str) -> Threshold:
    """A finite number in the range of the metric, or a baseline model's value plus a finite
    offset no wider than that range; anything else cannot make a gate that may both pass and
    fail (NaN never passes, infinity never fails)."""
    if isinstance(value, bool):
        raise fail(f"{field} {value!r} is not a number")
    shown = reprlib.repr(value)  # an integer of 400 digits is shown shortened
    low, high = spec.scale
    scale = f"the range of {metric}, [{low:.4g}, {high:.4g}]"
    number = _number(value)
    if number is not None:
        if not math.isfinite(number):
            raise fail(f"{field} {shown} is not a finite number")
        if not low <= number <= high:
            raise fail(f"{field} {shown} is outside {scale}: {_vacuous(field, number > high)}")
        return Threshold(number)
    text = str(value)
    match = _RELATIVE.fullmatch(text.strip())
    offset = _number(match.group(3) or 0) if match else None
    if match is None or offset is None:
        raise fail(
            f"{field} {shown} is neither a number nor 'original|reference [+-] number'",
            "e.g. at_least: original - 0.02",
        )
    baseline, sign = match.group(1), match.group(2)
    if baseline not in spec.baselines:
        raise fail(f"{metric} cannot be compared with the {baseline} model")
    if not math.isfinite(offset):
        raise fail(f"{field} {shown}: the offset {offset:g} is not a finite number")
    if offset > high - low:
        raise fail(f"{field} {shown}: the offset {offset:g} is wider than {scale}")
    return Threshold(-offset if sign == "-" else offset, baseline)


def _vacuous(field: str, above: bool) -> str:
    """What a threshold beyond the metric's range (``above`` it or below) does to a gate."""
    if field == "`between:`":
        return "the metric can never be there"
    return f"the gate could never {'fail' if (field == '`at_most:`') == above else 'pass'}"


def _number(value: Any) -> float | None:
    """``value`` as a float (a YAML number, or text such as '0.5' or 'nan'), None if it is not
    one; an integer too large for a float is infinite."""
    try:
        return float(value)
    except OverflowError:
        return math.inf
    except (TypeError, ValueError):
        return None


# -- checks against the run's inputs (before anything is decoded) -------------------------------


def check_models(criteria: Criteria, have: Sequence[str]) -> None:
    """Reject gates that need a model not given (``have``: "original", "reference", "onnx")."""
    _refuse(criteria.source, _model_problems(criteria, have))


def check_inputs(
    criteria: Criteria,
    sets: Mapping[str, pd.DataFrame],
    *,
    have: Sequence[str],
    class_names: Sequence[str],
) -> None:
    """Reject gates the inputs cannot answer: a missing reference/ONNX model, an unknown column,
    a group absent from its set, an empty set. ``sets`` are the manifest rows of each set.
    Every problem is reported at once."""
    problems = _model_problems(criteria, have) + _set_problems(criteria, sets, class_names)
    _refuse(criteria.source, problems)


def check_sets(
    criteria: Criteria, sets: Mapping[str, pd.DataFrame], *, class_names: Sequence[str]
) -> None:
    """The part of :func:`check_inputs` about the rows of each set (run again after decoding,
    which can drop unreadable images)."""
    _refuse(criteria.source, _set_problems(criteria, sets, class_names))


# the inputs a problem may ask for, named as each shell names them (revise.errors)
GIVEN = ("reference", "onnx", "heldout")


def _refuse(source: str, problems: list[str]) -> None:
    """One error for all the problems: a site fixes its criteria or inputs in one go."""
    if len(problems) == 1:
        raise UsageError(problems[0], options=GIVEN)
    if problems:
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        raise UsageError(f"{source}: {len(problems)} problems: {listed}", options=GIVEN)


def _with_hint(message: str, hint: str | None) -> str:
    return f"{message} ({hint})" if hint else message


def _model_problems(criteria: Criteria, have: Sequence[str]) -> list[str]:
    problems = []
    for number, gate in enumerate(criteria.gates, 1):
        for need in sorted(({METRICS[gate.metric].requires} | gate.baselines()) - {None}):
            if need != "original" and need not in have:
                flag = "{reference} RETRAINED_MODEL" if need == "reference" else "{onnx} FILE"
                problems.append(
                    _with_hint(
                        f"{criteria.source}, gate {number} ({gate.name}) needs the {need} model",
                        f"pass {flag}",
                    )
                )
    return problems


def _set_problems(
    criteria: Criteria, sets: Mapping[str, pd.DataFrame], class_names: Sequence[str]
) -> list[str]:
    problems = []
    for number, gate in enumerate(criteria.gates, 1):
        label = f"{criteria.source}, gate {number} ({gate.name})"
        problems += _gate_set_problems(label, gate, sets, class_names)
    return problems


def _gate_set_problems(
    label: str, gate: Gate, sets: Mapping[str, pd.DataFrame], class_names: Sequence[str]
) -> list[str]:
    spec = METRICS[gate.metric]
    problems = []
    for alternatives in spec.needs:
        names = alternatives.split("|")
        if sum(len(sets.get(s, ())) for s in names) < spec.min_images:  # '|': pooled
            have_n = " + ".join(f"{len(sets.get(s, ()))} in {s}" for s in names)
            problems.append(
                f"{label}: {gate.metric} needs at least {spec.min_images} image(s) in "
                f"{alternatives.replace('|', ' or ')}; this data has {have_n}"
            )
    if gate.set is None:
        return problems
    rows = sets.get(gate.set)
    if rows is None or rows.empty:
        held = gate.set.startswith("heldout")
        hint = "held-out rows have split == heldout in the labels; or pass {heldout}"
        message = f"{label}: the set {gate.set} is empty for this data and selection"
        return [*problems, _with_hint(message, hint if held else None)]
    for column in [c for c, _ in gate.where] + ([gate.per] if gate.per else []):
        if column not in rows.columns:
            message = f"{label}: no manifest column {column!r}"
            problems.append(_with_hint(message, did_you_mean(column, list(rows.columns))))
    if not problems and not where_mask(gate, rows, class_names).any():
        wanted = ", ".join(f"{c}={v}" for c, v in gate.where)
        problems.append(f"{label}: no image of {gate.set} has {wanted}")
    return problems


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


# -- verdicts --------------------------------------------------------------------------------


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
