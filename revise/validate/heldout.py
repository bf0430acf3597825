"""Held-out data from where sites keep it: a DICOM folder, a manifest, or a DICOMweb server.

The rows come back marked ``split = heldout`` and replace the held-out rows of the training
manifest; an image that is also a training image is dropped from the held-out side (it would
flatter the model) and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from revise.data import manifest as manifest_mod
from revise.errors import DataError, UsageError

log = logging.getLogger(__name__)


@dataclass
class HeldoutData:
    rows: pd.DataFrame
    kind: str  # dicomweb | folder | manifest
    source: str
    failures: int = 0
    fetched: int = 0  # DICOMweb: instances downloaded now (the rest came from the cache)

    def describe(self) -> dict[str, Any]:
        from revise.data._dicomweb_http import redact_url  # a server URL may carry credentials

        out = {
            "source": redact_url(self.source) if is_dicomweb(self.source) else self.source,
            "kind": self.kind,
            "digest": manifest_mod.digest(self.rows),
            "rows": len(self.rows),
            "unreadable": self.failures,
        }
        if self.kind == "dicomweb":
            out["fetched"] = self.fetched
        return out


def is_dicomweb(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def load_heldout(
    source: str,
    *,
    selection: str | None = None,
    labels: str | Path | Mapping[str, Any] | None = None,
    site: str = "",
    cache_dir: Path | None = None,
    timeout: float = 30.0,
) -> HeldoutData:
    """Labelled held-out rows from ``source``; ``selection`` narrows them (on a DICOMweb server
    it is also pushed down to the QIDO-RS query)."""
    from revise.data.select import select

    failures = fetched = 0
    if is_dicomweb(source):
        from revise.data.dicomweb import index_dicomweb

        got = index_dicomweb(
            source,
            selection=selection,
            cache_dir=cache_dir,
            labels=labels,
            site=site,
            timeout=timeout,
        )
        rows, failures, fetched, kind = (
            got.result.manifest,
            len(got.result.failures),
            got.fetched,
            "dicomweb",
        )
        selection = None  # index_dicomweb applied it exactly
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(
                f"held-out source {source} does not exist",
                hint="give a DICOM folder, a manifest (.parquet/.csv) or a DICOMweb URL",
            )
        if path.is_file() and path.suffix in (".parquet", ".csv"):
            rows, kind = manifest_mod.load(path), "manifest"
            if labels is not None:
                raise UsageError(
                    f"{source} is a manifest: its labels are already joined",
                    hint="leave out {heldout_labels}",
                    options=("heldout_labels",),
                )
        else:
            from revise.data.index import index

            result = index(path, site=site, labels=labels)
            rows, failures, kind = result.manifest, len(result.failures), "folder"
    if selection:
        rows = select(rows, selection)
    if rows.empty:
        raise DataError(f"no held-out image came from {source}", hint="check the selection")
    unlabelled = int(rows["label"].isna().sum())
    if unlabelled == len(rows):
        raise DataError(
            f"none of the {len(rows)} held-out images from {source} has a label",
            hint="give {heldout_labels} CSV (sop_instance_uid,label) or a label rule",
            options=("heldout_labels",),
        )
    rows = rows.copy()
    rows["split"] = "heldout"
    return HeldoutData(rows.reset_index(drop=True), kind, source, failures, fetched)


def with_heldout(manifest: pd.DataFrame, heldout: HeldoutData) -> tuple[pd.DataFrame, int]:
    """The training rows of ``manifest`` plus the held-out rows, minus held-out images that are
    also training images; returns (combined manifest, number dropped)."""
    split = manifest["split"].astype("string").fillna("").str.strip().str.lower()
    training = manifest[split != "heldout"]
    seen = set(training["sop_instance_uid"].astype("string").dropna())
    overlap = heldout.rows["sop_instance_uid"].astype("string").isin(seen).to_numpy()
    if overlap.any():
        log.warning(
            "%d held-out images are also training images and are left out of the held-out side",
            int(overlap.sum()),
        )
    combined = pd.concat([training, heldout.rows[~overlap]], ignore_index=True)
    return manifest_mod.normalize(combined), int(overlap.sum())
