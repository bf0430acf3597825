"""Hyperparameter bounds, declared beside each field and checked in one place.

Every field of a method's config dataclass but a true/false switch is declared with
:func:`setting`: its default and the values it may take, an interval of finite numbers written
as in mathematics (``"[0, 1]"``, ``"(0, inf)"``: brackets include the end, parentheses leave it
out) or a tuple of choices. :func:`check_settings` refuses a config with any field outside its
bound, naming the field, the bound and the value; ``make_config`` and ``unlearn`` call it, so a
value given on the command line, in a recipe, in a sweep grid or in Python meets the same check.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from revise.errors import UsageError

BOUND = "bound"  # the key of a field's metadata that holds its Bound


@dataclass(frozen=True)
class Bound:
    """The values a hyperparameter may take: finite numbers from ``low`` to ``high`` (each end
    included unless open), or one of ``choices``."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    hint: str = ""  # what to do instead, when the bound alone does not say

    @classmethod
    def interval(cls, text: str, hint: str = "") -> Bound:
        """``"[1, inf)"`` and the like; a malformed text is a programming error."""
        low, high = (float(end) for end in text[1:-1].split(","))
        return cls(low, high, text[0] == "(", text[-1] == ")", hint=hint)

    def admits(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def one_sided(self) -> bool:
        return not self.choices and math.isinf(self.high)

    def __str__(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low == self.high:
            return f"{self.low:g}"
        if self.one_sided():
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


def setting(default: Any, bound: str | Sequence[str], *, hint: str = "") -> Any:
    """A config field: its default and its bound, an interval text or a tuple of choices."""
    if isinstance(bound, str):
        declared = Bound.interval(bound, hint)
    else:
        declared = Bound(choices=tuple(bound), hint=hint)
    return dataclasses.field(default=default, metadata={BOUND: declared})


def bound_of(field: dataclasses.Field) -> Bound | None:
    return field.metadata.get(BOUND)


def check_settings(method: str, config: Any) -> None:
    """Refuse ``config`` (a UsageError) when a field is outside its bound; every such field is
    named with its bound and its value, with the field's hint where it declares one."""
    wrong: list[str] = []
    for field in dataclasses.fields(config):
        bound, value = bound_of(field), getattr(config, field.name)
        if bound is None or bound.admits(value):
            continue
        finite = " and finite" if bound.one_sided() and isinstance(field.default, float) else ""
        hint = f" ({bound.hint})" if bound.hint else ""
        wrong.append(f"{field.name} must be {bound}{finite}, not {value!r}{hint}")
    if wrong:
        raise UsageError(f"{method}: " + "; ".join(wrong))
