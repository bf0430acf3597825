"""Site loaders: how a site's files become manifest rows and pixel arrays.

DICOM and IDX (MNIST-format files) are built in; plugins add others (see
:mod:`revise.data.plugins`).
Every row of a manifest names its loader in the ``loader`` column, and decoding dispatches on it,
so one manifest may mix sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd


@dataclass
class IndexFailure:
    """A file that could not be indexed, with the reason (the run goes on without it)."""

    path: str
    reason: str


@dataclass
class IndexResult:
    manifest: pd.DataFrame
    failures: list[IndexFailure] = field(default_factory=list)
    skipped: list[IndexFailure] = field(
        default_factory=list
    )  # readable but not images (SR, DICOMDIR…)


@runtime_checkable
class SiteLoader(Protocol):
    """What a loader provides. ``name`` is written into each row's ``loader`` column."""

    name: str

    def can_index(self, root: Path) -> bool:
        """True when ``root`` (a folder or file) looks like this loader's layout."""
        ...

    def index(self, root: Path, *, site: str, key: bytes) -> IndexResult:
        """Rows for every image under ``root`` (manifest columns; patient as keyed pseudonym)."""
        ...

    def read_pixels(self, row: dict[str, Any]) -> np.ndarray:
        """Pixels of one row as float32 (C, H, W) in the source's *display* values.

        DICOM: modality LUT applied, MONOCHROME1 inverted, colour as RGB. Intensity scaling to
        the model's range happens later, per the model card.
        """
        ...
