"""Manifest rows -> model-ready pixel tensors, as the model card says; a labelled manifest ->
the decoded sets of a run (:func:`prepare`).

Each row is decoded by its loader (``loader`` column) into display values, then
:func:`to_model_input` applies the card's intensity mapping, channel conversion, resize and
pixel range. The result is in *pixel space* (``card.pixel_range``); the model's mean/std
normalisation happens later, inside the model wrapper.

With ``cache_dir`` the per-row results are kept on disk as ``.npy`` files keyed by the file's
identity (path, size, mtime) and the card's preprocessing fields, so a second run with the same
card does not open the source files at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from revise._io.atomic import atomic_path
from revise._logs import loggers_silenced
from revise.data import manifest as manifest_mod
from revise.data.loaders import IndexFailure, SiteLoader
from revise.data.sets import DecodedSet, DecodedSets, labels_of
from revise.data.split import partition
from revise.errors import DataError, RevisionError
from revise.models.card import ModelCard

log = logging.getLogger(__name__)

# Bump when to_model_input (or the loaders' display mapping) changes meaning: old cache entries
# then simply stop matching.
PREPROCESS_VERSION = 1
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


def to_model_input(pixels: np.ndarray, card: ModelCard) -> np.ndarray:
    """Display values ``(C, H, W)`` -> float32 ``(card.in_channels, *card.input_size)``.

    1. intensity to [0, 1]: ``minmax`` per image (a constant image becomes zeros), ``voi``
       clipped (the loader already applied the window), ``fixed`` by ``intensity_range``;
    2. channels: 3 -> 1 by ITU-R BT.601 luma, 1 -> 3 by repetition;
    3. resize to ``input_size`` (bilinear, antialiased, align_corners=False);
    4. [0, 1] scaled to ``pixel_range``.
    """
    x = np.asarray(pixels, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or 0 in x.shape:
        raise DataError(f"pixels must be (C, H, W), got shape {tuple(np.shape(pixels))}")
    if not np.isfinite(x).all():
        raise DataError("pixels contain NaN or infinite values")

    if card.intensity == "minmax":
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    elif card.intensity == "voi":
        x = np.clip(x, 0.0, 1.0)
    else:
        lo, hi = card.intensity_range  # type: ignore[misc]
        if hi <= lo:
            raise DataError(f"model card intensity_range {card.intensity_range} is empty")
        x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)

    channels = x.shape[0]
    if channels != card.in_channels:
        if channels == 3 and card.in_channels == 1:
            x = np.tensordot(LUMA, x, axes=1)[None]
        elif channels == 1 and card.in_channels == 3:
            x = np.repeat(x, 3, axis=0)
        else:
            raise DataError(
                f"image has {channels} channel(s) but the model card expects {card.in_channels}",
                hint="only 1 <-> 3 channel conversion is supported",
            )

    out = x.astype(np.float32)
    size = tuple(card.input_size)
    if out.shape[1:] != size:
        t = torch.from_numpy(np.ascontiguousarray(out))[None]
        t = torch.nn.functional.interpolate(
            t, size=size, mode="bilinear", antialias=True, align_corners=False
        )
        out = np.clip(t[0].numpy(), 0.0, 1.0)  # the filter is convex: clip only rounding
    low, high = card.pixel_range
    if (low, high) != (0.0, 1.0):
        out = low + out * np.float32(high - low)
    return np.ascontiguousarray(out, dtype=np.float32)


def preprocessing_fields(card: ModelCard) -> dict[str, Any]:
    """The card fields that change what :func:`to_model_input` produces."""
    return {
        "in_channels": int(card.in_channels),
        "input_size": [int(v) for v in card.input_size],
        "pixel_range": [float(v) for v in card.pixel_range],
        "intensity": card.intensity,
        "intensity_range": None
        if card.intensity_range is None
        else [float(v) for v in card.intensity_range],
    }


def cache_key(row: dict[str, Any], stat: os.stat_result, card: ModelCard) -> str:
    """sha256 of the row's identity, the file's size and mtime, and the card's preprocessing."""
    ident = {
        "version": PREPROCESS_VERSION,
        "loader": _loader_name(row),
        "sample_key": str(row.get("sample_key")),
        "path": str(row.get("path")),
        "frame": _frame(row),
        "size": int(stat.st_size),
        "mtime_ns": int(stat.st_mtime_ns),
        **preprocessing_fields(card),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _loader_name(row: dict[str, Any]) -> str:
    value = row.get("loader")
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "dicom"
    return str(value).strip() or "dicom"


def _frame(row: dict[str, Any]) -> int:
    value = row.get("frame")
    try:
        return 0 if value is None or pd.isna(value) else int(value)
    except (TypeError, ValueError):
        return 0


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.npy"


def _cache_load(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as exc:
        log.warning("ignoring unreadable cache entry %s: %s", path, exc)
        return None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != shape:
        log.warning("ignoring cache entry %s with unexpected shape/dtype", path)
        return None
    return arr


def _cache_save(path: Path, arr: np.ndarray) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    except OSError as exc:  # a full or read-only cache must not fail the run
        log.warning("could not write cache entry %s: %s", path, exc)


MAX_LISTED_FAILURES = 5


@contextlib.contextmanager
def _pydicom_tracebacks_off() -> Iterator[None]:
    """pydicom logs a failing decoder's exception with its traceback before raising it; each
    failure is reported once, by load_tensors, with its file and reason. (pydicom's config is
    imported first: importing it resets its logger's level.)"""
    import pydicom.config  # noqa: F401

    with loggers_silenced("pydicom"):
        yield


def _reason(exc: Exception) -> str:
    if isinstance(exc, RevisionError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def load_tensors(
    manifest: pd.DataFrame,
    card: ModelCard,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> DecodedSet:
    """Decode every manifest row into pixel-space tensors for ``card`` (manifest order), with
    the rows' labels (UNLABELLED where a row has none).

    Rows that cannot be decoded are left out and listed in ``failures`` (the run goes on); if
    no row decodes, :class:`DataError`. Rows of one file are decoded together, so a file is
    read once. With ``cache_dir`` results are reused across calls (see module docs).
    """
    from revise.data.plugins import get_loader

    if manifest is None or len(manifest) == 0:
        raise DataError("nothing to decode: the manifest has no rows")
    records: list[dict[str, Any]] = manifest.to_dict("records")
    cache = Path(cache_dir) if cache_dir is not None else None
    shape = (int(card.in_channels), *(int(v) for v in card.input_size))
    voi = card.intensity == "voi"

    groups: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(records):
        groups.setdefault((_loader_name(row), str(row.get("path"))), []).append(i)

    loaders: dict[str, SiteLoader] = {}
    results: list[np.ndarray | None] = [None] * len(records)
    failures: dict[int, IndexFailure] = {}
    memory: dict[str, np.ndarray] = {}

    def fail(i: int, reason: str) -> None:
        row = records[i]
        failures[i] = IndexFailure(
            str(row.get("path")), f"{row.get('sample_key')} (frame {_frame(row)}): {reason}"
        )

    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(transient=True, console=Console(stderr=True))  # stdout holds results
        bar.start()
        task = bar.add_task("decoding", total=len(records))
    # once for the whole loop: setting a logger level clears every logger's cache
    quiet = contextlib.ExitStack()
    quiet.enter_context(_pydicom_tracebacks_off())
    try:
        for (loader_name, path), members in groups.items():
            try:
                stat = os.stat(path)
            except OSError as exc:
                for i in members:
                    fail(i, f"file is not readable: {exc.strerror}")
                if bar is not None:
                    bar.advance(task, len(members))
                continue
            for i in members:
                row = records[i]
                key = cache_key(row, stat, card)
                arr = memory.get(key)
                if arr is None and cache is not None:
                    arr = _cache_load(_cache_file(cache, key), shape)
                if arr is None:
                    if loader_name not in loaders:
                        loaders[loader_name] = get_loader(loader_name)
                    try:
                        pixels = loaders[loader_name].read_pixels(row, voi=voi)
                        arr = to_model_input(pixels, card)
                    except Exception as exc:  # any decode problem: count it, go on
                        fail(i, _reason(exc))
                        if bar is not None:
                            bar.advance(task)
                        continue
                    if cache is not None:
                        _cache_save(_cache_file(cache, key), arr)
                memory[key] = arr
                results[i] = arr
                if bar is not None:
                    bar.advance(task)
    finally:
        quiet.close()
        if bar is not None:
            bar.stop()

    ok = [i for i, arr in enumerate(results) if arr is not None]
    failed = [failures[i] for i in sorted(failures)]
    if not ok:
        first = failed[0].reason if failed else "unknown"
        raise DataError(
            f"none of the {len(records)} rows could be decoded (first: {failed[0].path}: {first})",
            hint="check the files and codecs (see the failures of `revise index`)",
        )
    if failed:
        listed = "".join(f"\n  {f.path}: {f.reason}" for f in failed[:MAX_LISTED_FAILURES])
        more = len(failed) - MAX_LISTED_FAILURES
        log.warning(
            "%d of %d rows could not be decoded and are left out:%s%s",
            len(failed),
            len(records),
            listed,
            f"\n  ... and {more} more" if more > 0 else "",
        )
    x = torch.from_numpy(np.stack([results[i] for i in ok]))  # type: ignore[misc]
    rows = manifest.iloc[ok].reset_index(drop=True)
    return DecodedSet(x=x, y=labels_of(rows), rows=rows, failures=failed)


def prepare(
    manifest: pd.DataFrame,
    card: ModelCard,
    forget: str | None,
    *,
    base_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> DecodedSets:
    """Partition the labelled manifest by the forget selection and decode every set once."""
    t0 = time.perf_counter()
    parts = partition(manifest, forget, base_dir=base_dir)
    return decode_sets(parts, card, forget, cache_dir=cache_dir, progress=progress, started=t0)


def decode_sets(
    parts: dict[str, pd.DataFrame],
    card: ModelCard,
    forget: str | None,
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
    started: float | None = None,
) -> DecodedSets:
    """Decode the sets :func:`~revise.data.split.partition` made (each image once)."""
    t0 = time.perf_counter() if started is None else started
    everything = pd.concat(list(parts.values()), ignore_index=True)
    decoded = load_tensors(everything, card, cache_dir=cache_dir, progress=progress)
    position = {key: i for i, key in enumerate(decoded.keys)}
    left_out = {
        name: [str(k) for k in rows["sample_key"] if k not in position]
        for name, rows in parts.items()
    }
    if decoded.failures:  # which sets lost images: a smaller forget set changes the revision
        log.warning(
            "left out, by set: %s",
            ", ".join(f"{name} {len(keys)}" for name, keys in left_out.items() if keys),
        )
    sets: dict[str, DecodedSet] = {}
    for name, rows in parts.items():
        rows = rows[rows["sample_key"].isin(position)].reset_index(drop=True)
        idx = torch.tensor([position[k] for k in rows["sample_key"]], dtype=torch.long)
        labels = torch.tensor(rows["label"].astype(int).to_numpy(), dtype=torch.long)
        bad = labels[(labels < 0) | (labels >= card.num_classes)] if len(labels) else labels
        if len(bad):
            raise DataError(
                f"{name}: label {int(bad[0])} is outside the model's {card.num_classes} classes",
                hint="check the label file against the model card's class_names",
            )
        sets[name] = DecodedSet(decoded.x[idx], labels, rows)
    digests = {name: manifest_mod.digest(s.rows) for name, s in sets.items()}
    seconds = round(time.perf_counter() - t0, 4)
    return DecodedSets(forget, sets, digests, list(decoded.failures), seconds, left_out)
