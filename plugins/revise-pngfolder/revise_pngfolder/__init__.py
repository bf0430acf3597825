"""revise site plugin for a folder of ordinary images listed in ``labels.csv``.

Layout::

    site/
      labels.csv          file,label[,patient_id,device,study_date,body_part]
      any/sub/dir/a.png   (PNG, JPEG, TIFF or anything else Pillow opens)

``file`` is the image path relative to the folder, ``label`` an integer class (empty: unlabelled).
Without a ``patient_id`` column (or where its cell is empty) the patient is the image's folder
(its path relative to the site folder), so put one patient per folder or add the column.
Other columns are ignored, so a sheet with extra (possibly identifying) columns leaks nothing.

This module is what the ``revise`` entry point names: revise registers the module object with
pluggy, so :func:`revise_site_loaders` below is the hook implementation.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageMode

from revise.data.loaders import IndexFailure, IndexResult
from revise.data.manifest import COLUMNS, normalize
from revise.errors import DataError
from revise.phi import pseudonym
from revise.plugins import hookimpl

__all__ = ["LABELS_CSV", "PngFolderLoader", "revise_site_loaders"]

log = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"
REQUIRED = ("file", "label")
OPTIONAL = ("patient_id", "device", "study_date", "body_part")
EXPECTED_HEADER = ",".join(REQUIRED) + "[," + ",".join(OPTIONAL) + "]"
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _header_name(name: str | None) -> str:
    return (name or "").strip().lower()


def _read_header(csv_path: Path) -> list[str]:
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        first = next(csv.reader(f), [])
    return [_header_name(h) for h in first]


def _relative_file(value: str) -> PurePosixPath | None:
    """The CSV's ``file`` cell as a clean relative POSIX path; None if absolute or escaping."""
    rel = PurePosixPath(value.strip().replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or re.match(r"^[A-Za-z]:", value):
        return None
    return rel


def sample_key(rel: PurePosixPath) -> str:
    """Stable key of an image: ``s-`` + 16 hex digits of sha256 of its relative POSIX path."""
    return "s-" + hashlib.sha256(rel.as_posix().encode("utf-8")).hexdigest()[:16]


def _colour(mode: str) -> tuple[str, int]:
    """(photometric, samples per pixel) that :meth:`PngFolderLoader.read_pixels` will return."""
    if ImageMode.getmode(mode).basemode == "L":  # 1, L, LA, I, I;16*, F
        return "MONOCHROME2", 1
    return "RGB", 3  # RGB, RGBA, P, PA, CMYK, YCbCr, ...


class PngFolderLoader:
    """Site loader for a ``labels.csv`` plus images folder (see the module docstring)."""

    name = "pngfolder"

    def can_index(self, root: Path) -> bool:
        root = Path(root)
        csv_path = root / LABELS_CSV
        if not (root.is_dir() and csv_path.is_file()):
            return False
        try:
            header = _read_header(csv_path)
        except (OSError, UnicodeDecodeError, csv.Error):
            return False
        return all(col in header for col in REQUIRED)

    def index(self, root: Path, *, site: str, key: bytes) -> IndexResult:
        root = Path(root).resolve()
        csv_path = root / LABELS_CSV
        if not csv_path.is_file():
            raise DataError(
                f"{root} has no {LABELS_CSV}",
                hint=f"a pngfolder site is a folder with {LABELS_CSV} ({EXPECTED_HEADER})",
            )
        rows: list[dict[str, Any]] = []
        failures: list[IndexFailure] = []
        seen: dict[str, int] = {}
        try:
            with csv_path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = [_header_name(h) for h in next(reader, [])]
                missing = [col for col in REQUIRED if col not in header]
                if missing:
                    raise DataError(
                        f"{csv_path} lacks column(s) {', '.join(missing)}",
                        hint=f"expected header: {EXPECTED_HEADER}",
                    )
                for values in reader:
                    if not any(v.strip() for v in values):
                        continue  # blank line
                    cells = {h: v.strip() for h, v in zip(header, values, strict=False) if h}
                    line = reader.line_num
                    row, failure = self._row(root, cells, line, site=site, key=key)
                    if failure is not None:
                        failures.append(failure)
                        continue
                    assert row is not None
                    first = seen.setdefault(row["sample_key"], line)
                    if first != line:
                        failures.append(
                            IndexFailure(
                                row["path"],
                                f"{LABELS_CSV} line {line}: {cells['file']!r} is already listed "
                                f"on line {first}",
                            )
                        )
                        continue
                    rows.append(row)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(
                f"{csv_path} is not a readable CSV: {exc}",
                hint=f"save it as UTF-8 CSV with the header {EXPECTED_HEADER}",
            ) from exc
        manifest = pd.DataFrame(rows, columns=list(COLUMNS))
        log.info(
            "pngfolder: indexed %d image(s) under %s, %d failure(s)", len(rows), root, len(failures)
        )
        return IndexResult(normalize(manifest), failures)

    def _row(
        self, root: Path, cells: dict[str, str], line: int, *, site: str, key: bytes
    ) -> tuple[dict[str, Any] | None, IndexFailure | None]:
        where = f"{LABELS_CSV} line {line}"
        value = cells.get("file", "")
        rel = _relative_file(value) if value else None
        if rel is None:
            reason = "empty 'file'" if not value else f"{value!r} is not a path inside the folder"
            return None, IndexFailure(str(root / LABELS_CSV), f"{where}: {reason}")
        path = root / rel
        label = cells.get("label", "")
        if label and not re.fullmatch(r"[+-]?\d+", label):
            return None, IndexFailure(
                str(path), f"{where}: label {label!r} of {rel} is not an integer"
            )
        study_date = cells.get("study_date", "")
        if study_date and not _ISO_DATE.fullmatch(study_date):
            return None, IndexFailure(
                str(path), f"{where}: study_date {study_date!r} of {rel} is not YYYY-MM-DD"
            )
        if not path.is_file():
            return None, IndexFailure(str(path), f"{where}: image file {rel} does not exist")
        try:
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
                photometric, spp = _colour(im.mode)
        except Exception as exc:  # Pillow raises many types for a broken or foreign file
            return None, IndexFailure(
                str(path), f"{where}: {rel} is not a readable image ({type(exc).__name__}: {exc})"
            )
        # The patient ID is hashed here and goes nowhere else (no logs, no extra columns).
        patient_source = cells.get("patient_id", "") or rel.parent.as_posix()
        row = {
            "sample_key": sample_key(rel),
            "path": str(path),
            "frame": 0,
            "patient": pseudonym(patient_source, key=key),
            "modality": "OT",
            "device": cells.get("device", ""),
            "body_part": cells.get("body_part", ""),
            "study_date": study_date,
            "photometric": photometric,
            "rows": height,
            "cols": width,
            "frames": 1,
            "samples_per_pixel": spp,
            "site": site,
            "loader": self.name,
            "label": int(label) if label else pd.NA,
        }
        return row, None

    def read_pixels(self, row: dict[str, Any], *, voi: bool = False) -> np.ndarray:
        """Pixels as float32 (C, H, W): C=1 for grayscale (16-bit values kept), C=3 for colour.

        RGBA/LA lose their alpha channel, palette images are expanded to RGB. ``voi`` is accepted
        for interface parity with the DICOM loader; these formats carry no VOI LUT, so it does
        nothing. Only the first frame of a multi-frame file (TIFF, GIF) is read.
        """
        path = Path(str(row["path"]))
        if not path.is_file():
            raise DataError(f"image {path} does not exist", hint="re-index the site")
        try:
            with Image.open(path) as im:
                im.load()
                arr = _to_array(im)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(
                f"image {path} is unreadable: {type(exc).__name__}: {exc}",
                hint="check the file or re-index the site",
            ) from exc
        expected = (row.get("rows"), row.get("cols"))
        if all(_is_int(v) for v in expected) and tuple(int(v) for v in expected) != arr.shape[1:]:
            raise DataError(
                f"image {path} is {arr.shape[1]}x{arr.shape[2]} but was indexed as "
                f"{int(expected[0])}x{int(expected[1])}",
                hint="the file changed since indexing; re-index the site",
            )
        return arr


def _is_int(value: Any) -> bool:
    try:
        return value is not None and not pd.isna(value) and int(value) == value
    except (TypeError, ValueError):
        return False


def _to_array(im: Image.Image) -> np.ndarray:
    photometric, _ = _colour(im.mode)
    if photometric == "MONOCHROME2":
        if im.mode in ("1", "LA", "La"):
            im = im.convert("L")
        return np.asarray(im).astype(np.float32)[None]  # (1, H, W), values as stored
    if im.mode != "RGB":
        with warnings.catch_warnings():  # palette transparency is dropped on purpose
            warnings.simplefilter("ignore", UserWarning)
            im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im).astype(np.float32).transpose(2, 0, 1))


@hookimpl
def revise_site_loaders() -> list[PngFolderLoader]:
    return [PngFolderLoader()]
