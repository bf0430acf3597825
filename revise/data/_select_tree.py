"""The syntax tree of a selection (see :mod:`revise.data.select`): node classes, their canonical
text (optionally with the values given for ``patient`` hidden) and the walk over their leaves.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass

from revise.data.manifest import ALIASES

PATIENT = "patient"
ROW_KEY = "sample_key"  # what random() draws on when it is not given by=
# Columns whose values identify a person: hidden by describe(). File paths are there because
# sites name folders after patients (DOE^JOHN/...).
IDENTIFYING = (PATIENT, "path")

Value = str | int | float | bool | dt.date

# A file path that needs no quotes after '@' (the tokenizer reads it; formatting keeps it bare).
_BARE_PATH = re.compile(r"[^\s()\[\],'\"]+")


@dataclass(frozen=True)
class Expr:
    """A node of a parsed selection; ``str()`` gives the canonical text, which re-parses equal."""

    def __str__(self) -> str:
        return _format(self)


@dataclass(frozen=True)
class Or(Expr):
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class And(Expr):
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Not(Expr):
    operand: Expr


@dataclass(frozen=True)
class Comparison(Expr):
    """A leaf: a test of one column (already resolved through the aliases)."""

    column: str


@dataclass(frozen=True)
class Compare(Comparison):
    op: str
    value: Value


@dataclass(frozen=True)
class InList(Comparison):
    values: tuple[Value, ...]
    negated: bool = False


@dataclass(frozen=True)
class InFile(Comparison):
    path: str
    negated: bool = False


@dataclass(frozen=True)
class IsEmpty(Comparison):
    negated: bool = False


@dataclass(frozen=True)
class Random(Comparison):
    """``random(FRACTION, seed=N, by=COLUMN)``: the rows, or with ``by=`` every row of the
    groups, whose value of ``column`` hashes (with ``seed``) below ``fraction``."""

    fraction: float
    seed: int = 0


def _format(node: Expr, *, redact: bool = False) -> str:
    """Canonical text of a tree; ``redact`` hides values given for ``patient`` and ``path``, and
    every ``@file`` path (for records and messages)."""
    if isinstance(node, Or):
        return " or ".join(_wrapped(child, (Or,), redact) for child in node.operands)
    if isinstance(node, And):
        return " and ".join(_wrapped(child, (Or, And), redact) for child in node.operands)
    if isinstance(node, Not):
        return "not " + _wrapped(node.operand, (Or, And), redact)
    if not isinstance(node, Comparison):
        raise TypeError(f"not a selection node: {node!r}")
    if isinstance(node, Random):  # names no value, so nothing to hide
        by = "" if node.column == ROW_KEY else f", by={node.column}"
        return f"random({node.fraction!r}, seed={node.seed}{by})"
    hidden = redact and node.column in IDENTIFYING
    if isinstance(node, Compare):
        value = "<identifier>" if hidden else _literal(node.value)
        return f"{node.column} {node.op} {value}"
    keyword = "not in" if getattr(node, "negated", False) else "in"
    if isinstance(node, InList):
        if hidden:
            return f"{node.column} {keyword} [{len(node.values)} identifiers]"
        return f"{node.column} {keyword} [{', '.join(_literal(v) for v in node.values)}]"
    if isinstance(node, InFile):
        # Any column: the path itself can name a patient (a folder per patient).
        path = "<list file>" if redact else _path_literal(node.path)
        return f"{node.column} {keyword} @{path}"
    assert isinstance(node, IsEmpty)
    return f"{node.column} is {'not ' if node.negated else ''}empty"


def _wrapped(node: Expr, kinds: tuple[type, ...], redact: bool) -> str:
    text = _format(node, redact=redact)
    return f"({text})" if isinstance(node, kinds) else text


def _literal(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return repr(value)  # repr keeps every digit of a float, so the text re-parses equal


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _path_literal(path: str) -> str:
    return path if _BARE_PATH.fullmatch(path) else _quote(path)


def _leaves(node: Expr) -> Iterator[Comparison]:
    if isinstance(node, (Or, And)):
        for child in node.operands:
            yield from _leaves(child)
    elif isinstance(node, Not):
        yield from _leaves(node.operand)
    else:
        assert isinstance(node, Comparison)
        yield node


def resolve_column(name: str) -> str:
    """The manifest column a name in a selection means (aliases such as ``date`` resolved)."""
    return ALIASES.get(name, name)
