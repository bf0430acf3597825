"""Decoded images as the stages use them: one set (:class:`DecodedSet`) and the named sets of a
run (:class:`DecodedSets`: forget / retain / heldout_forget / heldout_retain).

A set holds pixel-space images (``card.pixel_range``, not normalised: the model wrapper
normalises), their labels and, when they came from a manifest, its rows, image for image. The
unlearning methods train on ``x`` and ``y``; evaluation groups by the rows' columns; records
name the rows by sample key. :func:`revise.data.tensors.load_tensors` decodes manifest rows into
one set, :func:`revise.data.tensors.prepare` a labelled manifest into the sets of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from revise.data import manifest as manifest_mod
from revise.data.loaders import IndexFailure

UNLABELLED = -1  # the label (in ``y``) of an image whose manifest row has none


@dataclass
class DecodedSet:
    """Images in pixel space and their labels; ``x[i]`` is ``rows.iloc[i]`` when rows are known.

    ``failures``: the rows it was decoded from that could not be decoded (left out of it).
    """

    x: torch.Tensor  # (N, C, H, W) float32 in card.pixel_range (not normalised)
    y: torch.Tensor  # (N,) int64 class indices, UNLABELLED where a row has no label
    rows: pd.DataFrame | None = None  # the manifest rows, same order (None: bare tensors)
    failures: list[IndexFailure] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")
        if self.rows is not None and len(self.rows) != len(self.x):
            raise ValueError(f"{len(self.x)} images but {len(self.rows)} manifest rows")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def keys(self) -> list[str]:
        """The images' sample keys (from their manifest rows)."""
        if self.rows is None:
            raise ValueError("this set has no manifest rows, so no sample keys")
        return [str(k) for k in self.rows["sample_key"]]

    def to(self, device: torch.device) -> DecodedSet:
        """The set with its tensors on ``device`` (channels_last images on CUDA)."""
        x = self.x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return DecodedSet(x, self.y.to(device, non_blocking=True), self.rows, self.failures)


def labels_of(rows: pd.DataFrame) -> torch.Tensor:
    """The rows' ``label`` column as class indices, UNLABELLED where a row has no (integer)
    label or there is no such column."""
    if "label" not in rows.columns:
        return torch.full((len(rows),), UNLABELLED, dtype=torch.long)
    values = pd.to_numeric(rows["label"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    known = np.isfinite(values) & (values == np.round(values))
    out = np.full(len(values), UNLABELLED, dtype=np.int64)
    out[known] = values[known].astype(np.int64)
    return torch.from_numpy(out)


@dataclass
class DecodedSets:
    """The named decoded sets of a run: forget / retain / heldout_forget / heldout_retain."""

    forget_selection: str | None
    sets: dict[str, DecodedSet]
    digests: dict[str, str]
    failures: list[IndexFailure] = field(default_factory=list)
    seconds: float = 0.0  # wall-clock of partitioning and decoding
    left_out: dict[str, list[str]] = field(default_factory=dict)  # set -> undecodable sample keys

    def counts(self) -> dict[str, int]:
        return {name: len(s) for name, s in self.sets.items()}

    def left_out_record(self, listed: int = 20) -> dict[str, Any]:
        """What decoding dropped from each set, for run records and reports: counts and the
        first sample keys (keys, not paths: a site's folder names can hold patient names)."""
        return {
            name: {"n": len(keys), "sample_keys": keys[:listed]}
            for name, keys in self.left_out.items()
            if keys
        }


def split_calibration(
    data: DecodedSets, fraction: float
) -> tuple[DecodedSets, dict[str, DecodedSet]]:
    """(``data`` without its calibration rows, the calibration rows of each held-out set)."""
    from revise.data.calibration import HELDOUT_SETS, calibration_mask

    judged, calib = dict(data.sets), {}
    for name in HELDOUT_SETS:
        subset = data.sets.get(name)
        if subset is None:
            subset = DecodedSet(torch.empty(0), torch.empty(0, dtype=torch.long), pd.DataFrame())
        mask = calibration_mask(subset.rows, fraction).to_numpy() if len(subset) else None
        if mask is None:
            calib[name] = subset
            continue
        take = torch.tensor(mask, dtype=torch.bool)
        keep = ~take
        judged[name] = DecodedSet(
            subset.x[keep], subset.y[keep], subset.rows[~mask].reset_index(drop=True)
        )
        calib[name] = DecodedSet(
            subset.x[take], subset.y[take], subset.rows[mask].reset_index(drop=True)
        )
    kept = DecodedSets(
        data.forget_selection,
        judged,
        {name: manifest_mod.digest(s.rows) for name, s in judged.items()},
        data.failures,
        data.seconds,
        data.left_out,
    )
    return kept, calib
