"""The model card's JSON Schema (docs/model-card.schema.json), derived from ``ModelCard``.

The field names, types, defaults and required fields come from the dataclass itself (pydantic
reads it), so the schema cannot drift from the code; what only the checks in ``card.py`` know -
bounds, choices, no unknown fields - and one sentence per field are added here. Editors and CI
systems validate a card with it before revise ever reads one.
"""

from __future__ import annotations

import json
from typing import Any

from revise.models.card import MAX_CLASSES, MAX_INPUT_SIDE, OUTPUT_KINDS, ModelCard

SCHEMA_ID = "https://revise.invalid/schemas/model-card.schema.json"
INTENSITIES = ("minmax", "voi", "fixed")

DESCRIPTIONS = {
    "architecture": "The network: a built-in name (small_cnn, allcnn, resnet18_cifar, or one a "
    "plugin registers), or onnx / torchscript for a graph revise runs as it is.",
    "num_classes": "How many classes the model predicts.",
    "in_channels": "Channels of one input image (1 grey, 3 RGB).",
    "input_size": "[height, width] the images are resized to.",
    "pixel_range": "[low, high] of pixels before normalisation, e.g. [0, 255]; psg's eps, eta, "
    "gamma and lam are fractions of it.",
    "mean": "The model consumes (pixels - mean) / std: one value, or one per channel.",
    "std": "Divisor of the normalisation: one value, or one per channel; each > 0.",
    "class_names": "One name per class, in output order; each one line of printable text.",
    "output": "What the network returns, named for its last operation; null: logits unless "
    "revise finds an activation. "
    + "; ".join(f"{kind}: {meaning}" for kind, meaning in OUTPUT_KINDS.items()),
    "arch_kwargs": 'Keyword arguments of the built-in architecture, e.g. {"widths": [16, 32]}.',
    "source_format": "Where the weights came from (revise fills it in when it loads a model).",
    "source_sha256": "Digest of the file the weights came from (filled in by revise).",
    "intensity": "How stored DICOM values become [0, 1]: minmax per image, voi (the file's "
    "window, else minmax), or fixed (intensity_range).",
    "intensity_range": "[lo, hi] in modality units for intensity = fixed, e.g. [-1000, 400] HU.",
    "description": "Free text for people; copied into the bundle's metadata.",
}

# Bounds and choices the card's checks enforce, in JSON Schema words.
_CONSTRAINTS: dict[str, dict[str, Any]] = {
    "architecture": {"minLength": 1},
    "num_classes": {"minimum": 1, "maximum": MAX_CLASSES},
    "in_channels": {"minimum": 1},
    "input_size": {"items": {"type": "integer", "minimum": 1, "maximum": MAX_INPUT_SIDE}},
    "mean": {"minItems": 1},
    "std": {"minItems": 1, "items": {"type": "number", "exclusiveMinimum": 0}},
    "output": {"enum": [*OUTPUT_KINDS, None]},
    "intensity": {"enum": list(INTENSITIES)},
}


def card_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a card.json."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(ModelCard).json_schema()
    properties = schema["properties"]
    for name, prop in properties.items():
        prop.pop("title", None)
        prop["description"] = DESCRIPTIONS[name]
        extra = dict(_CONSTRAINTS.get(name, {}))
        if "items" in extra and "prefixItems" in prop:  # a fixed pair: bound each member
            prop["prefixItems"] = [extra.pop("items")] * len(prop["prefixItems"])
        prop.update(extra)
        if name == "output":
            prop.pop("anyOf", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "revise model card (card.json)",
        "description": "Everything revise needs to feed a model pixels and read its answer.",
        "type": "object",
        "properties": properties,
        "required": schema["required"],
        "additionalProperties": False,
    }


def schema_text() -> str:
    """The schema as docs/model-card.schema.json holds it."""
    return json.dumps(card_json_schema(), indent=2, ensure_ascii=False) + "\n"
