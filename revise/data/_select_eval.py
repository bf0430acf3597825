"""Evaluating a parsed selection (see :mod:`revise.data.select`) column by column into a boolean
mask: cells read as the literal's type, ``@file`` lists read once, clear patient IDs hashed to
pseudonyms, ``random()`` drawn by sha256.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

from revise._io.text import not_utf8
from revise.data._select_regex import _regex
from revise.data._select_tree import (
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
)
from revise.errors import SelectionError
from revise.phi import pseudonym, site_key

PSEUDONYM = re.compile(r"p-[0-9a-f]{16}")


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
