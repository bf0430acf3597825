"""The built-in IDX site loader: MNIST-format files (MNIST, Fashion-MNIST, KMNIST, EMNIST).

A site is a folder holding pairs of files that share a name prefix::

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]

(``-images.idx3-ubyte``, the spelling of some mirrors, is accepted too). Only the folder's top
level is looked at: ``--loader auto`` asks this loader before the DICOM loader, so recognising a
folder must stay cheap even for a DICOM site with many files.

One manifest row per image: ``path`` is the images file, ``frame`` the image's index in it,
``frames`` the number of images in the file, ``label`` from the labels file, and ``split``
``heldout`` when a ``-``-separated word of the prefix is ``t10k`` or ``test`` (``t10k-…``,
``test-…``, ``emnist-digits-test-…``), ``train`` otherwise. These datasets have no patients,
devices or DICOM identity: ``patient``, ``device`` and ``sop_instance_uid`` stay empty (label
CSVs join by ``sample_key``; ``path`` names a whole file of images). ``modality`` is ``OT``.

``sample_key`` (see :func:`sample_keys`) hashes the name prefix, a *content id* of the images
file (sha256 of its header and the first MiB of its uncompressed data) and the index: it does
not depend on the folder, nor on whether the file is gzipped, and two datasets with the same
names and shapes (MNIST vs Fashion-MNIST) get different keys.

Pixels are returned as stored (0..255 for ubyte) as float32 ``(1, H, W)``; EMNIST stores its
images transposed and this loader does not undo that. Indexing an images file decompresses only
its first MiB; a gzip file's size is checked against the header through the gzip trailer (ISIZE),
falling back to full decompression only when they disagree.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from revise.data._idx_format import (
    _MAX_HEADER,
    _parse_header,
    _read_start,
    read_idx,
    read_idx_header,
)
from revise.data.loaders import IndexFailure, IndexResult
from revise.data.manifest import COLUMNS, normalize
from revise.data.plugins import hookimpl
from revise.errors import DataError

log = logging.getLogger(__name__)

NAME = "idx"
IMAGES = re.compile(r"(?P<prefix>.+)-images[-.]idx3-ubyte(?P<gz>\.gz)?")
LABELS = re.compile(r"(?P<prefix>.+)-labels[-.]idx1-ubyte(?P<gz>\.gz)?")
HELDOUT_WORDS = frozenset({"t10k", "test"})
CONTENT_BYTES = 1 << 20  # data bytes hashed into the content id


# --- keys ---------------------------------------------------------------------------------------


def content_id(path: str | os.PathLike) -> str:
    """sha256 (hex) of an images file's header and first MiB of uncompressed data.

    Independent of the file's location and of gzip: a copy, a move or ``gunzip`` keeps it; a
    different dataset of the same shape changes it. Reads (decompresses) about 1 MiB.
    """
    path = Path(path)
    head, compressed = _read_start(path, _MAX_HEADER + CONTENT_BYTES)
    header = _parse_header(path, head, compressed=compressed)
    data = head[header.offset : header.offset + CONTENT_BYTES]
    return hashlib.sha256(b"revise-idx-content\x00" + header.raw + data).hexdigest()


def sample_keys(prefix: str, content: str, count: int) -> list[str]:
    """Keys of images 0..count-1: ``s-`` + 16 hex of sha256("idx\\0<prefix>\\0<content>\\0<i>")."""
    base = hashlib.sha256(f"idx\x00{prefix}\x00{content}\x00".encode())
    keys = []
    for i in range(count):  # ~0.5 us per key: 70k keys in about 40 ms
        h = base.copy()
        h.update(str(i).encode())
        keys.append("s-" + h.hexdigest()[:16])
    return keys


def split_of(prefix: str) -> str:
    """``heldout`` for test files (a word of the prefix is t10k or test), else ``train``."""
    return "heldout" if HELDOUT_WORDS & set(prefix.lower().split("-")) else "train"


# --- the loader ---------------------------------------------------------------------------------


class IdxLoader:
    """IDX images/labels pairs in a folder (top level only), or one images file.

    Decoded images files stay in memory on the instance (Fashion-MNIST: 55 MB), so decoding
    every row reads each file once. Not thread-safe; use one instance per thread.
    """

    name = NAME

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple[int, int], np.ndarray]] = {}

    # --- indexing -----------------------------------------------------------------------------

    def can_index(self, root: Path) -> bool:
        """An images file, or a folder with an images file and its labels file beside it."""
        root = Path(root)
        try:
            if root.is_file():
                return IMAGES.fullmatch(root.name) is not None
            if not root.is_dir():
                return False
            with os.scandir(root) as entries:
                names = [e.name for e in entries if e.is_file()]
        except OSError:
            return False
        images = {m["prefix"] for m in map(IMAGES.fullmatch, names) if m}
        labels = {m["prefix"] for m in map(LABELS.fullmatch, names) if m}
        return bool(images & labels)

    def index(self, root: Path, *, site: str, key: bytes) -> IndexResult:
        """One row per image of every images file; ``key`` is unused (no patients here)."""
        root = Path(root)
        if not root.exists():
            raise DataError(f"{root} does not exist", hint="pass a folder of IDX files")
        root = root.resolve()
        skipped: list[IndexFailure] = []
        if root.is_file():
            m = IMAGES.fullmatch(root.name)
            if m is None:
                raise DataError(
                    f"{root} is not named like an IDX images file (NAME-images-idx3-ubyte[.gz])"
                )
            images = {m["prefix"]: root}
            labels = {k: v for k, v in _scan(root.parent, [])[1].items() if k == m["prefix"]}
        else:
            images, labels = _scan(root, skipped)
        if not images:
            raise DataError(
                f"no IDX images file (NAME-images-idx3-ubyte[.gz]) in {root}",
                hint="the idx loader looks at the folder's top level only",
            )
        for prefix in sorted(set(labels) - set(images)):
            skipped.append(IndexFailure(str(labels[prefix]), "labels file without images file"))

        parts: list[pd.DataFrame] = []
        failures: list[IndexFailure] = []
        for prefix in sorted(images):
            try:
                parts.append(self._index_pair(prefix, images[prefix], labels.get(prefix), site))
            except DataError as exc:
                failures.append(IndexFailure(str(images[prefix]), str(exc)))
        manifest = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        manifest = manifest.reindex(columns=list(COLUMNS))
        log.info(
            "idx: %d rows from %d images file(s); %d skipped, %d failed",
            len(manifest),
            len(parts),
            len(skipped),
            len(failures),
        )
        return IndexResult(normalize(manifest), failures, sorted(skipped, key=lambda s: s.path))

    def _index_pair(
        self, prefix: str, images: Path, labels: Path | None, site: str
    ) -> pd.DataFrame:
        header = read_idx_header(images)
        if len(header.shape) != 3:
            raise DataError(
                f"IDX images file {images} holds {header.describe()}; expected 3 dimensions "
                "(images, rows, columns)"
            )
        count, height, width = header.shape
        label: Any = pd.NA
        if labels is None:
            log.info("idx: %s has no labels file; its rows are unlabelled", images.name)
        else:
            values = read_idx(labels)
            if values.ndim != 1 or values.dtype.kind not in "ui":
                raise DataError(
                    f"IDX labels file {labels} holds {values.shape} {values.dtype}; expected "
                    "one integer per image"
                )
            if len(values) != count:
                raise DataError(
                    f"IDX labels file {labels} holds {len(values)} labels for the {count} "
                    f"images of {images.name}"
                )
            label = pd.array(values.astype(np.int64), dtype="Int64")
        keys = sample_keys(prefix, content_id(images), count)
        # Columns from arrays and broadcast scalars: no per-row Python objects but the keys.
        return pd.DataFrame(
            {
                "sample_key": keys,
                "path": str(images),
                "frame": np.arange(count, dtype=np.int64),
                "sop_instance_uid": "",  # no DICOM identity (see the module docstring)
                "series_uid": "",
                "study_uid": "",
                "patient": "",
                "modality": "OT",
                "manufacturer": "",
                "device": "",
                "device_serial": "",
                "body_part": "",
                "study_date": "",
                "photometric": "MONOCHROME2",
                "rows": height,
                "cols": width,
                "frames": count,
                "samples_per_pixel": 1,
                "transfer_syntax": "",
                "site": site,
                "loader": NAME,
                "label": label,
                "split": split_of(prefix),
            }
        )

    # --- decoding -----------------------------------------------------------------------------

    def read_pixels(self, row: dict[str, Any], *, voi: bool = False) -> np.ndarray:
        """Image ``frame`` of the row's file as float32 ``(1, H, W)``, values as stored.

        IDX has no VOI window: ``voi=True`` maps the type's nominal range (0..255 for ubyte,
        -128..127 for byte, the full range of short/int) to [0, 1], and float data by the
        image's min..max, like the DICOM loader does for files without a window.
        """
        path = str(row["path"])
        frame = _row_int(row.get("frame"), 0)
        images = self._images(path)
        if images.ndim != 3:
            raise DataError(f"IDX file {path} holds {images.shape}, not images (count, rows, cols)")
        count, height, width = images.shape
        if frame is None or not 0 <= frame < count:
            raise DataError(f"IDX file {path} holds {count} images; image {frame} asked for")
        expected = (_row_int(row.get("rows"), height), _row_int(row.get("cols"), width))
        indexed = _row_int(row.get("frames"), count)
        if expected != (height, width) or indexed != count:
            raise DataError(
                f"IDX file {path} holds {count} images of {height}x{width} but was indexed with "
                f"{indexed} of {expected[0]}x{expected[1]}",
                hint="the file changed since indexing; re-index the site",
            )
        out = np.asarray(images[frame], dtype=np.float32)[None]
        return _nominal_unit(out, images.dtype) if voi else out

    def _images(self, path: str) -> np.ndarray:
        """The whole images file, decoded once per (path, mtime, size)."""
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(
                f"IDX file {path} is not readable: {exc.strerror}", hint="re-index the site"
            ) from exc
        signature = (st.st_mtime_ns, st.st_size)
        cached = self._files.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        arr = read_idx(path)
        self._files[path] = (signature, arr)
        return arr


@hookimpl
def revise_site_loaders() -> list[IdxLoader]:
    return [IdxLoader()]


# --- helpers ------------------------------------------------------------------------------------


def _scan(folder: Path, skipped: list[IndexFailure]) -> tuple[dict[str, Path], dict[str, Path]]:
    """(images by prefix, labels by prefix) at the folder's top level; the rest -> skipped.

    Where a file exists both plain and gzipped, the plain one is used (no decompression).
    """
    found: dict[str, dict[str, list[Path]]] = {"images": {}, "labels": {}}
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"folder {folder} is not readable: {exc.strerror}") from exc
    for entry in entries:
        path = folder / entry.name
        if entry.is_dir():
            skipped.append(IndexFailure(str(path), "folder not searched (top level only)"))
            continue
        for kind, pattern in (("images", IMAGES), ("labels", LABELS)):
            m = pattern.fullmatch(entry.name)
            if m:
                found[kind].setdefault(m["prefix"], []).append(path)
                break
        else:
            skipped.append(IndexFailure(str(path), "not an IDX images or labels file"))
    chosen: list[dict[str, Path]] = []
    for by_prefix in found.values():
        picked: dict[str, Path] = {}
        for prefix, paths in by_prefix.items():
            paths.sort(key=lambda p: (p.suffix == ".gz", p.name))
            picked[prefix] = paths[0]
            for other in paths[1:]:
                reason = f"another copy, {paths[0].name}, is indexed instead"
                skipped.append(IndexFailure(str(other), reason))
        chosen.append(picked)
    return chosen[0], chosen[1]


def _nominal_unit(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        lo, hi = float(x.min()), float(x.max())
        if hi <= lo:
            return np.zeros_like(x)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def _row_int(value: Any, default: int | None) -> int | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
