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
import re
import struct
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    as_pixel_options,
    convert_color_space,
    get_decoder,
)
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, MediaStorageDirectoryStorage

from revise.data.loaders import IndexFailure, IndexResult
from revise.data.manifest import COLUMNS, normalize
from revise.errors import DataError
from revise.phi import pseudonym, site_key
from revise.plugins import hookimpl

log = logging.getLogger(__name__)

NAME = "dicom"
# Names that promise a DICOM file: such a file that does not parse is a failure, not a skip.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float, Double Float
ITEM_TAG = 0xFFFEE000
UNDEFINED = 0xFFFFFFFF
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


class _Skip(Exception):
    """A readable file that holds no image."""


class _Fail(Exception):
    """A file that cannot be used; the message is the reason."""


class _ReadTracker:
    """File wrapper that notices the short reads of a header that ends inside a data element.

    pydicom reads a truncated header without complaint (the last value is just short). Reading
    a complete file ends with exactly one empty read (the next element's tag at end of file); a
    partial read, or a second empty read (a value whose bytes are missing), means the file ends
    inside an element. A file cut exactly between two elements cannot be told from a shorter
    valid file.
    """

    def __init__(self, f: Any) -> None:
        self._f = f
        self.name = getattr(f, "name", None)
        self.partial = 0
        self.empty = 0

    def read(self, size: int | None = -1) -> bytes:
        data = self._f.read(size)
        if size is not None and size > 0:
            if not data:
                self.empty += 1
            elif len(data) < size:
                self.partial += 1
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    @property
    def truncated(self) -> bool:
        return self.partial > 0 or self.empty > 1


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
        rows: list[dict[str, Any]] = []
        failures: list[IndexFailure] = []
        skipped: list[IndexFailure] = []
        for path, problem in _walk(root):
            if problem:
                failures.append(IndexFailure(str(path), problem))
                continue
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
        log.info(
            "dicom: %d rows from %s; %d skipped, %d failed",
            len(manifest),
            root,
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
        # The only patient attribute read: PatientID, straight into the keyed pseudonym.
        patient = pseudonym(str(ds.get("PatientID", "") or ""), key=key)
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


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end is still text
        return exc.start >= len(head) - 3
    return True


def _read_header(path: Path) -> tuple[Any, tuple[int, int, int] | None]:
    """Header dataset and the pixel element's (length, value offset, file size), or None."""
    try:
        with warnings.catch_warnings(), path.open("rb") as raw:
            warnings.simplefilter("ignore")
            size = os.fstat(raw.fileno()).st_size
            tracker = _ReadTracker(raw)
            try:
                ds = pydicom.dcmread(tracker, stop_before_pixels=True)
            except InvalidDicomError:
                raw.seek(0)
                head = raw.read(512)
                text = _looks_like_text(head)
                if path.name.startswith(".") and path.suffix.lower() not in DICOM_SUFFIXES:
                    raise _Skip("not a DICOM file (hidden file)") from None
                if path.suffix.lower() in DICOM_SUFFIXES or (not path.suffix and not text):
                    kind = "a text file" if text else "no 'DICM' prefix / file meta header"
                    raise _Fail(f"not a DICOM file ({kind})") from None
                raise _Skip(f"not a DICOM file ({path.suffix or 'text'})") from None
            if tracker.truncated:
                raise _Fail("truncated header (the file ends inside a data element)")
            if _transfer_syntax(ds) == DeflatedExplicitVRLittleEndian:
                return _read_deflated(path)
            return ds, _pixel_element(raw, ds, size)
    except (_Fail, _Skip):
        raise
    except OSError as exc:
        raise _Fail(f"unreadable file: {exc.strerror or exc}") from None
    except Exception as exc:  # pydicom raises struct.error, ValueError... on a broken header
        raise _Fail(f"unreadable DICOM header ({_one_line(exc)})") from None


def _read_deflated(path: Path) -> tuple[Any, tuple[int, int, int] | None]:
    # The data set is one zlib stream, so there is no file offset to peek at: inflate it and
    # defer (skip) large values instead.
    ds = pydicom.dcmread(path, defer_size=1024)
    for tag in PIXEL_TAGS:
        if tag in ds:
            elem = ds.get_item(tag)
            length = getattr(elem, "length", None)
            if length is None:
                length = len(elem.value or b"")
            return ds, (length, -1, -1)
    return ds, None


def _pixel_element(raw: Any, ds: Any, size: int) -> tuple[int, int, int] | None:
    """Peek at the element where ``stop_before_pixels`` stopped: (length, value offset, size)."""
    start = raw.tell()
    head = raw.read(12)
    if len(head) < 8:
        return None
    little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
    endian = "<" if little else ">"
    group, element = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | element) not in PIXEL_TAGS:
        return None
    # Explicit VR: tag, VR, 2 reserved bytes, 4-byte length. In implicit VR these 4 bytes are
    # the length, which can never spell "OB\0\0" etc. (that would be an odd length).
    if (
        len(head) == 12
        and head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OV", b"UN")
        and head[6:8] == b"\0\0"
    ):
        (length,) = struct.unpack(endian + "L", head[8:12])
        return length, start + 12, size
    (length,) = struct.unpack(endian + "L", head[4:8])
    return length, start + 8, size


def _check_pixel_length(
    pixel: tuple[int, int, int],
    tsyntax: Any,
    rows: int,
    cols: int,
    frames: int,
    spp: int,
    bits: int,
    photometric: str,
) -> None:
    length, offset, size = pixel
    if UID(str(tsyntax)).is_encapsulated:
        if length != UNDEFINED:
            raise _Fail("malformed encapsulated pixel data (defined length)")
        if offset >= 0 and offset + 8 > size:
            raise _Fail("truncated pixel data (no fragments)")
        return
    if length == UNDEFINED:
        raise _Fail("malformed native pixel data (undefined length)")
    samples = 2 if photometric == "YBR_FULL_422" else spp  # 4:2:2 stores 2 values per pixel
    if bits == 1:
        expected = -(-rows * cols * frames * samples // 8)
    else:
        expected = rows * cols * frames * samples * (-(-bits // 8))
    if length < expected:
        raise _Fail(f"truncated pixel data ({length} of {expected} bytes)")
    if offset >= 0 and offset + min(length, expected) > size:
        raise _Fail(
            f"truncated pixel data (file ends after {max(size - offset, 0)} of {expected} bytes)"
        )


def _transfer_syntax(ds: Any) -> Any:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        return None
    value = meta.get("TransferSyntaxUID")
    return UID(str(value).strip()) if value else None


def _has_value(ds: Any, keyword: str) -> bool:
    try:
        value = ds.get(keyword)
    except Exception:
        return False
    return value is not None and str(value).strip() != ""


def _int_tag(ds: Any, keyword: str) -> int:
    value = ds.get(keyword)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _Fail(f"invalid {keyword} {str(value)!r}") from None


def _frame_count(ds: Any) -> int:
    value = ds.get("NumberOfFrames")
    if value is None or str(value).strip() == "":
        return 1
    try:
        frames = int(str(value).strip())
    except ValueError:
        raise _Fail(f"invalid NumberOfFrames {str(value)!r}") from None
    if frames < 1:
        raise _Fail(f"invalid NumberOfFrames {frames}")
    return frames


def _text(ds: Any, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _iso_date(value: Any) -> str:
    digits = re.sub(r"\D", "", str(value or ""))
    if len(digits) < 8:
        return ""
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])).isoformat()
    except ValueError:
        return ""


# --- decode helpers -----------------------------------------------------------------------------


def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        if pd.isna(value):
            return False
    except (TypeError, ValueError):
        pass
    return str(value).strip() != ""


def _row_int(value: Any, default: int | None) -> int | None:
    if not _present(value):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _decode(ds: Any, frame: int) -> tuple[np.ndarray, str]:
    """Decode one frame; returns (H, W) or (H, W, 3) and the photometric of the result."""
    tsyntax = _transfer_syntax(ds)
    if not tsyntax:
        raise DataError("no TransferSyntaxUID in the file meta")
    if not any(tag in ds for tag in PIXEL_TAGS):
        raise DataError("no pixel data")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DataError(f"transfer syntax {tsyntax.name} is not supported") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise DataError(f"missing codec for {tsyntax.name} (needs {needs})")
    try:
        arr, meta = decoder.as_array(ds, index=frame, validate=True, **as_pixel_options(ds))
    except Exception as exc:  # decoders raise many types for damaged data
        missing = "; ".join(decoder.missing_dependencies)
        extra = f" (decoders not installed: {missing})" if missing else ""
        raise DataError(
            f"{_one_line(exc)}{extra}",
            hint="the pixel data is damaged or needs a codec that is not installed",
        ) from exc
    photometric = str(meta.get("photometric_interpretation") or ds.PhotometricInterpretation)
    return arr, photometric.strip().upper()


def _functional_item(ds: Any, frame: int, sequence: str) -> Any:
    """First item of ``sequence`` from the per-frame, else the shared functional groups."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        seq = per_frame[frame].get(sequence)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(sequence)
        if seq:
            return seq[0]
    return None


def _rescale(ds: Any, frame: int) -> tuple[float, float] | None:
    source = ds
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        source = _functional_item(ds, frame, "PixelValueTransformationSequence")
        if source is None:
            return None
    slope = source.get("RescaleSlope")
    intercept = source.get("RescaleIntercept")
    slope = float(slope) if _present(slope) and float(slope) != 0 else 1.0
    intercept = float(intercept) if _present(intercept) else 0.0
    return slope, intercept


def _stored_range(ds: Any, arr: np.ndarray) -> tuple[float, float]:
    bits = ds.get("BitsStored")
    if not _present(bits) or np.issubdtype(arr.dtype, np.floating):
        return float(np.min(arr)), float(np.max(arr))  # float pixel data: no nominal range
    bits = int(bits)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def _modality(ds: Any, arr: np.ndarray, frame: int) -> tuple[np.ndarray, float, float]:
    """Modality LUT output and the output range that the stored value range maps to."""
    smin, smax = _stored_range(ds, arr)
    if ds.get("ModalityLUTSequence"):
        values = apply_modality_lut(arr, ds).astype(np.float64)
        if smax - smin <= 2**20:
            span = apply_modality_lut(np.arange(smin, smax + 1).astype(arr.dtype), ds)
            return values, float(span.min()), float(span.max())
        return values, float(values.min()), float(values.max())
    rescale = _rescale(ds, frame)
    values = arr.astype(np.float64)
    if rescale is None:
        return values, smin, smax
    slope, intercept = rescale
    ends = sorted((smin * slope + intercept, smax * slope + intercept))
    return values * slope + intercept, ends[0], ends[1]


def _first(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if not len(value):
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _window(ds: Any, frame: int) -> tuple[float, float, str] | None:
    """The first VOI window (center, width, function), from the data set or functional groups."""
    source = ds
    if "WindowCenter" not in ds:
        source = _functional_item(ds, frame, "FrameVOILUTSequence")
        if source is None:
            return None
    center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if center is None or width is None or width <= 0 or (function == "LINEAR" and width < 1):
        return None
    return center, width, function


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    # LINEAR (PS3.3 C.11.2.1.2.1) with output range [0, 1].
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        return np.zeros_like(values, dtype=np.float64)
    return (values - lo) / (hi - lo)


def _display(ds: Any, arr: np.ndarray, photometric: str, frame: int, *, voi: bool) -> np.ndarray:
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        values, lo, hi = _modality(ds, arr, frame)
        if voi:
            window = _window(ds, frame)
            if window is not None:
                out = _apply_window(values, *window)
            elif ds.get("VOILUTSequence"):
                item = ds.VOILUTSequence[0]
                depth = int(item.LUTDescriptor[2])
                out = np.clip(apply_voi(values, ds, index=0) / float(2**depth - 1), 0.0, 1.0)
            else:
                out = _minmax(values)  # no VOI in the file: the image's own range
            if photometric == "MONOCHROME1":
                out = 1.0 - out
        elif photometric == "MONOCHROME1":
            # Invert about the modality output range of the *possible* stored values
            # (BitsStored, PixelRepresentation, rescale): every image with the same encoding
            # gets the same mapping, so a given stored value always means the same brightness
            # and "fixed" intensity ranges stay meaningful. (Inverting about the image's own
            # min+max would shift with image content.)
            out = (lo + hi) - values
        else:
            out = values
        return np.ascontiguousarray(out, dtype=np.float32)[None]
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        if voi:
            depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
            rgb = rgb / float(2**depth - 1)
        return np.ascontiguousarray(np.moveaxis(rgb, -1, 0), dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if photometric != "RGB":
            if photometric not in ("YBR_FULL", "YBR_FULL_422"):
                raise DataError(f"colour space {photometric} is not supported")
            arr = convert_color_space(arr, photometric, "RGB")
        rgb = arr.astype(np.float64)
        if voi:
            bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 8))
            rgb = np.clip(rgb / float(2**bits - 1), 0.0, 1.0)
        return np.ascontiguousarray(np.moveaxis(rgb, -1, 0), dtype=np.float32)
    raise DataError(f"photometric interpretation {photometric!r} is not supported")
