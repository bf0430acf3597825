"""The recipe document as pydantic types: the keys it takes - at its top, in its ``data:``
section, in each run of ``unlearn:`` and in ``sign:`` - and the type of each value. The stage
sections (``merge:``, ``export:``, ``validate:``) hold the stages' own options
(:mod:`revise.stages`) and are checked against them while their stages are planned.

Every problem is collected with its location (``unlearn[2].seed``) and worded as revise words
every config's (:mod:`revise._schema`). A part with problems still gives the values that passed,
each as its type made it (the others at their defaults, None when required), so that the checks
after it - paths, models, selections, methods - go on and report theirs too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
)

from revise._schema import Hint, fail, problems
from revise.errors import UsageError
from revise.recipe.model import _place, _Problems


def _scalar(value: Any) -> Any:
    """A number or true/false where text is meant (``workdir: 2024``, ``name: 7``) is that text;
    a list, a mapping or nothing is left for the type to refuse."""
    return str(value) if isinstance(value, int | float) else value


Text = Annotated[str, BeforeValidator(_scalar)]
Switch = Annotated[bool, Strict()]  # true or false, never "yes" or 1


def _whole(minimum: int | None = None) -> Any:
    """A whole number (at least ``minimum``): 2.0 is 2, while 1.5 or true is refused, never
    rounded, and so is nothing (``seed:`` left empty)."""
    least = "" if minimum is None else f" >= {minimum}"

    def check(value: Any) -> int:
        number = int(value) if isinstance(value, float) and value.is_integer() else value
        whole = isinstance(number, int) and not isinstance(number, bool)
        if not whole or (minimum is not None and number < minimum):
            raise fail(f"{value!r} is not an integer{least}")
        return number

    return BeforeValidator(check)


def _one_source(data: Any) -> Any:
    """``data:`` names the site's images one way: a manifest, or images to index."""
    if isinstance(data, Mapping):
        given = [key for key in ("manifest", "images") if data.get(key) is not None]
        if len(given) != 1:
            raise fail("give exactly one of manifest: or images:")
    return data  # not a mapping: DataSection says so


_RUNS = "e.g. [{method: psg, settings: {lr: 0.001}}]"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    SHAPE: ClassVar[str | None] = None  # what the whole part looks like, said when it is wrong


class Recipe(_Part):
    """The document's top level."""

    workdir: Text = Field("revise-run", description="every output, in this folder")
    model: Text = Field(description="the deployed model: its folder, or a weights file")
    card: Text | None = Field(None, description="the model card, for bare weights")
    arch: Text | None = Field(None, description="the architecture, for bare weights")
    data: Annotated[Any, AfterValidator(_one_source)] = Field(
        description="the site's images: {manifest: FILE} or {images: FOLDER, labels: CSV}"
    )
    forget: Text = Field(description='the selection to forget, e.g. device == "Borealis CR-7"')
    unlearn: Annotated[list[Any], Hint(_RUNS)] = Field(
        min_length=1, description=f"the unlearning runs, {_RUNS}"
    )
    merge: Any = Field(None, description="`revise merge` options")
    export: Any = Field(None, description="`revise export` options")
    validate_: Any = Field(None, alias="validate", description="`revise validate` options")
    sign: Any = Field(None, description="{key: FILE, password_env: VAR, allow_unvalidated: bool}")
    device: Text = Field("auto", description="where the computing stages run")
    seed: Annotated[int, _whole()] = 0
    cache: Text | None = Field(None, description="decoded images (default: workdir/cache)")
    checkpoint_every: Annotated[int, _whole(0)] = Field(
        50, description="steps between the unlearning runs' checkpoints (0: none)"
    )
    nproc_per_node: Annotated[int, _whole(1)] = Field(
        1, description="torchrun workers for each unlearning run (one per GPU)"
    )
    compile: Switch = Field(False, description="torch.compile the unlearning runs")


class DataSection(_Part):
    """``data:``: a manifest, or a folder of images that an index stage turns into one."""

    SHAPE = "{manifest: FILE} or {images: FOLDER, labels: CSV}"

    manifest: Text | None = Field(None, description="a manifest written by `revise index`")
    images: Text | None = Field(None, description="the folder (or file) `revise index` reads")
    labels: Text | None = Field(None, description="a CSV of labels for the images")
    site: Text | None = Field(None, description="the site's name, written into each row")
    loader: Text | None = Field(None, description="the site loader (default: found)")


class RunSection(_Part):
    """One run of ``unlearn:``, as `revise unlearn` takes it."""

    SHAPE = "e.g. {method: psg, settings: {lr: 0.001}}; method: is auto when not given"

    name: Text | None = Field(None, description="its folder under workdir/runs (default: method)")
    method: Text | None = Field(None, description="the unlearning method (default: auto)")
    settings: dict[Any, Any] | None = Field(None, description="the method's hyperparameters")
    # nothing given means the recipe's seed; given empty, it is refused like the recipe's
    seed: Annotated[int | None, _whole()] = None


class SignSection(_Part):
    """``sign:``, as `revise sign` takes it."""

    SHAPE = "{key: FILE, password_env: VAR, allow_unvalidated: true or false}"

    key: Text = Field(description="the private key (make one with `revise keygen`)")
    password_env: Text | None = Field(None, description="the variable holding its password")
    allow_unvalidated: Switch = Field(False, description="sign without a validate: section")


@dataclass
class Document:
    """A recipe read: its parts as their types made them (see the module docstring)."""

    recipe: Recipe
    data: DataSection | None  # None: not given (or not a mapping: a problem already)
    runs: list[RunSection | None] = field(default_factory=list)  # None: not a mapping
    sign: SignSection | None = None


def read_document(doc: Any, source: Path, problems: _Problems) -> Document:
    """``doc`` (the recipe's YAML) as a :class:`Document`, each of its problems added to
    ``problems``. Not a mapping, it is no recipe: a UsageError at once."""
    if not isinstance(doc, Mapping):
        raise UsageError(f"{source}: a recipe is a YAML mapping (see `revise run --help`)")
    recipe = _checked(Recipe, doc, "", problems)
    assert recipe is not None  # a mapping always gives one
    data = _checked(DataSection, doc["data"], "data", problems) if "data" in doc else None
    runs = [
        _checked(RunSection, run, f"unlearn[{i}]", problems)
        for i, run in enumerate(recipe.unlearn or [], 1)
    ]
    sign = None if recipe.sign is None else _checked(SignSection, recipe.sign, "sign", problems)
    return Document(recipe, data, runs, sign)


Part = TypeVar("Part", bound=_Part)


def _checked(cls: type[Part], value: Any, where: str, found: _Problems) -> Part | None:
    """``value`` as ``cls``, each problem added under its location; None when ``value`` is no
    mapping. With problems, the fields that passed keep their values (see the docstring)."""
    given = {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else value
    try:
        return cls.model_validate(given)
    except ValidationError as exc:
        error = exc
    for problem in problems(error, cls, where=lambda loc: _located(where, loc), unknown="key"):
        if problem.field is None and problem.hint is None:  # the part as a whole is wrong
            problem = replace(problem, hint=cls.SHAPE)
        found.add(*_place(where, problem, cls.model_fields, unknown="unknown key"))
    if not isinstance(given, dict):
        return None
    wrong = {str(e["loc"][0]) for e in error.errors(include_url=False) if e["loc"]}
    values: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        key = info.alias or name
        if key in given and key not in wrong:
            values[name] = _field_type(cls, name).validate_python(given[key])
        elif info.is_required():
            values[name] = None
        else:
            values[name] = info.get_default(call_default_factory=True)
    return cls.model_construct(**values)


@cache
def _field_type(cls: type[_Part], name: str) -> TypeAdapter[Any]:
    """One field's type with its constraints and validators: a value checked alone."""
    info = cls.model_fields[name]
    kind = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return TypeAdapter(kind)


def _located(where: str, loc: list[Any]) -> str:
    """``unlearn[2].seed``: a location as the recipe is written (its runs counted from 1); none
    for the part as a whole (it is said where the part is)."""
    if not loc:
        return ""
    out = where
    for part in loc:
        out += f"[{part + 1}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out
