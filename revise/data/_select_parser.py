"""Reading a selection: a recursive-descent parser over the tokens of
:mod:`revise.data._select_tokens`, one method per rule of the grammar in
:mod:`revise.data.select`.
"""

from __future__ import annotations

from typing import NoReturn

from revise.data._select_regex import _regex
from revise.data._select_tokens import (
    _KEYWORDS,
    _OPERATORS,
    _RESERVED,
    Token,
    _syntax_error,
    _Tokenizer,
)
from revise.data._select_tree import (
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


def parse(text: str) -> Expr:
    """Parse a selection into its syntax tree (raises SelectionError with a caret on bad input)."""
    if not text.strip():
        raise SelectionError("selection: the selection is empty", hint='e.g. device == "X"')
    tokens = _Tokenizer(text).run()
    return _Parser(text, tokens).parse()
