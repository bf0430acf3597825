"""Reading a selection: a hand-written tokenizer and recursive-descent parser (the grammar is in
:mod:`revise.data.select`), and syntax errors with a caret under the offending spot.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import re2

from revise.data._select_tree import (
    _BARE_PATH,
    PATIENT,
    ROW_KEY,
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
    _quote,
    resolve_column,
)
from revise.errors import SelectionError

# Nesting beyond this is certainly not hand-written; refusing it keeps recursion bounded.
MAX_DEPTH = 100
RANDOM = "random"
_RANDOM_ARGUMENTS = ("seed", "by")


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

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
        if token.text.lower() == RANDOM and self.peek().kind == "(":
            return self.random()  # never a column: a column is followed by its comparison
        self.advance()
        column = self.column = resolve_column(token.text)
        if self.tok.kind == "=":
            self.fail("unexpected '=' (use '==' to compare)")
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
        share = " (or random(FRACTION) for a random share)" if column == RANDOM else ""
        self.fail(
            f"expected {ops}, in, not in or is empty after '{token.text}'{self.found()}{share}"
        )

    def peek(self) -> Token:
        return self.tokens[min(self.index + 1, len(self.tokens) - 1)]

    def random(self) -> Random:
        """``random(FRACTION[, seed=N][, by=COLUMN])``, named arguments in any order."""
        self.column = None
        self.advance()  # random
        self.advance()  # (
        fraction = self.fraction()
        arguments: dict[str, int | str] = {}
        while self.tok.kind == "," and self.peek().kind != ")":
            self.advance()
            name = self.tok
            if name.kind == "number":
                self.fail("name the seed: seed=N (e.g. random(0.1, seed=3))")
            if name.kind != "ident" or self.peek().kind != "=":
                self.fail(f"expected seed=N or by=COLUMN{self.found()}")
            key = name.text.lower()
            if key not in _RANDOM_ARGUMENTS:
                self.fail(f"random() takes seed= and by=, not '{name.text}='")
            if key in arguments:
                self.fail(f"random() is given {key}= twice")
            self.advance()  # the name
            self.advance()  # =
            arguments[key] = self.seed() if key == "seed" else self.by()
        if self.tok.kind == ",":
            self.advance()
        if self.tok.kind != ")":
            self.fail(f"expected ')' to close random(){self.found()}")
        self.advance()
        seed = arguments.get("seed", 0)
        column = arguments.get("by", ROW_KEY)
        assert isinstance(seed, int) and isinstance(column, str)
        return Random(column, fraction, seed)

    def fraction(self) -> float:
        token = self.tok
        if token.kind != "number":
            self.fail(
                f"random() needs the fraction to choose first{self.found()}, e.g. random(0.1)"
            )
        assert isinstance(token.value, (int, float))
        if not 0 < token.value <= 1:
            percent = f" (for {token.text}% write {token.value / 100:g})" if token.value > 1 else ""
            self.fail(f"random() takes a fraction above 0 and at most 1, not {token.text}{percent}")
        self.advance()
        return float(token.value)

    def seed(self) -> int:
        token = self.tok
        value = token.value
        if token.kind != "number":
            self.fail(f"seed= takes a whole number >= 0{self.found()}")
        assert isinstance(value, (int, float))
        if value < 0 or not float(value).is_integer():
            self.fail(f"seed= takes a whole number >= 0, not {token.text}")
        self.advance()
        return int(value)

    def by(self) -> str:
        token = self.tok
        if token.kind != "ident" or token.text.lower() in _KEYWORDS:
            quotes = " without quotes" if token.kind == "string" else ""
            self.fail(f"by= takes a column name{quotes}{self.found()}: e.g. by=patient")
        self.advance()
        return resolve_column(token.text)

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
            except ValueError as exc:
                self.fail(f"invalid regular expression: {exc}", value_token)
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


def parse(text: str) -> Expr:
    """Parse a selection into its syntax tree (raises SelectionError with a caret on bad input)."""
    if not text.strip():
        raise SelectionError("selection: the selection is empty", hint='e.g. device == "X"')
    tokens = _Tokenizer(text).run()
    return _Parser(text, tokens).parse()


# What RE2 leaves out on purpose (it needs backtracking), as RE2's error reads, with the rewrite.
_UNSUPPORTED = (
    (re.compile(r"escape sequence: \\[1-9gk]|operator: \(\?P$"), "backreferences"),
    (re.compile(r"operator: \(\?<[=!]"), "lookbehinds"),
    (re.compile(r"operator: \(\?[=!]"), "lookaheads"),
    (re.compile(r"operator: \(\?>|repetition operator: [*+?]\+"), "atomic groups"),
)
_REWRITE = {
    "backreferences": "spell the repeated text out",
    "lookbehinds": "combine ~= comparisons with and / not instead",
    "lookaheads": "combine ~= comparisons with and / not instead",
    "atomic groups": "use plain groups and repeats: RE2 never backtracks anyway",
}


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own line (with the pattern) on stderr
    return options


_OPTIONS = _re2_options()


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re2._Regexp:
    """Compile a ``~=`` pattern once, with RE2: its matching time is linear in the text whatever
    the pattern, so no pattern can make a selection hang (:mod:`re` backtracks, exponentially
    on e.g. ``(a|a)*b``). Raises ValueError saying what is wrong and how to fix it."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise ValueError(_problem(exc)) from None


def _problem(exc: re2.error) -> str:
    reason = exc.args[0] if exc.args else ""
    reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    for construct, name in _UNSUPPORTED:
        if construct.search(reason):
            return (
                f"{name} are not supported: ~= matches with RE2, which runs in linear time and "
                f"has no {name}; rewrite the pattern without them ({_REWRITE[name]})"
            )
    return f"{reason} (~= uses RE2 syntax)"
