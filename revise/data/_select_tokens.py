"""Splitting a selection into tokens (the grammar is in :mod:`revise.data.select`), and syntax
errors with a caret under the offending spot and the values written for ``patient`` starred out.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from revise.data._select_tree import _BARE_PATH, PATIENT, Value, resolve_column
from revise.errors import SelectionError

_SPACE = re.compile(r"\s+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# A literal that runs straight into one of these was not the literal the user meant.
_RUN_ON = re.compile(r"[A-Za-z0-9_.\-]")
_OPERATORS = ("==", "!=", "<=", ">=", "~=", "<", ">")
_PUNCTUATION = "()[],"
_HINTS = {"&": "use 'and'", "|": "use 'or'", "!": "use 'not'"}
_RESERVED = frozenset({"and", "or", "not", "in", "true", "false"})
_KEYWORDS = _RESERVED | {"is", "empty"}


@dataclass(frozen=True)
class Token:
    kind: str  # ident string number date op path end, or one of ( ) [ ] , =
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
        if char == "=":  # names an argument of random(); anywhere else the parser says '=='
            return Token("=", char, pos, pos + 1)
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
        if _in_patient_value(self.tokens):
            # The character may belong to a clear patient ID: point at it, never repeat it.
            self.fail("unexpected character in a patient identifier (quote the identifier)", pos)
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
    rest of the text is starred too, from that very character on (e.g. an unterminated quoted ID).
    """
    chars = list(text)
    spans, inside = _patient_values(tokens)
    for start, end in spans:
        chars[start:end] = "*" * (end - start)
    if inside and inside_from is not None:
        chars[inside_from:] = "*" * max(0, len(chars) - inside_from)
    return "".join(chars)


def _in_patient_value(tokens: Sequence[Token]) -> bool:
    """Whether the text after these tokens still belongs to a comparison of ``patient``."""
    return _patient_values(tokens)[1]


def _patient_values(tokens: Sequence[Token]) -> tuple[list[tuple[int, int]], bool]:
    """(start, end) of each value written for ``patient``, and whether the tokens end inside a
    patient comparison."""
    spans: list[tuple[int, int]] = []
    inside = False
    after = ""  # the kind of the previous token
    for token in tokens:
        word = token.text.lower() if token.kind == "ident" else ""
        if word in ("and", "or") or token.kind in ("(", ")"):
            inside = False
        elif (
            token.kind == "ident"
            and not inside
            and after != "="  # by=patient names the column and compares no value
            and resolve_column(token.text) == PATIENT
        ):
            inside = True
        elif (
            inside and token.kind in ("string", "number", "date", "ident") and word not in _KEYWORDS
        ):
            spans.append((token.pos, token.end))
        after = token.kind
    return spans, inside
