"""Hyperparameters of the unlearning methods, declared once with their bounds.

A method's config is a :func:`settings` dataclass (pydantic's). Every field but a true/false
switch declares the values it may take where it is declared: an interval of finite numbers with
pydantic's bounds (``Field(0.1, ge=0, le=1)`` is [0, 1], ``Field(1e-5, gt=0)`` is (0, inf)) or
a choice (``Literal[...]``), optionally with a :class:`~revise._schema.Hint` of what to do
instead. pydantic checks them whenever a config is made or changed - by ``make_config`` (``--set``
text, a recipe, a sweep grid: values converted to the field's type) or in Python
(``PSGConfig(eps=2)``, ``config.eps = 2``) - and a config with mistakes is refused with all of
them at once, as one UsageError naming the method, each field, its bound and the value given.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ConfigDict, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from revise._schema import UNKNOWN, Problem, problems, refusal
from revise.errors import UsageError
from revise.registry import did_you_mean

# Unknown names refused, inf and nan refused, and a field set after the config is made checked.
SETTINGS = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

C = TypeVar("C", bound=type)


def settings(cls: C) -> C:
    """Make ``cls`` a method's config: a dataclass whose fields are checked by pydantic and
    whose mistakes are refused as one UsageError."""
    cls._refuse = model_validator(mode="wrap")(classmethod(_refuse))  # type: ignore[attr-defined]
    return dataclass(cls, config=SETTINGS)  # type: ignore[return-value]


def _refuse(cls: type, data: Any, handler: Any) -> Any:
    try:
        return handler(data)
    except ValidationError as exc:
        raise refused(cls, exc) from None


def refused(config_type: type, error: ValidationError) -> UsageError:
    """``error`` about a config of ``config_type`` as one UsageError: the unknown names first,
    with a did-you-mean and the known names, then each wrong value."""
    method = _method(config_type)
    found = problems(error, config_type)
    unknown = [str(p.field) for p in found if p.kind in UNKNOWN]
    found = [p for p in found if p.kind not in UNKNOWN]
    if unknown:
        fields = config_type.__pydantic_fields__  # type: ignore[attr-defined]
        close = did_you_mean(unknown[0], fields)
        text = f"{method} has no hyperparameter(s) {', '.join(unknown)}"
        text += f" ({close})" if close else ""
        found.insert(0, Problem("unknown", None, text, f"known: {', '.join(fields)}"))
    if unknown and len(found) == 1:  # it names the method itself
        return UsageError(found[0].text, hint=found[0].hint)
    message, hint = refusal(method, found)
    return UsageError(message, hint=hint)


def _method(config_type: type) -> str:
    """The name the method of ``config_type`` is registered under (its class name if none)."""
    from revise.unlearn.base import METHODS

    names = [name for name in METHODS.names() if METHODS.get(name).config_type is config_type]
    return names[0] if names else config_type.__name__
