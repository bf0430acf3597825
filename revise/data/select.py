"""A small, safe selection language over manifest columns.

Users pick the rows to forget, retain or validate on with one-line expressions such as::

    device == "Cirrus 800 FA" and study_date < 2019-01-01
    label in [0, 2] and not (site == "north" or rows < 512)
    patient in @forget_patients.txt
    body_part ~= "^EYE" and split is not empty
    label == 3 and random(0.1, seed=3, by=patient)

The text is read by a hand-written tokenizer and recursive-descent parser into a tree of
:class:`Expr` nodes, which is then evaluated column by column into a boolean mask. Nothing is ever
handed to ``eval``, ``exec``, ``pandas.eval`` or ``DataFrame.query``: a selection can only name
columns and compare them with literal values, so a manifest or a list file can never run code.

Grammar (keywords ``and or not in is empty true false random seed by`` are case-insensitive;
``random`` followed by ``(`` is the function, so a column may still be called ``random``)::

    expr       := or
    or         := and ('or' and)*
    and        := not ('and' not)*
    not        := 'not' not | '(' expr ')' | random | comparison
    random     := 'random' '(' number [',' 'seed' '=' number] [',' 'by' '=' column] [','] ')'
                  (seed= and by= in either order)
    comparison := column op value
                | column ['not'] 'in' (list | file)
                | column 'is' ['not'] 'empty'
    op         := '==' | '!=' | '<' | '<=' | '>' | '>=' | '~='
    value      := "double" | 'single' quoted string  (\\" \\' and \\\\ are escapes; any other
                  backslash is kept, so regular expressions read naturally)
                | number (int or float, may be negative) | date YYYY-MM-DD | true | false
    list       := '[' value (',' value)* [','] ']'
    file       := '@' path  (bare, or quoted when it holds spaces, brackets or commas)

Semantics:

* Column names resolve through :data:`revise.data.manifest.ALIASES` (``date`` means
  ``study_date``). An unknown column is an error that suggests the closest name.
* The literal decides how cells are compared: numbers numerically (cells coerced with
  ``pd.to_numeric``), dates as dates (cells in ISO ``YYYY-MM-DD`` or DICOM ``YYYYMMDD``), strings
  as text (exact and case-sensitive, after stripping the blank padding DICOM adds), ``true`` and
  ``false`` as booleans. ``~=`` is a regular-expression search on the text in RE2 syntax
  (google-re2): its time is linear in the text whatever the pattern, so no pattern can hang a
  selection; backreferences and lookaround, which RE2 does not have, are refused with the
  rewrite. A number compared with a date column (``study_date``, or a column of dates) is an
  error: it could never match.
* Missing cells (NA or blank) and cells that cannot be read as the literal's type never match a
  comparison, not even ``!=`` or ``not in``; only ``is empty`` finds them. ``not`` in front of a
  comparison is plain logical negation, so ``not label in [1]`` keeps unlabelled rows while
  ``label not in [1]`` drops them (as ``label != 1`` does).
* ``@file`` names a UTF-8 text file with one value per line (surrounding blanks stripped; blank
  lines and lines starting with ``#`` ignored), resolved against ``base_dir`` (default: the
  current directory). Its entries are compared as text; ``not in`` an empty file matches every
  row with a value. Records and logs show every ``@file`` as ``@<list file>`` (see
  :func:`describe`): sites name folders after patients.
* ``random(FRACTION, seed=N)`` chooses a reproducible share of the rows: a row is chosen when
  sha256 of (``seed``, ``sample_key``) read as a number in [0, 1) falls below ``FRACTION``
  (in (0, 1]; ``seed`` a whole number >= 0, default 0). With ``by=COLUMN`` the hash is of the
  row's value of that column, so whole groups are chosen (``by=patient``: every row of a chosen
  patient). The choice of a row depends only on its own value and the seed, never on the order
  or the number of the other rows, so a grown manifest keeps every earlier choice. Rows whose
  key (or ``by`` value) is missing are never chosen. It combines with ``and``/``or``/``not``
  like any comparison: ``label == 3 and random(0.5)``.

Patient identifiers: the manifest's ``patient`` column only ever holds keyed pseudonyms (see
:mod:`revise.phi`). A value compared with ``patient`` (a literal, a list entry or a line of an
``@file``) that does not already look like a pseudonym (``p-`` and 16 hex digits) is taken to be a
clear patient ID and hashed with :func:`revise.phi.pseudonym` under the site key (or ``key=``)
before comparing. A site can therefore keep real patient IDs in ``forget_patients.txt`` and write
``patient in @forget_patients.txt`` while the manifest never holds those IDs. Error messages never
repeat clear values given for ``patient``; they report how many identifiers matched nothing.
Only ``==``, ``!=``, ``in``, ``not in`` and ``is [not] empty`` apply to ``patient``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import hashlib
import operator
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

from revise._io import not_utf8
from revise.data._select_parser import MAX_DEPTH as MAX_DEPTH
from revise.data._select_parser import Token as Token
from revise.data._select_parser import _regex, parse
from revise.data._select_tree import (
    IDENTIFYING,
    PATIENT,
    And,
    Compare,
    Comparison,
    Expr,
    InFile,
    InList,
    IsEmpty,
    Not,
    Or,
    Random,
    Value,
    _format,
    _leaves,
    _quote,
    resolve_column,
)
from revise.data.manifest import ALIASES, FORBIDDEN_COLUMNS
from revise.errors import SelectionError
from revise.phi import key_fingerprint, pseudonym, site_key

__all__ = [
    "IDENTIFYING",
    "And",
    "Compare",
    "Comparison",
    "Expr",
    "InFile",
    "InList",
    "IsEmpty",
    "Not",
    "Or",
    "Random",
    "columns_used",
    "draw",
    "mask",
    "parse",
    "select",
]

PSEUDONYM = re.compile(r"p-[0-9a-f]{16}")
DATE_COLUMN = "study_date"  # ISO date text in a manifest, so its dtype does not say "date"


def _as_expr(expr: str | Expr) -> Expr:
    if isinstance(expr, Expr):
        return expr
    if isinstance(expr, str):
        return parse(expr)
    raise TypeError(f"a selection is a str or an Expr, not {type(expr).__name__}")


def describe(expr: str | Expr) -> str:
    """Canonical text safe for records and logs: values given for ``patient`` and ``path`` are
    hidden, and so is every ``@file`` path (as ``@<list file>``)."""
    return _format(_as_expr(expr), redact=True)


def columns_used(expr: str | Expr) -> set[str]:
    """The manifest columns a selection reads (aliases resolved)."""
    return {leaf.column for leaf in _leaves(_as_expr(expr))}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _text_view(column: pd.Series) -> pd.Series:
    """Cells as stripped text; NA where missing or blank (DICOM pads values with spaces)."""
    text = column.astype("string").str.strip()
    return text.mask((text == "").fillna(False).astype(bool))


def _number_view(column: pd.Series) -> pd.Series:
    if is_numeric_dtype(column.dtype) and not is_bool_dtype(column.dtype):
        return column
    return pd.to_numeric(_text_view(column), errors="coerce")


def _date_view(column: pd.Series) -> pd.Series:
    """Cells as midnight timestamps: datetime columns, ISO YYYY-MM-DD or DICOM YYYYMMDD text."""
    if is_datetime64_any_dtype(column.dtype):
        if getattr(column.dt, "tz", None) is not None:
            column = column.dt.tz_localize(None)
        return column.dt.normalize()
    text = _text_view(column)
    iso = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    return iso.fillna(pd.to_datetime(text, format="%Y%m%d", errors="coerce"))


_TRUTH = {"true": True, "t": True, "yes": True, "y": True, "1": True}
_TRUTH |= {"false": False, "f": False, "no": False, "n": False, "0": False}


def _bool_view(column: pd.Series) -> pd.Series:
    if is_bool_dtype(column.dtype):
        return column.astype("boolean")
    return _text_view(column).str.lower().map(_TRUTH).astype("boolean")


_VIEWS: dict[str, Callable[[pd.Series], pd.Series]] = {
    "text": _text_view,
    "number": _number_view,
    "date": _date_view,
    "bool": _bool_view,
}

_COMPARATORS: dict[str, Callable[[pd.Series, object], pd.Series]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _kind(value: Value) -> str:
    """How a literal compares: the view of the column it is compared with."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, dt.date):
        return "date"
    return "text"


def _as_bool(result: pd.Series) -> pd.Series:
    """A comparison result as plain bools: NA (missing or unreadable cell) is no match."""
    return result.fillna(False).astype(bool)


@dataclass
class _Context:
    """What one evaluation needs, with column views and list files read once."""

    df: pd.DataFrame
    base_dir: Path | None = None
    given_key: bytes | None = None
    hashed_any: bool = False
    _key: bytes | None = None
    _views: dict[tuple[str, str], pd.Series] = field(default_factory=dict)
    _files: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        """The pseudonym key, read from the site only when a clear patient ID needs hashing."""
        if self._key is None:
            self._key = site_key() if self.given_key is None else self.given_key
        return self._key

    def view(self, column: str, kind: str) -> pd.Series:
        if (column, kind) not in self._views:
            self._views[column, kind] = _VIEWS[kind](self.df[column])
        return self._views[column, kind]

    def operand(self, column: str, value: Value) -> object:
        """A literal as the view compares it: dates as timestamps, patient IDs as pseudonyms."""
        if column == PATIENT and isinstance(value, str) and not PSEUDONYM.fullmatch(value):
            self.hashed_any = True
            return pseudonym(value, key=self.key)
        if _kind(value) == "date":
            return pd.Timestamp(value)
        return value

    def file_values(self, path: str) -> tuple[str, ...]:
        if path not in self._files:
            self._files[path] = _read_list(path, self.base_dir)
        return self._files[path]

    def values_of(self, leaf: Comparison) -> tuple[Value, ...]:
        """The literal values a comparison names (a list file's lines for ``@file``)."""
        if isinstance(leaf, Compare):
            return (leaf.value,)
        if isinstance(leaf, InList):
            return leaf.values
        if isinstance(leaf, InFile):
            return self.file_values(leaf.path)
        return ()


def _read_list(path_text: str, base_dir: Path | None) -> tuple[str, ...]:
    """Values of an ``@file``: one per line; blank lines and ``#`` comment lines skipped."""
    base = Path.cwd() if base_dir is None else Path(base_dir)
    path = Path(path_text).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        content = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SelectionError(
            f"selection: list file {path} (from @{path_text}) does not exist",
            hint=f"relative paths after @ are resolved against {base}",
        ) from None
    except UnicodeDecodeError:
        raise not_utf8(path, "selection: list file", SelectionError) from None
    except OSError as exc:
        raise SelectionError(f"selection: cannot read list file {path}: {exc}") from exc
    lines = (line.strip() for line in content.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def _evaluate(node: Expr, ctx: _Context) -> pd.Series:
    if isinstance(node, Or):
        return functools.reduce(operator.or_, (_evaluate(c, ctx) for c in node.operands))
    if isinstance(node, And):
        return functools.reduce(operator.and_, (_evaluate(c, ctx) for c in node.operands))
    if isinstance(node, Not):
        return ~_evaluate(node.operand, ctx)
    if isinstance(node, Random):
        return _random(node, ctx)
    if isinstance(node, IsEmpty):
        empty = ctx.view(node.column, "text").isna()
        return ~empty if node.negated else empty
    if isinstance(node, Compare):
        return _compare(node, ctx)
    if isinstance(node, (InList, InFile)):
        return _membership(node.column, ctx.values_of(node), node.negated, ctx)
    raise TypeError(f"not a selection node: {node!r}")


def _compare(node: Compare, ctx: _Context) -> pd.Series:
    view = ctx.view(node.column, _kind(node.value))
    if node.op == "~=":
        pattern = _regex(str(node.value))
        cells = view.to_numpy(dtype=object, na_value=None)
        hits = [cell is not None and pattern.search(cell) is not None for cell in cells]
        return pd.Series(np.array(hits, dtype=bool), index=ctx.df.index)
    result = _COMPARATORS[node.op](view, ctx.operand(node.column, node.value))
    return _as_bool(result) & view.notna()


def draw(seed: int, column: str, value: str) -> float:
    """The number in [0, 1) that ``random(..., seed=seed, by=column)`` compares with its fraction
    for a row whose ``column`` reads ``value`` (sha256: the same on every machine and version)."""
    digest = hashlib.sha256(f"revise.random\0{seed}\0{column}\0{value}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2.0**53  # 53 bits: exact as a float


def _random(node: Random, ctx: _Context) -> pd.Series:
    """Each distinct value hashed once (a group's rows share one draw); missing: never chosen."""
    codes, values = pd.factorize(ctx.view(node.column, "text"))
    draws = np.fromiter(
        (draw(node.seed, node.column, str(v)) for v in values), dtype=float, count=len(values)
    )
    chosen = np.append(draws < node.fraction, False)  # code -1 (missing) reads the last: False
    return pd.Series(chosen[codes], index=ctx.df.index)


def _membership(column: str, values: Sequence[Value], negated: bool, ctx: _Context) -> pd.Series:
    """``in`` / ``not in``: each value compared by its own type; missing cells never match."""
    by_kind: dict[str, list[object]] = {}
    for value in values:
        by_kind.setdefault(_kind(value), []).append(ctx.operand(column, value))
    hit = pd.Series(False, index=ctx.df.index)
    readable = pd.Series(False, index=ctx.df.index)
    for kind, operands in by_kind.items():
        view = ctx.view(column, kind)
        hit |= _as_bool(view.isin(operands))
        readable |= view.notna()
    if not by_kind:  # an empty list file: every cell with a value is "not in" it
        readable = ctx.view(column, "text").notna()
    return (readable & ~hit) if negated else (readable & hit)


def _check_columns(df: pd.DataFrame, node: Expr) -> None:
    for leaf in _leaves(node):
        if leaf.column not in df.columns:
            raise _unknown_column(leaf.column, df)


def _check_literals(df: pd.DataFrame, node: Expr) -> None:
    """A number never matches a date cell, and ``not`` would turn that into every row: refuse."""
    for leaf in _leaves(node):
        if not isinstance(leaf, (Compare, InList)) or not _is_date_column(df, leaf.column):
            continue
        values = (leaf.value,) if isinstance(leaf, Compare) else leaf.values
        number = next((v for v in values if _kind(v) == "number"), None)
        if number is not None:
            raise SelectionError(
                f"selection: {leaf.column} holds dates, not numbers: {_format(leaf, redact=True)}",
                hint=f"write dates as YYYY-MM-DD without quotes, e.g. {leaf.column} < 2019-01-01",
            )


def _is_date_column(df: pd.DataFrame, column: str) -> bool:
    if column == DATE_COLUMN or is_datetime64_any_dtype(df[column].dtype):
        return True
    first = df[column].dropna()
    return len(first) > 0 and isinstance(first.iloc[0], dt.date)


def _unknown_column(name: str, df: pd.DataFrame) -> SelectionError:
    names = [str(c) for c in df.columns]
    choices = names + [alias for alias, target in ALIASES.items() if target in df.columns]
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    guess = f" (did you mean '{resolve_column(by_lower[close[0]])}'?)" if close else ""
    return SelectionError(
        f"selection: unknown column '{name}'{guess}",
        hint=f"columns of this manifest: {', '.join(names)}",
    )


def mask(
    df: pd.DataFrame,
    expr: str | Expr,
    *,
    base_dir: str | os.PathLike | None = None,
    key: bytes | None = None,
) -> pd.Series:
    """The boolean mask of the rows of ``df`` a selection matches (indexed like ``df``)."""
    result, _ = _mask_with_context(df, _as_expr(expr), base_dir, key)
    return result


def _mask_with_context(
    df: pd.DataFrame, node: Expr, base_dir: str | os.PathLike | None, key: bytes | None
) -> tuple[pd.Series, _Context]:
    _check_columns(df, node)
    _check_literals(df, node)
    ctx = _Context(df, None if base_dir is None else Path(base_dir), key)
    return _evaluate(node, ctx).astype(bool), ctx


def select(
    df: pd.DataFrame,
    expr: str | Expr,
    *,
    base_dir: str | os.PathLike | None = None,
    key: bytes | None = None,
    allow_empty: bool = False,
) -> pd.DataFrame:
    """The rows a selection matches. Matching nothing is an error unless ``allow_empty``.

    An empty selection is almost always a misspelt value, so the error lists the values that do
    exist for each ``==``/``in`` comparison on a text column.
    """
    node = _as_expr(expr)
    result, ctx = _mask_with_context(df, node, base_dir, key)
    if not allow_empty and not result.any():
        raise _empty_error(node, ctx)
    return df.loc[result.to_numpy()].copy()


# --------------------------------------------------------------------------------------------
# Explaining an empty selection
# --------------------------------------------------------------------------------------------

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
