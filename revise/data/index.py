"""Indexing, the public entry point: a site's files -> an :class:`IndexResult` (the manifest).

The loader is chosen by name, or with ``loader="auto"`` by asking every loaded site loader
whether it recognises the root (plugins first, the built-in ``dicom`` loader last, since it
accepts any folder). Labels come from a CSV (:func:`revise.data.manifest.join_labels`) or from
a rule that maps a manifest column to classes (:func:`apply_label_rule`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from revise.data.loaders import IndexResult, SiteLoader
from revise.data.manifest import ALIASES, COLUMNS, join_labels, normalize
from revise.errors import DataError, UsageError
from revise.phi import site_key
from revise.registry import did_you_mean

log = logging.getLogger(__name__)

DICOM = "dicom"


def choose_loader(root: str | os.PathLike, loader: str = "auto") -> SiteLoader:
    """The loader named ``loader``, or for ``"auto"`` the first that recognises ``root``."""
    from revise.data.plugins import get_loader, site_loaders

    if loader != "auto":
        return get_loader(loader)
    root = Path(root)
    loaders = site_loaders()
    order = [name for name in loaders if name != DICOM] + ([DICOM] if DICOM in loaders else [])
    for name in order:
        if loaders[name].can_index(root):
            return loaders[name]
    raise DataError(
        f"no site loader recognises {root} (loaded: {', '.join(sorted(loaders))})",
        hint="pass a DICOM folder or file, or {loader} NAME of an installed plugin",
        options=("loader",),
    )


def index(
    root: str | os.PathLike,
    *,
    loader: str = "auto",
    site: str = "",
    key: bytes | None = None,
    labels: str | os.PathLike | Mapping[str, Any] | None = None,
) -> IndexResult:
    """Index the images under ``root`` into a manifest (headers only, PHI-free).

    ``key`` is the pseudonymisation key (default: the site key, see :mod:`revise.phi`).
    ``labels`` is a label CSV (columns ``sop_instance_uid|sample_key|path`` and ``label``) or a
    rule ``{"column": "body_part", "map": {"CHEST": 0, "HEAD": 1}}``. Unreadable files end up
    in ``failures`` and files without images in ``skipped``; the run goes on.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root} does not exist", hint="pass the folder (or file) to index")
    chosen = choose_loader(root, loader)
    result = chosen.index(root, site=site, key=site_key() if key is None else key)
    manifest = unique_keys(normalize(result.manifest))
    base = root if root.is_dir() else root.parent
    manifest = label_manifest(manifest, labels, base_dir=base)
    return IndexResult(manifest, list(result.failures), list(result.skipped))


def label_manifest(
    manifest: pd.DataFrame,
    labels: str | os.PathLike | Mapping[str, Any] | None,
    *,
    base_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Labels joined from a CSV, or set by a rule ``{"column": ..., "map": {...}}``.
    Relative paths in the CSV's ``path`` column are relative to ``base_dir`` (the indexed
    folder)."""
    if labels is None or not len(manifest):
        return manifest
    if isinstance(labels, Mapping):
        rule = dict(labels)
        unknown = set(rule) - {"column", "map"}
        if unknown or "column" not in rule or "map" not in rule:
            raise UsageError(
                f"label rule {rule!r} is malformed",
                hint='use {"column": "body_part", "map": {"CHEST": 0, "HEAD": 1}}',
            )
        return apply_label_rule(manifest, rule["column"], rule["map"])
    return join_labels(manifest, labels, base_dir=base_dir)


def unique_keys(manifest: pd.DataFrame) -> pd.DataFrame:
    """Give every row its own sample_key.

    The same instance can be stored twice (a copy, another transfer syntax). The first copy
    (by path) keeps the plain key; later copies get a key that also hashes their path, so every
    row stays addressable and a selection by key never silently picks several files.
    """
    dup = manifest["sample_key"].duplicated(keep="first")
    if not dup.any():
        return manifest
    log.warning("%d rows repeat an instance already indexed from another file", int(dup.sum()))
    manifest = manifest.copy()
    manifest.loc[dup, "sample_key"] = [
        "s-" + hashlib.sha256(f"{key}|{path}".encode()).hexdigest()[:16]
        for key, path in zip(
            manifest.loc[dup, "sample_key"], manifest.loc[dup, "path"], strict=True
        )
    ]
    return manifest


def apply_label_rule(df: pd.DataFrame, column: str, mapping: Mapping[Any, Any]) -> pd.DataFrame:
    """Label rows by the value of ``column``: ``mapping`` value -> class index.

    Values are compared as stripped strings, exactly (``"CHEST"`` is not ``"chest"``). Rows
    whose value is not in the map keep their label (unlabelled after indexing). A rule that
    labels no row at all is an error: it is almost always the wrong column or spelling.
    """
    name = ALIASES.get(column, column)
    if name not in df.columns:
        known = [c for c in [*COLUMNS, *sorted(ALIASES)] if ALIASES.get(c, c) in df.columns]
        suggestion = did_you_mean(column, known)
        raise UsageError(
            f"label rule: unknown column {column!r}",
            hint=f"{suggestion + '; ' if suggestion else ''}columns: {', '.join(known)}",
        )
    classes: dict[str, int] = {}
    for value, cls in mapping.items():
        try:
            number = int(cls)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(cls, bool) or str(number) != str(cls).strip():
            raise UsageError(f"label rule: class {cls!r} for {value!r} is not an integer")
        classes[str(value).strip()] = number
    out = normalize(df)
    values = out[name].astype("string").str.strip()
    mapped = values.map(classes)
    hit = mapped.notna()
    if len(out) and not hit.any():
        seen = sorted(values.dropna().unique().tolist())[:10]
        raise DataError(
            f"label rule on {name}: no row has any of {sorted(classes)}",
            hint=f"values present: {seen}",
        )
    out.loc[hit, "label"] = mapped[hit].astype("Int64")
    return normalize(out)
