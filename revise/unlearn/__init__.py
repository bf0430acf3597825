"""Unlearning: the methods, one module each, registered by name in ``base.METHODS``; the API
that runs them (``api``, ``auto``); and what the unlearn stage does around a run: evaluation
(``evaluate``), plain training (``train``), a run on decoded sets (``pipeline``) and sweeps
(``sweep``)."""

from __future__ import annotations

import importlib
import pkgutil

# the modules of the package that are not methods: its API and the stage functions over it
_NOT_METHODS = {
    "api",
    "auto",
    "base",
    "checkpoint",
    "evaluate",
    "pipeline",
    "settings",
    "sweep",
    "sweep_grid",
    "sweep_ranking",
    "target",
    "train",
}


def load_builtin_methods() -> None:
    """Import every method module of this package, so that each registers itself."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_METHODS and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
