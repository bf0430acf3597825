"""Unlearning methods: one module each, registered by name in ``base.METHODS``."""

from __future__ import annotations

import importlib
import pkgutil

_NOT_METHODS = {"api", "auto", "base", "checkpoint", "settings", "target"}


def load_builtin_methods() -> None:
    """Import every method module of this package, so that each registers itself."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_METHODS and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
