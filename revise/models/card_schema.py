"""The model card's JSON Schema (docs/model-card.schema.json), generated from ``ModelCard``.

Field names, types, defaults, bounds, choices and descriptions all come from the pydantic
dataclass itself, so the schema cannot drift from the checks revise makes; only the titles
pydantic derives from the field names are dropped and the schema's own header is added. Editors
and CI systems validate a card with it before revise ever reads one. The rules between fields
(one mean per channel, one class name per class, a size that fits in memory) are the card's
validators and are not in the schema.
"""

from __future__ import annotations

import json
from typing import Any

from revise.models.card import ModelCard

SCHEMA_ID = "https://revise.invalid/schemas/model-card.schema.json"


def card_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a card.json."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(ModelCard).json_schema()
    properties = schema["properties"]
    for prop in properties.values():
        prop.pop("title", None)
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
