"""A small, safe selection language over manifest columns.

Users pick the rows to forget, retain or validate on with one-line expressions such as::

    device == "Cirrus 800 FA" and study_date < 2019-01-01
    label in [0, 2] and not (site == "north" or rows < 512)
    patient in @forget_patients.txt
    body_part ~= "^EYE" and split is not empty

The text is read by a hand-written tokenizer and recursive-descent parser into a tree of
:class:`Expr` nodes, which is then evaluated column by column into a boolean mask. Nothing is ever
handed to ``eval``, ``exec``, ``pandas.eval`` or ``DataFrame.query``: a selection can only name
columns and compare them with literal values, so a manifest or a list file can never run code.

Grammar (keywords ``and or not in is empty true false`` are case-insensitive)::

    expr       := or
    or         := and ('or' and)*
    and        := not ('and' not)*
    not        := 'not' not | '(' expr ')' | comparison
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
  ``false`` as booleans. ``~=`` is a regular-expression search (:func:`re.search`) on the text.
* Missing cells (NA or blank) and cells that cannot be read as the literal's type never match a
  comparison, not even ``!=`` or ``not in``; only ``is empty`` finds them. ``not`` in front of a
  comparison is plain logical negation, so ``not label in [1]`` keeps unlabelled rows while
  ``label not in [1]`` drops them (as ``label != 1`` does).
* ``@file`` names a UTF-8 text file with one value per line (surrounding blanks stripped; blank
  lines and lines starting with ``#`` ignored), resolved against ``base_dir`` (default: the
  current directory). Its entries are compared as text.

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
import operator
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

from revise.data.manifest import ALIASES
from revise.errors import SelectionError
from revise.phi import key_fingerprint, pseudonym, site_key

__all__ = [
    "And",
    "Compare",
    "Comparison",
    "Expr",
    "InFile",
    "InList",
    "IsEmpty",
    "Not",
    "Or",
    "columns_used",
    "mask",
    "parse",
    "select",
]

PATIENT = "patient"
PSEUDONYM = re.compile(r"p-[0-9a-f]{16}")
# Nesting beyond this is certainly not hand-written; refusing it keeps recursion bounded.
MAX_DEPTH = 100

Value = str | int | float | bool | dt.date

# --------------------------------------------------------------------------------------------
# The syntax tree
# --------------------------------------------------------------------------------------------


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


def _format(node: Expr, *, redact: bool = False) -> str:
    """Canonical text of a tree; ``redact`` hides values given for ``patient`` (for messages)."""
    if isinstance(node, Or):
        return " or ".join(_wrapped(child, (Or,), redact) for child in node.operands)
    if isinstance(node, And):
        return " and ".join(_wrapped(child, (Or, And), redact) for child in node.operands)
    if isinstance(node, Not):
        return "not " + _wrapped(node.operand, (Or, And), redact)
    if not isinstance(node, Comparison):
        raise TypeError(f"not a selection node: {node!r}")
    hidden = redact and node.column == PATIENT
    if isinstance(node, Compare):
        value = "<identifier>" if hidden else _literal(node.value)
        return f"{node.column} {node.op} {value}"
    keyword = "not in" if getattr(node, "negated", False) else "in"
    if isinstance(node, InList):
        if hidden:
            return f"{node.column} {keyword} [{len(node.values)} identifiers]"
        return f"{node.column} {keyword} [{', '.join(_literal(v) for v in node.values)}]"
    if isinstance(node, InFile):
        return f"{node.column} {keyword} @{_path_literal(node.path)}"
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


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

_SPACE = re.compile(r"\s+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# A literal that runs straight into one of these was not the literal the user meant.
_RUN_ON = re.compile(r"[A-Za-z0-9_.\-]")
_BARE_PATH = re.compile(r"[^\s()\[\],'\"]+")
_OPERATORS = ("==", "!=", "<=", ">=", "~=", "<", ">")
_PUNCTUATION = "()[],"
_HINTS = {"=": "use '==' to compare", "&": "use 'and'", "|": "use 'or'", "!": "use 'not'"}
_RESERVED = frozenset({"and", "or", "not", "in", "true", "false"})
_KEYWORDS = _RESERVED | {"is", "empty"}


@dataclass(frozen=True)
class Token:
    kind: str  # ident string number date op path end, or one of ( ) [ ] ,
    text: str
    pos: int
    end: int
    value: Value | None = None


class _Tokenizer:
    """Splits a selection into tokens, remembering positions for caret messages."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[Token] = []

    def run(self) -> list[Token]:
        text, pos = self.text, 0
        while True:
            space = _SPACE.match(text, pos)
            if space:
                pos = space.end()
            if pos >= len(text):
                self.tokens.append(Token("end", "", len(text), len(text)))
                return self.tokens
            token = self._next(pos)
            self.tokens.append(token)
            pos = token.end

    def _next(self, pos: int) -> Token:
        text = self.text
        char = text[pos]
        if char in "\"'":
            value, end = self._string(pos)
            return Token("string", text[pos:end], pos, end, value)
        if char == "@":
            return self._path(pos)
        if char in _PUNCTUATION:
            return Token(char, char, pos, pos + 1)
        for op in _OPERATORS:
            if text.startswith(op, pos):
                return Token("op", op, pos, pos + len(op))
        ident = _IDENT.match(text, pos)
        if ident:
            return Token("ident", ident.group(), pos, ident.end())
        date = _DATE.match(text, pos)
        if date and not _RUN_ON.match(text, date.end()):
            try:
                value: Value = dt.date.fromisoformat(date.group())
            except ValueError:
                self.fail("not a valid date (dates are YYYY-MM-DD)", pos)
            return Token("date", date.group(), pos, date.end(), value)
        number = _NUMBER.match(text, pos)
        if number:
            return self._number(number)
        hint = _HINTS.get(char)
        self.fail(f"unexpected character {char!r}" + (f" ({hint})" if hint else ""), pos)

    def _number(self, match: re.Match[str]) -> Token:
        literal, pos = match.group(), match.start()
        if _RUN_ON.match(self.text, match.end()):
            self.fail("malformed number (quote text values, dates are YYYY-MM-DD)", pos)
        value: Value = float(literal) if any(c in literal for c in ".eE") else int(literal)
        if isinstance(value, float) and not np.isfinite(value):
            self.fail("number out of range", pos)
        return Token("number", literal, pos, match.end(), value)

    def _string(self, pos: int) -> tuple[str, int]:
        text, quote = self.text, self.text[pos]
        out: list[str] = []
        i = pos + 1
        while i < len(text):
            char = text[i]
            if char == "\\" and i + 1 < len(text) and text[i + 1] in "\"'\\":
                out.append(text[i + 1])
                i += 2
            elif char == quote:
                return "".join(out), i + 1
            else:
                out.append(char)
                i += 1
        self.fail("unterminated string", pos)

    def _path(self, pos: int) -> Token:
        start = pos + 1
        if start < len(self.text) and self.text[start] in "\"'":
            value, end = self._string(start)
        else:
            bare = _BARE_PATH.match(self.text, start)
            if not bare:
                self.fail("expected a file path after '@'", pos)
            value, end = bare.group(), bare.end()
        if not value:
            self.fail("expected a file path after '@'", pos)
        return Token("path", self.text[pos:end], pos, end, value)

    def fail(self, message: str, pos: int) -> NoReturn:
        raise _syntax_error(self.text, pos, message, self.tokens, inside_from=pos)


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the token list, one method per grammar rule."""

    def __init__(self, text: str, tokens: list[Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.index = 0
        self.depth = 0
        self.column: str | None = None  # the column of the comparison being read

    @property
    def tok(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tok
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def keyword(self, word: str) -> bool:
        return self.tok.kind == "ident" and self.tok.text.lower() == word

    def parse(self) -> Expr:
        node = self.or_()
        if self.tok.kind != "end":
            self.fail(f"expected 'and', 'or' or the end of the selection{self.found()}")
        return node

    def or_(self) -> Expr:
        operands = [self.and_()]
        while self.keyword("or"):
            self.advance()
            operands.append(self.and_())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_(self) -> Expr:
        operands = [self.not_()]
        while self.keyword("and"):
            self.advance()
            operands.append(self.not_())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def not_(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"nested more than {MAX_DEPTH} levels deep")
        try:
            if self.keyword("not"):
                self.advance()
                return Not(self.not_())
            if self.tok.kind == "(":
                self.advance()
                node = self.or_()
                if self.tok.kind != ")":
                    self.fail(f"expected ')'{self.found()}")
                self.advance()
                return node
            return self.comparison()
        finally:
            self.depth -= 1

    def comparison(self) -> Comparison:
        token = self.tok
        if token.kind != "ident" or token.text.lower() in _RESERVED:
            self.fail(f"expected a column name{self.found()}")
        self.advance()
        column = self.column = resolve_column(token.text)
        if self.tok.kind == "op":
            return self.compare(column)
        if self.keyword("in"):
            self.advance()
            return self.members(column, negated=False)
        if self.keyword("not"):
            self.advance()
            if not self.keyword("in"):
                self.fail(f"expected 'in' after 'not'{self.found()}")
            self.advance()
            return self.members(column, negated=True)
        if self.keyword("is"):
            self.advance()
            negated = self.keyword("not")
            if negated:
                self.advance()
            if not self.keyword("empty"):
                self.fail(f"expected 'empty'{self.found()}")
            self.advance()
            return IsEmpty(column, negated)
        ops = ", ".join(_OPERATORS)
        self.fail(f"expected {ops}, in, not in or is empty after '{token.text}'{self.found()}")

    def compare(self, column: str) -> Compare:
        op_token = self.advance()
        op = op_token.text
        if column == PATIENT and op not in ("==", "!="):
            self.fail("the patient column holds keyed pseudonyms: use ==, != or in", op_token)
        value_token = self.tok
        value = self.value(after=op)
        if op == "~=":
            if not isinstance(value, str):
                self.fail("'~=' needs a quoted regular expression", value_token)
            try:
                _regex(value)
            except re.error as exc:
                self.fail(f"invalid regular expression: {exc.msg}", value_token)
        elif isinstance(value, bool) and op not in ("==", "!="):
            self.fail("true and false can only be compared with == or !=", op_token)
        return Compare(column, op, value)

    def members(self, column: str, *, negated: bool) -> InList | InFile:
        if self.tok.kind == "path":
            path = self.advance().value
            assert isinstance(path, str)
            return InFile(column, path, negated)
        if self.tok.kind != "[":
            self.fail(f"expected a list [...] or @file after 'in'{self.found()}")
        after = self.advance().text
        values: list[Value] = []
        while not (values and self.tok.kind == "]"):
            values.append(self.value(after=after))
            if self.tok.kind not in (",", "]"):
                self.fail(f"expected ',' or ']' in the list{self.found()}")
            if self.tok.kind == ",":
                after = self.advance().text
        self.advance()
        return InList(column, tuple(values), negated)

    def value(self, *, after: str) -> Value:
        token = self.tok
        is_bool = token.kind == "ident" and token.text.lower() in ("true", "false")
        if token.kind not in ("string", "number", "date") and not is_bool:
            hint = ""
            if token.kind == "ident" and self.column != PATIENT:
                hint = f" (quote text values: {_quote(token.text)})"
            self.fail(f"expected a value after '{after}'{self.found()}{hint}")
        self.advance()
        if self.column == PATIENT:
            # Patient IDs are text even when they look like numbers: keep "00123" as written.
            return token.value if token.kind == "string" else token.text
        if is_bool:
            return token.text.lower() == "true"
        assert token.value is not None
        return token.value

    def found(self) -> str:
        """How the current token reads in a message; literals are described, never quoted."""
        token = self.tok
        if token.kind == "end":
            return ""
        if token.kind in ("string", "number", "date", "path"):
            kind = {"string": "a string", "number": "a number", "date": "a date"}
            return f", found {kind.get(token.kind, 'a file path')}"
        if token.kind == "ident" and self.column == PATIENT:
            return ", found a bare word"
        return f", found '{token.text}'"

    def fail(self, message: str, token: Token | None = None) -> NoReturn:
        pos = (token or self.tok).pos
        raise _syntax_error(self.text, pos, message, self.tokens)


def _syntax_error(
    text: str,
    pos: int,
    message: str,
    tokens: Sequence[Token],
    *,
    inside_from: int | None = None,
) -> SelectionError:
    """A message with the column and a caret under the offending spot."""
    shown = _redact_patient_values(text, tokens, inside_from)
    shown = shown.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    caret = " " * pos + "^"
    return SelectionError(f"selection: {message} at column {pos + 1}:\n  {shown}\n  {caret}")


def _redact_patient_values(text: str, tokens: Sequence[Token], inside_from: int | None) -> str:
    """Star out values written for ``patient`` so a caret line never echoes a clear patient ID.

    ``inside_from`` is where tokenizing stopped; if that happened inside a patient comparison, the
    rest of the text is starred too (e.g. an unterminated quoted ID).
    """
    chars = list(text)
    inside = False
    for token in tokens:
        word = token.text.lower() if token.kind == "ident" else ""
        if word in ("and", "or") or token.kind in ("(", ")"):
            inside = False
        elif token.kind == "ident" and not inside and resolve_column(token.text) == PATIENT:
            inside = True
        elif (
            inside and token.kind in ("string", "number", "date", "ident") and word not in _KEYWORDS
        ):
            chars[token.pos : token.end] = "*" * (token.end - token.pos)
    if inside and inside_from is not None:
        chars[inside_from + 1 :] = "*" * max(0, len(chars) - inside_from - 1)
    return "".join(chars)


def parse(text: str) -> Expr:
    """Parse a selection into its syntax tree (raises SelectionError with a caret on bad input)."""
    if not text.strip():
        raise SelectionError("selection: the selection is empty", hint='e.g. device == "X"')
    tokens = _Tokenizer(text).run()
    return _Parser(text, tokens).parse()


def _as_expr(expr: str | Expr) -> Expr:
    if isinstance(expr, Expr):
        return expr
    if isinstance(expr, str):
        return parse(expr)
    raise TypeError(f"a selection is a str or an Expr, not {type(expr).__name__}")


def describe(expr: str | Expr) -> str:
    """Canonical text safe for records and logs: values given for ``patient`` are hidden."""
    return _format(_as_expr(expr), redact=True)


def columns_used(expr: str | Expr) -> set[str]:
    """The manifest columns a selection reads (aliases resolved)."""
    return {leaf.column for leaf in _leaves(_as_expr(expr))}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    """Compile a ``~=`` pattern once; the pattern is data for :mod:`re`, never Python code."""
    return re.compile(pattern)


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
    except (OSError, UnicodeDecodeError) as exc:
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
    return (readable & ~hit) if negated else (readable & hit)


def _check_columns(df: pd.DataFrame, node: Expr) -> None:
    for leaf in _leaves(node):
        if leaf.column not in df.columns:
            raise _unknown_column(leaf.column, df)


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
    counts = ctx.view(leaf.column, "text").value_counts()
    if counts.empty:
        return f"{_format(leaf)} matches {alone} rows; {leaf.column} is empty in every row"
    wanted = [v for v in ctx.values_of(leaf) if isinstance(v, str)]
    existing = _suggest(wanted, [str(v) for v in counts.index])
    listed = ", ".join(_quote(v) for v in existing)
    more = f" ({len(counts)} distinct)" if len(counts) > len(existing) else ""
    return f"{_format(leaf)} matches {alone} rows; existing {leaf.column} values: {listed}{more}"


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
