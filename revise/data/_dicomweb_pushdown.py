"""The part of a selection a QIDO-RS search can do, for :mod:`revise.data.dicomweb`.

Pushed down to the server (as QIDO matching keys) are only the conjuncts of a top-level ``and``
that every DICOMweb server supports and that match a superset of what the local selection keeps:
``study_uid`` / ``series_uid`` / ``sop_instance_uid`` and ``modality`` with ``==`` or ``in``
(one query per value; servers may match text case-insensitively, which only widens the search)
and ``study_date`` compared with a date (a DICOM date range). Nothing else, and never
``patient`` (the manifest holds a keyed hash, the server the clear ID). Equipment attributes such
as ``device`` are optional matching keys that servers may reject or match differently: Orthanc
answers ``ManufacturerModelName=Borealis CR-7`` with no series although two hold exactly that
value (its wildcard matches find them), so pushing ``device`` down would drop data silently. It
is filtered locally.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterator, Mapping
from typing import Any

from revise.data.select import And, Compare, Expr, InList, parse

STUDY_UID, SERIES_UID, SOP_UID = "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"
# Manifest column -> QIDO matching key, for the columns whose equality is pushed down.
_EQUALITY_KEYS = {
    "study_uid": STUDY_UID,
    "series_uid": SERIES_UID,
    "sop_instance_uid": SOP_UID,
    "modality": "Modality",
}
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_MODALITY = re.compile(r"[A-Z0-9_ ]{1,16}")  # CS characters; no QIDO wildcard * or ?
MAX_QUERIES = 16  # pushed-down `in` lists multiply the queries; beyond this, filter locally


def pushdown(expr: str | Expr | None) -> list[dict[str, str]] | None:
    """The QIDO searches that together find every instance ``expr`` can match.

    One dict of matching keys per search (their results are united); ``None`` when nothing can
    be pushed (search everything); ``[]`` when the pushed conjuncts contradict each other (no
    instance can match, so there is nothing to search).
    """
    if expr is None:
        return None
    node = parse(expr) if isinstance(expr, str) else expr
    choices: dict[str, set[str]] = {}  # matching key -> any of these values
    low, high = dt.date.min, dt.date.max
    for part in _conjuncts(node):
        if (equal := _equality(part)) is not None:
            name, values = equal
            choices[name] = choices[name] & values if name in choices else values
        elif (span := _date_span(part)) is not None:
            low, high = max(low, span[0]), min(high, span[1])
    if low > high or any(not values for values in choices.values()):
        return []
    while choices and _product(choices) > MAX_QUERIES:  # keep the query count bounded
        del choices[max(choices, key=lambda name: len(choices[name]))]
    fixed: dict[str, str] = {}
    if (low, high) != (dt.date.min, dt.date.max):
        fixed["StudyDate"] = _dicom_range(low, high)
    if not choices and not fixed:
        return None
    names = sorted(choices)
    return [
        {**dict(zip(names, values, strict=True)), **fixed}
        for values in itertools.product(*(sorted(choices[name]) for name in names))
    ]


def _conjuncts(node: Expr) -> Iterator[Expr]:
    if isinstance(node, And):
        for child in node.operands:
            yield from _conjuncts(child)
    else:
        yield node


def _equality(node: Expr) -> tuple[str, set[str]] | None:
    """``column == "v"`` or ``column in ["v", ...]`` on a pushable column: (key, values)."""
    if isinstance(node, Compare) and node.op == "==":
        values: tuple[Any, ...] = (node.value,)
    elif isinstance(node, InList) and not node.negated:
        values = node.values
    else:
        return None
    name = _EQUALITY_KEYS.get(node.column)
    if name is None or not values:
        return None
    pattern = _MODALITY if name == "Modality" else _UID
    # A value the local comparison could match but QIDO might read otherwise (a wildcard, a
    # number, padding): keep the whole conjunct local.
    if not all(isinstance(v, str) and pattern.fullmatch(v) and v == v.strip() for v in values):
        return None
    return name, set(values)


def _date_span(node: Expr) -> tuple[dt.date, dt.date] | None:
    """``study_date <op> YYYY-MM-DD`` as the inclusive span of dates it keeps."""
    if not (isinstance(node, Compare) and node.column == "study_date"):
        return None
    value, op = node.value, node.op
    if type(value) is not dt.date:  # text, numbers and datetimes compare differently locally
        return None
    try:
        if op == "==":
            return value, value
        if op in (">=", ">"):
            return value + dt.timedelta(days=op == ">"), dt.date.max
        if op in ("<=", "<"):
            return dt.date.min, value - dt.timedelta(days=op == "<")
    except OverflowError:  # a strict comparison with the first or last representable date
        pass
    return None


def _dicom_range(low: dt.date, high: dt.date) -> str:
    if low == high:
        return low.strftime("%Y%m%d")
    start = "" if low == dt.date.min else low.strftime("%Y%m%d")
    end = "" if high == dt.date.max else high.strftime("%Y%m%d")
    return f"{start}-{end}"


def _product(choices: Mapping[str, set[str]]) -> int:
    n = 1
    for values in choices.values():
        n *= len(values)
    return n
