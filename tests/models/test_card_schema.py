"""docs/model-card.schema.json: generated from ModelCard, committed, and judging real cards as
revise does (jsonschema, the reference validator)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from revise.errors import ModelError
from revise.models.card import ModelCard
from revise.models.card_schema import card_json_schema, schema_text

DOCS = Path(__file__).parents[2] / "docs"
SCHEMA = DOCS / "model-card.schema.json"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def worked_example() -> dict:
    text = (DOCS / "model-card.md").read_text()
    return json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))


def test_the_committed_schema_is_the_generated_one():
    assert SCHEMA.read_text() == schema_text(), (
        "regenerate: python -c 'from revise.models.card_schema import schema_text; "
        'open("docs/model-card.schema.json", "w").write(schema_text())\''
    )
    schema = card_json_schema()
    assert set(schema["properties"]) == set(ModelCard.__dataclass_fields__)
    assert schema["required"] == ["architecture", "num_classes"]
    assert all(prop["description"] for prop in schema["properties"].values())


def test_the_worked_example_and_a_saved_card_are_valid(validator, tmp_path):
    validator.validate(worked_example())
    card = ModelCard("small_cnn", 3, 1, (16, 16), class_names=["a", "b", "c"])
    card.save(tmp_path / "card.json")
    validator.validate(json.loads((tmp_path / "card.json").read_text()))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"num_classes": None}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 100_001}, "num_classes"),
        ({"input_size": [5000, 32]}, "input_size"),
        ({"input_size": [32]}, "input_size"),
        ({"std": [0.0]}, "std"),
        ({"output": "probabilities"}, "output"),
        ({"intensity": "window"}, "intensity"),
        ({"num_clases": 3}, ""),
    ],
)
def test_cards_revise_refuses_fail_the_schema_too(validator, change, field):
    card = {**worked_example(), **change}
    card = {k: v for k, v in card.items() if v is not None}
    errors = list(validator.iter_errors(card))
    assert errors, change
    with pytest.raises(ModelError):  # revise's own check refuses it as well
        ModelCard.from_dict(card)
    if field:
        assert any(field in list(e.absolute_path) or field in e.message for e in errors)
