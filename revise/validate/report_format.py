"""How the report page says things: the numbers, intervals and digests of its tables (the
templates' filters), the names of sets and models, their order, and each model's colour."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from revise.validate.figure_style import SERIES_COLOURS

MODEL_ORDER = ("original", "candidate", "reference")
SET_ORDER = ("forget", "retain", "heldout_forget", "heldout_retain")
SET_TITLES = {
    "forget": "forget set",
    "retain": "retain set",
    "heldout_forget": "held-out, forget selection",
    "heldout_retain": "held-out, retained",
    "heldout": "held-out images",
}
MODEL_TITLES = {
    "original": "original (deployed)",
    "candidate": "candidate (revised)",
    "reference": "reference (retrained)",
}
JUDGED_ON = {
    "estimate": "estimate",
    "lower_bound": "lower bound",
    "upper_bound": "upper bound",
    "interval": "interval",
}
# Model colours stay fixed across every figure, whichever models are present.
MODEL_COLOURS = dict(zip(MODEL_ORDER, SERIES_COLOURS, strict=False))
DIGEST_CHARS = 12


def is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def num(x: object, digits: int = 3, *, signed: bool = False) -> str:
    """A number for a table: ``digits`` decimals, tiny values (parity diffs) in e-notation,
    integers with thousands separators, a list as ``[a, b]``; missing values as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(num(v, digits, signed=signed) for v in x) + "]"
    if isinstance(x, int):
        return f"{x:+,}" if signed else f"{x:,}"
    if not isinstance(x, float):
        return str(x)
    if not math.isfinite(x):
        return "n/a"
    sign = "+" if signed else ""
    if x != 0 and abs(x) < 0.5 * 10**-digits:
        return f"{x:{sign}.2g}"
    return f"{x:{sign}.{digits}f}"


def ci(interval: object, digits: int = 3) -> str:
    """A 95% interval as ``lo – hi``; anything else as an em dash."""
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return f"{num(interval[0], digits)} – {num(interval[1], digits)}"
    return "—"


def short_digest(value: object) -> str:
    """A digest shortened for reading (the template keeps the full value in the tooltip)."""
    text = str(value)
    return text if len(text) <= DIGEST_CHARS + 2 else text[:DIGEST_CHARS] + "…"


def set_title(name: str) -> str:
    return SET_TITLES.get(name, name.replace("_", " "))


def model_title(name: str) -> str:
    return MODEL_TITLES.get(name, name)


def models_in(mapping: Mapping[str, Any]) -> list[str]:
    """Model names in report order: original, candidate, reference, then any others."""
    known = [m for m in MODEL_ORDER if m in mapping]
    return known + [m for m in mapping if m not in MODEL_ORDER]


def colour(name: str, fallback_index: int) -> str:
    return MODEL_COLOURS.get(name, SERIES_COLOURS[fallback_index % len(SERIES_COLOURS)])
