"""The metadata_props revise writes into an ONNX file, and how it reads them back.

Two families of keys (every key and value is listed in docs/onnx-metadata.md):

* ONNX's own image metadata (onnx/docs/MetadataProps.md), for runtimes and viewers:
  ``Image.BitmapPixelFormat``, ``Image.ColorSpaceGamma`` and ``Image.NominalPixelRange``,
  filled from the model card by :func:`image_props` with the spec's values only; a key whose
  value the card does not determine is left out rather than guessed;
* revise's own provenance, all under one namespace, :data:`PREFIX` (``com.revise.``):
  ``com.revise.card``, ``com.revise.weights_sha256``, ``com.revise.validation_verdict``, ...

Bundles written before the namespace carry the same keys as ``revise.<name>``. Readers go
through :func:`read_prop` / :func:`revise_props`, which accept both (the namespaced key wins),
so an existing bundle still loads, validates, signs and verifies.

The image metadata describes the *pixels* the card speaks of (before ``(pixels - mean) / std``);
the graph itself takes normalised pixels, so revise does not mark its input with the IMAGE type
denotation: a runtime that featurised images by these keys alone would skip the normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "IMAGE_KEYS",
    "IMAGE_VALUES",
    "LEGACY_PREFIX",
    "PREFIX",
    "image_props",
    "key",
    "keys_of",
    "read_prop",
    "revise_props",
]

PREFIX = "com.revise."  # every key revise writes about the model's provenance
LEGACY_PREFIX = "revise."  # the same keys in bundles written before the namespace (read only)

PIXEL_FORMAT = "Image.BitmapPixelFormat"
COLOR_SPACE_GAMMA = "Image.ColorSpaceGamma"
NOMINAL_PIXEL_RANGE = "Image.NominalPixelRange"
IMAGE_KEYS = (PIXEL_FORMAT, COLOR_SPACE_GAMMA, NOMINAL_PIXEL_RANGE)
# The values ONNX's MetadataProps.md allows for each key, spelled as it spells them.
IMAGE_VALUES: dict[str, tuple[str, ...]] = {
    PIXEL_FORMAT: ("Gray8", "Rgb8", "Bgr8", "Rgba8", "Bgra8"),
    COLOR_SPACE_GAMMA: ("Linear", "SRGB"),
    NOMINAL_PIXEL_RANGE: (
        "NominalRange_0_255",
        "Normalized_0_1",
        "Normalized_1_1",
        "NominalRange_16_235",
    ),
}
# The card's pixel_range -> the spec's name for it (any other range: no key).
_RANGES = {
    (0.0, 255.0): "NominalRange_0_255",
    (0.0, 1.0): "Normalized_0_1",
    (-1.0, 1.0): "Normalized_1_1",
    (16.0, 235.0): "NominalRange_16_235",
}
# Channels -> pixel format, in the channel order revise assumes (the card has no order field:
# models trained on images decoded by PIL, torchvision or pydicom see RGB, not OpenCV's BGR).
_FORMATS = {1: "Gray8", 3: "Rgb8", 4: "Rgba8"}
_BGR = {"Rgb8": "Bgr8", "Rgba8": "Bgra8"}


def key(name: str) -> str:
    """The metadata key revise writes for ``name`` (``weights_sha256`` ->
    ``com.revise.weights_sha256``)."""
    return PREFIX + name


def keys_of(name: str) -> tuple[str, str]:
    """Both keys ``name`` may be stored under: the namespaced one, then the legacy one."""
    return PREFIX + name, LEGACY_PREFIX + name


def read_prop(metadata: Mapping[str, str], name: str) -> str | None:
    """The value of revise's key ``name`` in ``metadata``: under ``com.revise.``, else under
    the legacy ``revise.`` of older bundles; None where neither is present."""
    new, legacy = keys_of(name)
    if new in metadata:
        return metadata[new]
    return metadata.get(legacy)


def revise_props(metadata: Mapping[str, str]) -> dict[str, str]:
    """revise's keys in ``metadata`` by their short names (``{"method": "psg", ...}``), legacy
    ones included; where both are present the namespaced one wins."""
    out = {k.removeprefix(LEGACY_PREFIX): v for k, v in metadata.items() if _legacy(k)}
    out.update({k.removeprefix(PREFIX): v for k, v in metadata.items() if k.startswith(PREFIX)})
    return out


def _legacy(name: str) -> bool:
    return name.startswith(LEGACY_PREFIX) and not name.startswith(PREFIX)


def image_props(card: Any) -> dict[str, str]:
    """ONNX's image metadata for the pixels ``card`` (a ModelCard) describes: the pixel format
    from ``in_channels`` (and a ``channel_order`` of "BGR" where a card gives one), the gamma
    (grey images of modality values mapped linearly: Linear; colour images: sRGB), the nominal
    range from ``pixel_range``. A key whose value the card does not determine (2 channels, a
    pixel range of [0, 4095]) is left out."""
    props: dict[str, str] = {}
    channels = int(card.in_channels)
    pixel_format = _FORMATS.get(channels)
    order = str(getattr(card, "channel_order", "") or "").upper()
    if pixel_format is not None and order == "BGR":
        pixel_format = _BGR.get(pixel_format, pixel_format)
    if pixel_format is not None:
        props[PIXEL_FORMAT] = pixel_format
        props[COLOR_SPACE_GAMMA] = "Linear" if channels == 1 else "SRGB"
    low, high = (float(v) for v in card.pixel_range)
    nominal = _RANGES.get((low, high))
    if nominal is not None:
        props[NOMINAL_PIXEL_RANGE] = nominal
    return props
