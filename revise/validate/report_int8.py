"""The report page's INT8 section: the bundle's model.int8.onnx against its fp32 ONNX model on
each held-out set, overall and per group - accuracy of each, the change, and how often they
predict the same class (the report's ``int8``, :mod:`revise.validate.int8`). Left out of a
report without it. Its template is ``templates/sections/int8.html.j2``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from revise._validation_record import AccuracyTable, Int8Check, Proportion, ValidationReport
from revise.validate.report_format import SET_ORDER, set_title
from revise.validate.report_view import Estimate, Section


@dataclass(frozen=True)
class Int8Row:
    group: str  # "all images", or "column = group"
    n: Any
    fp32: Estimate | None  # accuracy of the fp32 ONNX model
    int8: Estimate | None  # accuracy of the INT8 variant
    change: Estimate | None  # INT8 minus fp32 accuracy
    agreement: Estimate | None  # share predicted the same class


@dataclass(frozen=True)
class Int8Set:
    title: str
    rows: list[Int8Row]


@dataclass(frozen=True)
class Int8View:
    path: Any
    graph_sha256: Any
    sets: list[Int8Set]


def _entry(table: AccuracyTable | None, column: str | None, group: str | None) -> Proportion | None:
    if table is None:
        return None
    if column is None:
        return table
    return (table.by.get(column) or {}).get(str(group))


def _rows(check: Int8Check, s: str) -> list[Int8Row]:
    tables = (
        check.accuracy.get("fp32", {}).get(s),
        check.accuracy.get("int8", {}).get(s),
        check.change.get(s),
        check.agreement.get(s),
    )
    keys: list[tuple[str | None, str | None]] = [(None, None)]
    for table in tables:
        for column, groups in (table.by if table is not None else {}).items():
            keys += [(column, g) for g in groups if (column, g) not in keys]
    rows = []
    for column, group in keys:
        cells = [Estimate.of(_entry(table, column, group)) for table in tables]
        n = next((cell.n for cell in cells if cell is not None), None)
        name = "all images" if column is None else f"{column} = {group}"
        rows.append(Int8Row(name, n, *cells))
    return rows


def int8_section(report: ValidationReport) -> Section | None:
    """The INT8 section, or None when the report has no INT8 measurements."""
    check = report.int8
    if check is None or not check.given():
        return None
    order = {s: i for i, s in enumerate(SET_ORDER)}
    names = {*check.agreement, *check.change, *(s for t in check.accuracy.values() for s in t)}
    sets = [
        Int8Set(set_title(s), _rows(check, s))
        for s in sorted(names, key=lambda s: order.get(s, len(order)))
    ]
    file = check.file
    view = Int8View(
        path=file.path if file is not None else None,
        graph_sha256=file.graph_sha256 if file is not None else None,
        sets=sets,
    )
    return Section("int8", "INT8 variant", view)
