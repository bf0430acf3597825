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
import os
from pathlib import Path

import pandas as pd
from pandas.api.types import is_datetime64_any_dtype

from revise.data._select_eval import _Context, _evaluate, _kind
from revise.data._select_explain import _empty_error
from revise.data._select_parser import MAX_DEPTH as MAX_DEPTH
from revise.data._select_parser import parse
from revise.data._select_tree import (
    IDENTIFYING,
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
    _format,
    _leaves,
    resolve_column,
)
from revise.data.manifest import ALIASES
from revise.errors import SelectionError

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
    "mask",
    "parse",
    "select",
]

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
