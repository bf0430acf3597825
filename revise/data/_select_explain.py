"""Explaining an empty selection (see :mod:`revise.data.select`): what each equality or ``in``
comparison met in the data, with close spellings of the values wanted, and never the values of
columns that may identify patients.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from pandas.api.types import is_datetime64_any_dtype, is_numeric_dtype

from revise.data._select_eval import _Context, _evaluate
from revise.data._select_tree import (
    PATIENT,
    Compare,
    Comparison,
    Expr,
    InFile,
    InList,
    _format,
    _leaves,
    _quote,
)
from revise.data.manifest import FORBIDDEN_COLUMNS
from revise.errors import SelectionError
from revise.phi import key_fingerprint

MAX_LISTED = 5


def _empty_error(node: Expr, ctx: _Context) -> SelectionError:
    notes = [note for leaf in _leaves(node) if (note := _explain(leaf, ctx))]
    message = f"selection matched 0 of {len(ctx.df)} rows: {_format(node, redact=True)}"
    if notes:
        message += "; " + "; ".join(notes)
    return SelectionError(message, hint="text values compare exactly and case-sensitively")


def _explain(leaf: Comparison, ctx: _Context) -> str | None:
    """What an equality or ``in`` comparison met in the data, or None for other comparisons."""
    is_equality = isinstance(leaf, Compare) and leaf.op == "=="
    if not (is_equality or (isinstance(leaf, (InList, InFile)) and not leaf.negated)):
        return None
    if leaf.column == PATIENT:
        return _explain_patient(leaf, ctx)
    column = ctx.df[leaf.column]
    if is_numeric_dtype(column.dtype) or is_datetime64_any_dtype(column.dtype):
        return None
    alone = int(_evaluate(leaf, ctx).sum())
    shown = _format(leaf, redact=True)  # e.g. a path or an @file may name a patient
    counts = ctx.view(leaf.column, "text").value_counts()
    if counts.empty:
        return f"{shown} matches {alone} rows; {leaf.column} is empty in every row"
    if leaf.column in _identifying_columns():  # file paths can carry patient names
        return (
            f"{shown} matches {alone} rows; {leaf.column} has {len(counts)} distinct "
            "values (not listed: they may identify patients)"
        )
    wanted = [v for v in ctx.values_of(leaf) if isinstance(v, str)]
    existing = _suggest(wanted, [str(v) for v in counts.index])
    listed = ", ".join(_quote(v) for v in existing)
    more = f" ({len(counts)} distinct)" if len(counts) > len(existing) else ""
    return f"{shown} matches {alone} rows; existing {leaf.column} values: {listed}{more}"


def _identifying_columns() -> set[str]:
    """Columns whose values an error never lists: ``path`` and every column a validation
    report refuses to group by."""
    return {"path", *FORBIDDEN_COLUMNS}


def _explain_patient(leaf: Comparison, ctx: _Context) -> str | None:
    """Counts only: neither the clear IDs nor their pseudonyms are worth showing."""
    wanted = {ctx.operand(PATIENT, v) for v in ctx.values_of(leaf)}
    present = set(ctx.view(PATIENT, "text").dropna())
    unmatched = sum(1 for v in wanted if v not in present)
    if not unmatched:
        return None
    note = f"{unmatched} of {len(wanted)} patient identifiers matched none"
    if ctx.hashed_any:
        note += f" (hashed with key {key_fingerprint(ctx.key)}; is it the key of this manifest?)"
    return note


def _suggest(wanted: Sequence[str], existing: Sequence[str]) -> list[str]:
    """Up to MAX_LISTED existing values: close spellings of the wanted ones, then the commonest."""
    candidates = list(existing[:2000])  # most common first; bounds the fuzzy matching cost
    by_lower: dict[str, str] = {}
    for value in candidates:
        by_lower.setdefault(value.lower(), value)
    picked: list[str] = []
    for value in wanted[:MAX_LISTED]:
        close = difflib.get_close_matches(value.lower(), list(by_lower), n=MAX_LISTED, cutoff=0.5)
        picked += [by_lower[c] for c in close if by_lower[c] not in picked]
    picked += [v for v in candidates if v not in picked]
    return picked[:MAX_LISTED]
