"""Reading DICOM headers for the index, and the tag helpers that decoding shares.

:func:`_read_header` reads a header only (never ``force=True``) and peeks at the pixel element so
that :func:`_check_pixel_length` can find truncated native pixel data without decoding it. A file
that holds no image raises :class:`_Skip`, one that cannot be used raises :class:`_Fail`.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

# Names that promise a DICOM file: such a file that does not parse is a failure, not a skip.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float, Double Float
ITEM_TAG = 0xFFFEE000
UNDEFINED = 0xFFFFFFFF


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
                suffix = _suffix(path)
                if path.name.startswith(".") and suffix not in DICOM_SUFFIXES:
                    raise _Skip("not a DICOM file (hidden file)") from None
                if suffix in DICOM_SUFFIXES or (not suffix and not text):
                    kind = "a text file" if text else "no 'DICM' prefix / file meta header"
                    raise _Fail(f"not a DICOM file ({kind})") from None
                raise _Skip(f"not a DICOM file ({suffix or 'text'})") from None
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


def _suffix(path: Path) -> str:
    """The lower-case suffix, "" for a numeric one: files named by UID (1.2.840...868) have none."""
    suffix = path.suffix.lower()
    return "" if suffix[1:].isdigit() else suffix


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


def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        if pd.isna(value):
            return False
    except (TypeError, ValueError):
        pass
    return str(value).strip() != ""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
