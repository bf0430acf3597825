"""What a validation report records of what it validated, so that its verdict can be bound to
files later: the digests of the models' weights, of the ONNX model and of a bundle's files, and
the versions of the software that measured them."""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from revise._validation_record import BundleFiles, OnnxFile
from revise.errors import UsageError
from revise.models.card import ModelCard
from revise.models.io import LoadedModel


def digest(loaded: LoadedModel) -> str:
    """The weights' digest, whatever the file format: the same value a run record gives as
    ``base_model_digest``, so a report and the run it validates can be matched."""
    from revise.models.io import weights_digest

    return weights_digest(loaded.module)


def bundle_files(candidate: LoadedModel) -> BundleFiles | None:
    """The digests of the candidate bundle's files (None: the candidate is not a bundle). A
    bundle is validated with the card it ships: the verdict is about its card.json."""
    from revise.export.bundle_validation import validation_record
    from revise.export.manifest import is_bundle

    path = Path(candidate.path)
    if not (path.is_dir() and is_bundle(path)):
        return None
    card_file = path / "card.json"
    shipped = ModelCard.load(card_file) if card_file.is_file() else None
    if shipped is None or _how_fed(shipped) != _how_fed(candidate.card):
        what = "another card than its card.json" if shipped else "a card it does not ship"
        raise UsageError(
            f"{path} is validated with {what}: the verdict would not be about the bundle shipped",
            hint="drop {card} and {arch} (a bundle is validated with its own card.json)",
            options=("card", "arch"),
        )
    return BundleFiles(**validation_record(path))


def _how_fed(card: ModelCard) -> ModelCard:
    """The card without where its weights came from (a --card given for the deployed model
    says nothing of that, and need not)."""
    return replace(card, source_format="", source_sha256="")


def onnx_file(onnx_path: str | Path | None) -> OnnxFile | None:
    """The ONNX model's path and digests (of the file, and of its graph without metadata)."""
    if onnx_path is None:
        return None
    from revise._io.digests import sha256_file
    from revise.export.onnx_file import graph_digest

    return OnnxFile(
        path=str(onnx_path),
        sha256=sha256_file(onnx_path),
        graph_sha256=graph_digest(onnx_path),
    )


def software() -> dict[str, str]:
    """The versions of revise, Python, the numeric packages and the platform."""
    import sklearn

    import revise

    versions = {
        "revise": revise.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
    }
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions
