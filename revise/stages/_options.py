"""Stage options as pydantic models: what a recipe section and a command's flags both give.

A field's name is the CLI flag without its dashes (``heldout_select`` is ``--heldout-select``);
its validators say what is wrong with the value without naming the option (``fail``), and other
options as ``{name}``, so that each shell names them as its user writes them (``--opset``,
``export.opset``). Problems are worded by :mod:`revise._schema`, as every config's are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from revise._schema import Problem, fail, problems, refusal
from revise.errors import OptionError, RevisionError, UsageError

Options = TypeVar("Options", bound="StageOptions")


class StageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    @classmethod
    def path_fields(cls) -> set[str]:
        """The fields holding files or folders (each an input: it must exist)."""
        out = set()
        for name, info in cls.model_fields.items():
            types = get_args(info.annotation) or (info.annotation,)
            if Path in types or any(Path in get_args(t) for t in types):
                out.add(name)
        return out

    def given(self) -> dict[str, Any]:
        """The options set to something other than their defaults, in field order."""
        defaults = {
            n: f.get_default(call_default_factory=True) for n, f in type(self).model_fields.items()
        }
        return {
            name: value
            for name, value in self.model_dump().items()
            if value != defaults[name] and value not in (None, (), [])
        }

    def flags(self) -> list[str]:
        """The given options as the command line writes them: a switch by its flag (off: by
        its ``off_flag``), a list by its flag per item (or as one ``joined`` value)."""
        out: list[str] = []
        for name, value in self.given().items():
            flag = "--" + name.replace("_", "-")
            extra = type(self).model_fields[name].json_schema_extra or {}
            if isinstance(value, bool):
                off = extra.get("off_flag")
                out += [flag] if value else [str(off)] if off else []
            elif isinstance(value, list | tuple) and "joined" in extra:
                out += [flag, str(extra["joined"]).join(f"{item:g}" for item in value)]
            elif isinstance(value, list | tuple):
                for item in value:
                    out += [flag, str(item)]
            else:
                out += [flag, str(value)]
        return out


@dataclass(frozen=True)
class Collected(Generic[Options]):
    value: Options | None
    problems: list[Problem]  # each its whole sentence, starting with the option as spelled


def collect(
    cls: type[Options],
    values: Mapping[str, Any],
    *,
    spell: Callable[[str], str] = str,
) -> Collected[Options]:
    """``cls(**values)`` and every problem found (:func:`revise._schema.problems`), each naming
    its option as ``spell`` says it, and so the other options a message names (``{name}``)."""
    try:
        return Collected(cls(**values), [])
    except ValidationError as exc:
        found = problems(exc, cls, where=lambda loc: _located(loc, spell), unknown="option")

    def named(text: str | None) -> str | None:
        for field in cls.model_fields if text else ():
            text = text.replace("{" + field + "}", spell(field))
        return text

    return Collected(None, [replace(p, text=named(p.text), hint=named(p.hint)) for p in found])


def build(
    cls: type[Options],
    values: Mapping[str, Any],
    *,
    what: str,
    spell: Callable[[str], str] = str,
) -> Options:
    """``cls(**values)``, or one UsageError refusing ``what`` for every problem found."""
    found = collect(cls, values, spell=spell)
    if found.value is not None:
        return found.value
    message, hint = refusal(what, found.problems)
    raise UsageError(message, hint=hint)


def _located(loc: list[Any], spell: Callable[[str], str]) -> str:
    """``--grid[2]``, ``merge.grid[2]``: a location with its option spelled."""
    if not loc:
        return ""
    return spell(str(loc[0])) + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:]
    )


def check(test: Callable[[], object]) -> None:
    """Run one of the library's own checks inside a validator: what it refuses becomes the
    field's problem, in its words (an OptionError's words after its option's name)."""
    try:
        test()
    except OptionError as exc:
        keep = "{%s}"  # other options it names stay {name}: collect() spells them
        raise fail(named(exc.message, exc.options, keep).partition(" ")[2], exc.hint) from None
    except RevisionError as exc:
        raise fail(str(exc)) from None


def named(text: str, options: tuple[str, ...], form: str) -> str:
    for option in options:
        text = text.replace("{" + option + "}", form % option)
    return text


def parse_scalar(text: str) -> Any:
    """A command-line value: int, then float (``1e-4`` too, which YAML 1.1 reads as text),
    then a YAML scalar (true/false, strings)."""
    import yaml

    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)
