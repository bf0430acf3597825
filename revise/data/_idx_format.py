"""The IDX file format under :mod:`revise.data.idx_loader`: a two-zero-byte magic, a type code,
one big-endian 32-bit size per dimension, then the data; plain or gzip, told apart by content.
Every damaged file (truncated, over-long, a bad magic number or type code) is a
:class:`~revise.errors.DataError` naming it.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revise.errors import DataError

# type code -> (stored big-endian dtype, name in the IDX description)
TYPES: dict[int, tuple[np.dtype, str]] = {
    0x08: (np.dtype("u1"), "ubyte"),
    0x09: (np.dtype("i1"), "byte"),
    0x0B: (np.dtype(">i2"), "short"),
    0x0C: (np.dtype(">i4"), "int"),
    0x0D: (np.dtype(">f4"), "float"),
    0x0E: (np.dtype(">f8"), "double"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_HEADER = 4 + 4 * 255
_TYPE_LIST = ", ".join(f"0x{code:02X} {name}" for code, (_, name) in TYPES.items())
_HINT = "the file is damaged or not IDX; copy it again from where it came from"


@dataclass(frozen=True)
class IdxHeader:
    """The parsed header of an IDX file."""

    type_code: int
    shape: tuple[int, ...]
    compressed: bool

    @property
    def dtype(self) -> np.dtype:
        """The element type as stored (big-endian)."""
        return TYPES[self.type_code][0]

    @property
    def offset(self) -> int:
        """Bytes before the data: magic (4) and one 32-bit size per dimension."""
        return 4 + 4 * len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of data the header announces."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def raw(self) -> bytes:
        """The header bytes exactly as in the file."""
        return bytes((0, 0, self.type_code, len(self.shape))) + struct.pack(
            f">{len(self.shape)}I", *self.shape
        )

    def describe(self) -> str:
        return "x".join(map(str, self.shape)) + " " + TYPES[self.type_code][1]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an IDX file (plain or gzip, told apart by content), in native byte order.

    The file is read whole and decoded with ``np.frombuffer`` (ubyte data is not copied again,
    so the result is read-only; copy it to modify). Not memory-mapped on purpose: a file
    rewritten in place under a live map kills the process (SIGBUS) instead of raising, and
    reading 47 MB takes milliseconds. Raises :class:`DataError` naming the file for an
    unreadable, truncated or over-long file, a bad magic number or an unknown type code.
    """
    path = Path(path)
    data = _read_bytes(path, -1)
    compressed = data[:2] == _GZIP_MAGIC
    if compressed:
        data = _gunzip(path, data)
    header = _parse_header(path, data[:_MAX_HEADER], compressed=compressed)
    _check_size(path, header, len(data) - header.offset)
    arr = np.frombuffer(
        data, dtype=header.dtype, count=math.prod(header.shape), offset=header.offset
    ).reshape(header.shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def read_idx_header(path: str | os.PathLike) -> IdxHeader:
    """The header of an IDX file, after checking that the file holds exactly that much data.

    Cheap: a gzip file is checked through its trailer (uncompressed size modulo 2**32) and fully
    decompressed only when that disagrees (a truncated stream, or several gzip members).
    """
    path = Path(path)
    head, compressed = _read_start(path, _MAX_HEADER)
    header = _parse_header(path, head, compressed=compressed)
    if not compressed:
        _check_size(path, header, _stat(path).st_size - header.offset)
        return header
    try:
        with path.open("rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
    except OSError as exc:  # shorter than 4 bytes, or unreadable
        raise DataError(f"IDX file {path} is truncated or unreadable: {exc}", hint=_HINT) from exc
    if (isize - header.offset - header.nbytes) % (1 << 32) != 0:
        read_idx(path)  # full decompression names the exact problem (or the file is fine)
    return header


def _is_gzip(path: Path) -> bool:
    return _read_bytes(path, 2) == _GZIP_MAGIC


def _read_bytes(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError as exc:
        raise DataError(f"IDX file {path} is not readable: {exc.strerror}") from exc


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise DataError(f"IDX file {path} is not readable: {exc.strerror}") from exc


def _read_start(path: Path, n: int) -> tuple[bytes, bool]:
    """The first ``n`` (uncompressed) bytes of a file, and whether it is gzip."""
    if not _is_gzip(path):
        return _read_bytes(path, n), False
    try:
        with gzip.open(path, "rb") as f:
            return f.read(n), True
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"IDX file {path} is not a readable gzip file: {exc}", hint=_HINT) from exc


def _gunzip(path: Path, raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise DataError(
            f"IDX file {path} is truncated (the gzip stream ends early)", hint=_HINT
        ) from exc
    except (OSError, zlib.error) as exc:  # BadGzipFile is an OSError; CRC or data errors
        raise DataError(f"IDX file {path} is a damaged gzip file: {exc}", hint=_HINT) from exc


def _parse_header(path: Path, head: bytes, *, compressed: bool) -> IdxHeader:
    where = f"IDX file {path}" + (" (gzip)" if compressed else "")
    if len(head) < 4:
        raise DataError(f"{where} is truncated: {len(head)} byte(s), no header", hint=_HINT)
    if head[0] or head[1]:
        raise DataError(
            f"{where} has a bad magic number 0x{head[:4].hex()}: an IDX file starts with two "
            "zero bytes",
            hint="is it an IDX file?",
        )
    code, ndim = head[2], head[3]
    if code not in TYPES:
        raise DataError(
            f"{where} has an unknown type code 0x{code:02X} (known: {_TYPE_LIST})", hint=_HINT
        )
    if ndim == 0:
        raise DataError(f"{where} declares 0 dimensions", hint=_HINT)
    end = 4 + 4 * ndim
    if len(head) < end:
        raise DataError(
            f"{where} is truncated inside its header ({len(head)} of {end} bytes)", hint=_HINT
        )
    shape = struct.unpack(f">{ndim}I", head[4:end])
    return IdxHeader(code, tuple(int(v) for v in shape), compressed)


def _check_size(path: Path, header: IdxHeader, have: int) -> None:
    if have < header.nbytes:
        raise DataError(
            f"IDX file {path} is truncated: its header announces {header.describe()} "
            f"({header.nbytes} data bytes) but it holds {max(have, 0)}",
            hint=_HINT,
        )
    if have > header.nbytes:
        raise DataError(
            f"IDX file {path} has {have - header.nbytes} byte(s) after the {header.nbytes} data "
            f"bytes its header announces ({header.describe()})",
            hint=_HINT,
        )
