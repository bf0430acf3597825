"""The built-in DICOM site loader: headers to manifest rows, pixels to display values.

Indexing reads headers only (``dcmread(..., stop_before_pixels=True)``, never ``force=True``)
and sorts every file under the root into exactly one of three bins:

* rows: one per image, or per frame of a multi-frame file;
* ``skipped``: readable files that hold no image (SR, RTPLAN, presentation states, DICOMDIR,
  non-DICOM files such as ``README.txt`` or ``.json``);
* ``failures``: files that should be images but cannot be used (not DICOM although named like
  it, truncated header or pixel data, missing or invalid image attributes), each with a reason.

Cheap checks at index time: a header that ends inside a data element, and native (uncompressed)
pixel data that is shorter than Rows x Columns x frames x samples x bits says. Compressed pixel
data is only checked when decoded.

Decoding (:meth:`DicomLoader.read_pixels`) returns float32 ``(C, H, W)``: the modality LUT
applied, MONOCHROME1 inverted so that higher is brighter, colour as RGB (``C == 3``), and, with
``voi=True``, the file's VOI window mapped to [0, 1].
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.uid import UID, MediaStorageDirectoryStorage

from revise.data._dicom_header import (
    DICOM_SUFFIXES,
    _check_pixel_length,
    _Fail,
    _frame_count,
    _has_value,
    _int_tag,
    _iso_date,
    _one_line,
    _present,
    _read_header,
    _Skip,
    _text,
    _transfer_syntax,
)
from revise.data._dicom_header import ITEM_TAG as ITEM_TAG
from revise.data._dicom_header import PIXEL_TAGS as PIXEL_TAGS
from revise.data._dicom_header import UNDEFINED as UNDEFINED
from revise.data._dicom_pixels import _decode, _display
from revise.data.loaders import IndexFailure, IndexResult
from revise.data.manifest import COLUMNS, normalize
from revise.data.plugins import hookimpl
from revise.errors import DataError
from revise.phi import pseudonym, site_key

log = logging.getLogger(__name__)

NAME = "dicom"
_REQUIRED = (
    "SOPInstanceUID",
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)


def sample_key(sop_instance_uid: str, frame: int) -> str:
    """Stable key of an image/frame: ``s-`` + 16 hex of sha256("<SOPInstanceUID>/<frame>")."""
    digest = hashlib.sha256(f"{sop_instance_uid}/{int(frame)}".encode()).hexdigest()
    return f"s-{digest[:16]}"


class DicomLoader:
    """DICOM files under a folder (recursive; DICOMDIR trees are simply walked).

    Not thread-safe: the last opened dataset is kept so that the frames of one file are decoded
    without rereading it; use one instance per thread.
    """

    name = NAME

    def __init__(self) -> None:
        self._last: tuple[tuple[str, int, int], Any] | None = None

    # --- indexing -----------------------------------------------------------------------------

    def can_index(self, root: Path) -> bool:
        """Any folder, a file named like DICOM, or a file with the ``DICM`` prefix."""
        root = Path(root)
        if root.is_dir():
            return True
        if not root.is_file():
            return False
        if root.suffix.lower() in DICOM_SUFFIXES:
            return True
        try:
            with root.open("rb") as f:
                head = f.read(132)
        except OSError:
            return False
        return head[128:132] == b"DICM"

    def index(self, root: Path, *, site: str, key: bytes) -> IndexResult:
        root = Path(root)
        if not root.exists():
            raise DataError(f"{root} does not exist", hint="pass a DICOM folder or file")
        root = root.resolve()
        files: list[Path] = []
        unreadable: list[IndexFailure] = []
        for path, problem in _walk(root):
            if problem:
                unreadable.append(IndexFailure(str(path), problem))
            else:
                files.append(path)
        result = self.index_files(files, site=site, key=key)
        result.failures[:0] = unreadable
        return result

    def index_files(self, files: Sequence[Path], *, site: str, key: bytes) -> IndexResult:
        """Index exactly these files (e.g. instances fetched from a PACS into a cache)."""
        rows: list[dict[str, Any]] = []
        failures: list[IndexFailure] = []
        skipped: list[IndexFailure] = []
        for path in files:
            try:
                with warnings.catch_warnings():  # pydicom warns on every odd value
                    warnings.simplefilter("ignore")
                    rows.extend(self._index_file(path, site=site, key=key))
            except _Skip as why:
                skipped.append(IndexFailure(str(path), str(why)))
            except _Fail as why:
                failures.append(IndexFailure(str(path), str(why)))
        manifest = pd.DataFrame(rows, columns=list(COLUMNS))
        if len(manifest):
            manifest = manifest.sort_values(["path", "frame"], kind="stable")
            dup = manifest["sample_key"].duplicated(keep=False)
            if dup.any():
                log.warning(
                    "dicom: %d rows share a SOPInstanceUID with a row of another file (same "
                    "instance stored more than once); they share a sample_key",
                    int(dup.sum()),
                )
        _warn_about_missing_codecs(manifest)
        log.info(
            "dicom: %d rows from %d files; %d skipped, %d failed",
            len(manifest),
            len(files),
            len(skipped),
            len(failures),
        )
        return IndexResult(normalize(manifest), failures, skipped)

    def _index_file(self, path: Path, *, site: str, key: bytes) -> list[dict[str, Any]]:
        ds, pixel = _read_header(path)
        sop_class = str(ds.get("SOPClassUID", "") or "").strip()
        if not sop_class and hasattr(ds, "file_meta"):
            sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "").strip()
        if sop_class == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
            raise _Skip("DICOMDIR (media directory, no image)")
        if pixel is None:
            if _has_value(ds, "Rows") and _has_value(ds, "Columns"):
                # The header describes an image whose pixels are not there: a cut-off file.
                raise _Fail(
                    "missing pixel data although the header describes an image (Rows, "
                    "Columns); the file is probably truncated"
                )
            what = UID(sop_class).name if sop_class else (_text(ds, "Modality") or "unknown")
            raise _Skip(f"no pixel data ({what})")

        missing = [kw for kw in _REQUIRED if not _has_value(ds, kw)]
        tsyntax = _transfer_syntax(ds)
        if not tsyntax:
            missing.append("TransferSyntaxUID (file meta)")
        if missing:
            raise _Fail(f"missing required tag(s): {', '.join(missing)}")
        rows_, cols = _int_tag(ds, "Rows"), _int_tag(ds, "Columns")
        bits, spp = _int_tag(ds, "BitsAllocated"), _int_tag(ds, "SamplesPerPixel")
        frames = _frame_count(ds)
        if min(rows_, cols, bits, spp) < 1:
            raise _Fail(f"invalid image size {rows_}x{cols}, {spp} sample(s) of {bits} bit(s)")
        photometric = _text(ds, "PhotometricInterpretation").upper()
        _check_pixel_length(pixel, tsyntax, rows_, cols, frames, spp, bits, photometric)

        sop = _text(ds, "SOPInstanceUID")
        # The only patient attribute read: PatientID, straight into the keyed pseudonym. No ID
        # (anonymised images) leaves the cell empty: hashing "" would make them one "patient".
        patient_id = _text(ds, "PatientID")
        patient = pseudonym(patient_id, key=key) if patient_id else ""
        common = {
            "path": str(path),
            "sop_instance_uid": sop,
            "series_uid": _text(ds, "SeriesInstanceUID"),
            "study_uid": _text(ds, "StudyInstanceUID"),
            "patient": patient,
            "modality": _text(ds, "Modality"),
            "manufacturer": _text(ds, "Manufacturer"),
            "device": _text(ds, "ManufacturerModelName"),
            "device_serial": _text(ds, "DeviceSerialNumber"),
            "body_part": _text(ds, "BodyPartExamined"),
            "study_date": _iso_date(ds.get("StudyDate", "")),
            "photometric": photometric,
            "rows": rows_,
            "cols": cols,
            "frames": frames,
            "samples_per_pixel": spp,
            "transfer_syntax": str(tsyntax),
            "site": site,
            "loader": NAME,
            "label": pd.NA,
            "split": "",
        }
        return [
            {"sample_key": sample_key(sop, frame), "frame": frame, **common}
            for frame in range(frames)
        ]

    # --- decoding -----------------------------------------------------------------------------

    def read_pixels(self, row: dict[str, Any], *, voi: bool = False) -> np.ndarray:
        """Pixels of one row as float32 ``(C, H, W)`` (C = 1, or 3 for RGB).

        Monochrome: modality LUT (Rescale Slope/Intercept or Modality LUT Sequence, also from
        enhanced multi-frame functional groups); MONOCHROME1 inverted so higher is brighter.
        ``voi=True``: the first VOI window (or VOI LUT) mapped to [0, 1] with clipping; a file
        without one falls back to the image's min..max. Colour: RGB (YBR converted, palette
        applied); ``voi=True`` scales the nominal range (0 .. 2**bits - 1) to [0, 1].
        """
        path = str(row["path"])
        frame = _row_int(row.get("frame"), 0)
        ds = self._dataset(path)
        expected_sop = row.get("sop_instance_uid")
        if _present(expected_sop) and str(expected_sop) != _text(ds, "SOPInstanceUID"):
            raise DataError(
                f"DICOM file {path} holds another instance than the one indexed",
                hint="the file changed since indexing; re-index the site",
            )
        try:
            frames = _frame_count(ds)
        except _Fail as why:
            raise DataError(f"cannot decode pixels of {path}: {why}") from None
        if not 0 <= frame < frames:
            raise DataError(f"DICOM file {path} has {frames} frame(s); frame {frame} asked for")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                arr, photometric = _decode(ds, frame)
                out = _display(ds, arr, photometric, frame, voi=voi)
            except DataError as exc:
                raise DataError(f"cannot decode pixels of {path} frame {frame}: {exc}") from exc
            except Exception as exc:  # decoders raise many types for broken data
                raise DataError(
                    f"cannot decode pixels of {path} frame {frame}: {_one_line(exc)}",
                    hint="the pixel data is damaged or its encoding is not supported",
                ) from exc
        shape = (_row_int(row.get("rows"), None), _row_int(row.get("cols"), None))
        if None not in shape and shape != out.shape[1:]:
            raise DataError(
                f"DICOM file {path} is {out.shape[1]}x{out.shape[2]} but was indexed as "
                f"{shape[0]}x{shape[1]}",
                hint="the file changed since indexing; re-index the site",
            )
        return out

    def _dataset(self, path: str) -> Any:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(
                f"DICOM file {path} is not readable: {exc.strerror}", hint="re-index the site"
            ) from exc
        signature = (path, st.st_mtime_ns, st.st_size)
        if self._last is not None and self._last[0] == signature:
            return self._last[1]
        self._last = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path)
        except Exception as exc:
            raise DataError(
                f"DICOM file {path} is unreadable: {_one_line(exc)}", hint="re-index the site"
            ) from exc
        self._last = (signature, ds)
        return ds


def index_dicom(
    root: str | os.PathLike, *, site: str = "", key: bytes | None = None
) -> IndexResult:
    """Index a DICOM folder or file with the built-in loader (key: the site's PHI key)."""
    return DicomLoader().index(Path(root), site=site, key=site_key() if key is None else key)


@hookimpl
def revise_site_loaders() -> list[DicomLoader]:
    return [DicomLoader()]


# --- index helpers ------------------------------------------------------------------------------


def _walk(root: Path):
    """(path, problem) for every file under root in path order; problem is "" for a file."""
    if root.is_file():
        yield root, ""
        return
    found: list[tuple[Path, str]] = []

    def unreadable(err: OSError) -> None:
        found.append((Path(err.filename or root), f"folder is not readable: {err.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            found.append((path, "" if path.is_file() else "not a regular file (broken link?)"))
    yield from sorted(found, key=lambda item: str(item[0]))


# --- decode helpers -----------------------------------------------------------------------------


def _row_int(value: Any, default: int | None) -> int | None:
    if not _present(value):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _warn_about_missing_codecs(manifest: pd.DataFrame) -> None:
    """Say at indexing, not only when decoding, which images no installed decoder can read
    (compressed transfer syntaxes whose plugins, some GPL-licensed, are optional installs)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    if manifest.empty:
        return
    for uid, n in manifest["transfer_syntax"].value_counts().items():
        try:
            decoder = get_decoder(UID(str(uid)))
        except (NotImplementedError, ValueError):
            continue  # unsupported outright: decoding reports it per image
        if not decoder.is_available:
            log.warning(
                "dicom: %d image(s) use %s, which no installed decoder reads (needs %s); they "
                "will fail to decode",
                n,
                UID(str(uid)).name,
                "; ".join(decoder.missing_dependencies) or "a decoder plugin",
            )
