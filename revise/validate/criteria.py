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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from revise._io.text import not_utf8
from revise._schema import Problem, fail, problems
from revise.data.manifest import FORBIDDEN_COLUMNS
from revise.errors import UsageError
from revise.validate.gate_metrics import METRICS, MetricSpec

SETS = ("forget", "retain", "heldout_forget", "heldout_retain")
OPERATORS = ("at_most", "at_least", "between")
MAX_BYTES = 1 << 20  # a criteria file is a few lines: anything larger is another file


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
        if spec.sets is not None and set_name not in spec.sets:
            sets = " and ".join(spec.sets)
            raise fail(f"{metric} is measured on {sets}, not {set_name}", f"set: {spec.sets[-1]}")
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
