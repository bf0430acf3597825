"""revise: revise a deployed clinical image model without retraining it.

``import revise`` is cheap: the heavy stages (torch, onnx, pydicom) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "ModelCard": "revise.models.card",
    "load_model": "revise.models.io",
    "save_model": "revise.models.io",
    "index": "revise.data.index",
    "select": "revise.data.select",
    "load_tensors": "revise.data.tensors",
    "unlearn": "revise.unlearn.api",
    "evaluate": "revise.unlearn.evaluate",
    "export_onnx": "revise.export.onnx",
    "load_criteria": "revise.validate.criteria",
    "validate": "revise.validate.api",
    "RevisionError": "revise.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'revise' has no attribute {name!r}")
