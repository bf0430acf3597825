"""Decoding the pixels of one DICOM frame into display values (see
:meth:`revise.data.dicom_loader.DicomLoader.read_pixels`): the modality LUT, VOI windows,
MONOCHROME1 inversion and colour (YBR, palette) to RGB.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    as_pixel_options,
    convert_color_space,
    get_decoder,
)

from revise.data._dicom_header import PIXEL_TAGS, _one_line, _present, _transfer_syntax
from revise.errors import DataError


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


def _apply_voi_lut(values: np.ndarray, ds: Any, item: Any) -> np.ndarray:
    """A VOI LUT (PS3.3 C.11.2.1.1) mapped to [0, 1].

    Done here rather than with pydicom's ``apply_voi``, which indexes with the entry type: an
    8-bit LUT then wraps input values above 255 round to the start of the table.
    """
    entries, first, depth = _lut_descriptor(ds, item)
    lut = _lut_entries(ds, item, entries, depth)
    # Inputs below the first mapped value take the first entry, above the last the last one.
    index = np.floor(np.nan_to_num(values, nan=float(first))) - first
    index = np.clip(index, 0, entries - 1).astype(np.int64)
    return np.clip(lut[index] / float(2**depth - 1), 0.0, 1.0)


def _lut_descriptor(ds: Any, item: Any) -> tuple[int, int, int]:
    """(entries, first value mapped, bits per entry) of a LUT item."""
    try:
        entries, first, depth = (int(v) for v in item.LUTDescriptor)
    except (AttributeError, TypeError, ValueError):
        raise DataError("VOI LUT: LUTDescriptor is not three numbers") from None
    entries = entries or 65536  # 0 stands for 2**16 (the count does not fit in 16 bits)
    # The first value mapped is read as US or SS: signed when the pixels are.
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and first >= 2**15:
        first -= 2**16
    if not 1 <= depth <= 16:
        raise DataError(f"VOI LUT: {depth} bits per entry is not supported (1 to 16 are)")
    return entries, first, depth


def _lut_entries(ds: Any, item: Any, entries: int, depth: int) -> np.ndarray:
    """The LUT data as int64: a US list, or OW bytes (16-bit words; 8-bit entries may come
    packed two to a word)."""
    data = item.get("LUTData")
    if isinstance(data, (bytes, bytearray)):
        width = 2 if len(data) >= 2 * entries or depth > 8 else 1
        little = getattr(ds, "original_encoding", (None, None))[1] is not False
        dtype = np.dtype(np.uint8) if width == 1 else np.dtype("<u2" if little else ">u2")
        lut = np.frombuffer(bytes(data), dtype=dtype, count=min(len(data) // width, entries))
    elif data is None:
        lut = np.zeros(0, dtype=np.int64)
    else:
        lut = np.atleast_1d(np.asarray(data, dtype=np.int64))
    if len(lut) < entries:
        raise DataError(f"VOI LUT: LUTData holds {len(lut)} entries, LUTDescriptor says {entries}")
    return lut[:entries].astype(np.int64)


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
                out = _apply_voi_lut(values, ds, ds.VOILUTSequence[0])
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
