"""Configs declared once as pydantic types, and refused in revise's words.

A config (a model card, a method's hyperparameters) is a pydantic dataclass: its fields, types,
bounds (``Field(ge=...)``), choices (``Literal``), defaults and descriptions are its checks and
its documentation at once. :func:`problems` turns pydantic's ValidationError into one line per
mistake, each naming where it is (``input_size[1]``), what it must be and the value given;
:func:`refusal` joins them into the message of one of revise's errors, so that a config with
three mistakes reports all three at once. pydantic's own exception never reaches a user.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from revise._io.text import read_json_object
from revise.errors import ModelError, RevisionError
from revise.registry import did_you_mean

Record = TypeVar("Record", bound=BaseModel)


@dataclass(frozen=True)
class Hint:
    """``Annotated`` marker of a field: what to do when a value of it is refused."""

    text: str


def fail(message: str, hint: str | None = None) -> PydanticCustomError:
    """For a validator to raise: ``message`` reads after the field's location
    (``"holds a line break"``), ``hint`` says what to do."""
    return PydanticCustomError("revise", "{message}", {"message": message, "hint": hint})


@dataclass(frozen=True)
class Interval:
    """The values a number field may take, read from its ``ge``/``gt``/``le``/``lt``."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def one_sided(self) -> bool:
        return math.isinf(self.high)

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.low:g}"
        if self.one_sided():
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if math.isinf(self.low):
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


def interval(metadata: list[Any] | dict[str, Any]) -> Interval | None:
    """The interval a field's metadata (or an error's context) declares, None if none."""
    bounds: dict[str, Any] = {}
    if isinstance(metadata, dict):
        bounds = {k: v for k, v in metadata.items() if k in ("ge", "gt", "le", "lt")}
    else:
        for item in metadata:
            for key in ("ge", "gt", "le", "lt"):
                if isinstance(item, getattr(annotated_types, key.capitalize())):
                    bounds[key] = getattr(item, key)
    if not bounds:
        return None
    low, high = bounds.get("ge", bounds.get("gt", -math.inf)), bounds.get("le", bounds.get("lt"))
    return Interval(low, math.inf if high is None else high, "gt" in bounds, "lt" in bounds)


@dataclass(frozen=True)
class Problem:
    """One mistake: ``where`` it is, the sentence that says it, what to do about it."""

    kind: str  # pydantic's error type ("missing", "less_than_equal", ...)
    field: str | None  # the top-level field, None when the error is not about one
    text: str  # the whole sentence, starting with the location
    hint: str | None = None


UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
MISSING = ("missing", "missing_argument")
LENGTH = ("too_short", "too_long")


def problems(
    error: ValidationError,
    config: type,
    *,
    aliases: Mapping[str, str] | None = None,
    where: Callable[[list[Any]], str] | None = None,
    unknown: str = "field",
) -> list[Problem]:
    """Every mistake ``error`` holds about an instance of ``config`` (a pydantic dataclass or
    model), in revise's words. ``aliases`` maps names people use for a choice to the choice;
    ``where`` writes a location (default ``input_size[1]``); ``unknown`` is what a name not
    among the fields is called ("field", "key")."""
    fields: dict[str, FieldInfo] = config.__pydantic_fields__  # type: ignore[attr-defined]
    style = _Style(aliases or {}, where or _where, unknown)
    errors = error.errors(include_url=False)
    # A list with a wrong item also counts too few valid items: the item's error says it all.
    wrong = {tuple(e["loc"][:-1]) for e in errors if len(e["loc"]) > 1}
    errors = [e for e in errors if not (e["type"] in LENGTH and tuple(e["loc"]) in wrong)]
    return [_problem(e, fields, style) for e in errors]


def refusal(what: str, found: list[Problem]) -> tuple[str, str | None]:
    """The message and hint of an error refusing ``what`` for the problems ``found``: one
    problem is said with its hint apart; several are numbered, each with its hint."""
    if len(found) == 1:
        return f"{what}: {found[0].text}", found[0].hint
    said: set[str] = set()  # each hint once, after the first problem it helps with
    texts = []
    for i, problem in enumerate(found, 1):
        hint = problem.hint if problem.hint not in said else None
        texts.append(f"({i}) {problem.text}" + (f" ({hint})" if hint else ""))
        said.add(problem.hint or "")
    return f"{what}: {len(found)} problems: " + "; ".join(texts), None


def record_of(
    model: type[Record], data: Any, refused: str, *, kind: type[RevisionError], hint: str
) -> Record:
    """``data`` as the typed record ``model`` (run.json, bundle.json, revision_report.json,
    ...); a value that does not fit is a ``kind`` error, ``refused``, naming each wrong field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, _ = refusal(refused, problems(exc, model))
        raise kind(message, hint=hint) from None


def read_record(
    model: type[Record],
    path: Path,
    what: str,
    *,
    hint: str,
    kind: type[RevisionError] = ModelError,
) -> Record:
    """The typed record in the JSON file ``path``: a damaged one (not JSON, not an object, a
    field of the wrong type) is a ``kind`` error naming the file and each wrong field."""
    data = read_json_object(path, what, kind, hint=hint)
    return record_of(model, data, f"{path} is not a valid {what}", kind=kind, hint=hint)


@dataclass(frozen=True)
class _Style:
    aliases: Mapping[str, str]
    where: Callable[[list[Any]], str]
    unknown: str


def _problem(e: ErrorDetails, fields: dict[str, FieldInfo], style: _Style) -> Problem:
    kind, loc, value, ctx = e["type"], list(e["loc"]), e["input"], e.get("ctx") or {}
    names = list(fields)
    if loc and isinstance(loc[0], int) and loc[0] < len(names):  # given by position
        loc[0] = names[loc[0]]
    name = loc[0] if loc and isinstance(loc[0], str) else None
    info = fields.get(name) if name else None
    where, aliases = style.where(loc), style.aliases
    hints = [m.text for m in (info.metadata if info else []) if isinstance(m, Hint)]
    hint = ctx.get("hint") or (hints[0] if hints else None)
    if kind in UNKNOWN:
        close = did_you_mean(str(name), fields)
        text = f"unknown {style.unknown} {name!r}" + (f" ({close})" if close else "")
        return Problem(kind, name, text)
    if kind in MISSING and len(loc) > 1 and isinstance(loc[-1], int) and info is not None:
        # a fixed-length tuple too short (a nested mapping's missing key is said below)
        text = f"{style.where(loc[:-1])} must have {_arity(info.annotation)} values"
        return Problem("too_short", name, f"{text}, not {_shown(value)}", hint)
    if kind in MISSING:
        about = (info.description or "").rstrip(".") if info else ""
        about = about[:1].lower() + about[1:]
        return Problem(kind, name, f"missing {where}" + (f" ({about})" if about else ""), hint)
    if kind == "revise":  # a validator's own words; one of the whole config has no place
        return Problem(kind, name, f"{where} {ctx['message']}".strip(), hint)
    if kind in LENGTH:
        count = _arity(info.annotation) if info is not None and len(loc) == 1 else None
        if count is None:
            least = kind == "too_short"
            limit = ctx["min_length"] if least else ctx["max_length"]
            count = f"{'at least' if least else 'at most'} {limit}"
        values = "value" if count in (1, "at least 1", "at most 1") else "values"
        return Problem(kind, name, f"{where} must have {count} {values}, not {_shown(value)}", hint)
    must = _must(kind, loc, value, ctx, info)
    if must is None:
        text = str(ctx.get("error") or e["msg"])
        text = f"{text[:1].lower()}{text[1:]}"
        return Problem(kind, name, f"{where}: {text}" if where else text, hint)
    text = f"{where} must be {must}, not {_shown(value)}".strip()
    if kind == "literal_error" and isinstance(value, str):
        close = aliases.get(value.lower())
        suggestion = f"did you mean {close}?" if close else did_you_mean(value, _choices(info))
        text += f" ({suggestion})" if suggestion else ""
    return Problem(kind, name, text, hint)


def _must(
    kind: str,
    loc: list[Any],
    value: Any,
    ctx: dict[str, Any],
    info: FieldInfo | None,
) -> str | None:
    """What the value must be, in words, for the errors revise words itself."""
    top = info if len(loc) == 1 else None  # the bound of the field itself, not of an item
    if top is not None:
        bound = interval(top.metadata)
    else:
        bound = interval(_item_metadata(info.annotation if info else None))
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = bound or interval(ctx)
        finite = top is not None and top.annotation is float and bound.one_sided()
        return f"{bound}" + (" and finite" if finite else "")
    if kind == "finite_number":  # a finite interval says it already
        if bound is None:
            return "a finite number"
        return f"{bound}" + (" and finite" if math.isinf(bound.low - bound.high) else "")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "a number" if isinstance(value, str) and not _numeric(value) else "a whole number"
    if kind in ("float_type", "float_parsing"):
        return "a number"
    if kind in ("bool_type", "bool_parsing"):
        return "true or false"
    if kind == "string_type":
        return "text"
    if kind in ("tuple_type", "list_type"):
        return "a list"
    if kind in ("dict_type", "model_type", "dataclass_type"):
        return "a mapping of names to values"
    if kind == "string_too_short":
        return f"at least {ctx['min_length']} character{'s' * (ctx['min_length'] != 1)} of text"
    if kind == "literal_error" and info is not None:
        return "one of " + ", ".join(_choices(info))
    return None


def _where(loc: list[Any]) -> str:
    """``input_size[1]``, ``arch_kwargs.widths``: a location as a user writes it."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _shown(value: Any) -> str:
    """The value given, as Python writes it; inf and nan given as text are shown as numbers."""
    if isinstance(value, str) and _numeric(value) and not math.isfinite(float(value)):
        return value.strip()
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _choices(info: FieldInfo | None) -> list[str]:
    """The choices of a ``Literal`` field (through Optional and Annotated)."""

    def values(annotation: Any) -> list[Any]:
        if typing.get_origin(annotation) is Literal:
            return list(typing.get_args(annotation))
        return [c for arg in typing.get_args(annotation) for c in values(arg)]

    return [str(c) for c in values(info.annotation if info else None) if c is not None]


def _item_metadata(annotation: Any) -> list[Any]:
    """The constraints on the items of a tuple or list field (its items are alike)."""
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Annotated:
            inner = [m.metadata if isinstance(m, FieldInfo) else [m] for m in arg.__metadata__]
            return [m for group in inner for m in group] + _item_metadata(arg)
        found = _item_metadata(arg)
        if found:
            return found
    return []


def _arity(annotation: Any) -> int | None:
    """How many values a fixed-length tuple in ``annotation`` holds, None if none."""
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        return None if Ellipsis in args else len(args)
    counts = [_arity(arg) for arg in typing.get_args(annotation)]
    return next((c for c in counts if c is not None), None)
