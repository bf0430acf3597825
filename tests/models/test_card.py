"""Model cards: values that would silently give wrong numbers are refused, naming the card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from revise.errors import ModelError
from revise.models.card import ModelCard

GOOD = {"architecture": "small_cnn", "num_classes": 3, "in_channels": 1, "input_size": [16, 16]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"std": [0]}, r"std must be > 0"),
        ({"pixel_range": [1, 0]}, r"pixel_range must be \[low, high\] with low < high"),
        ({"num_classes": "10"}, r"num_classes must be a whole number, not '10'"),
        ({"num_classes": 0}, r"num_classes must be at least 1"),
        ({"mean": ["abc"]}, r"mean must be numbers"),
        ({"input_size": [16]}, r"input_size must have 2 values"),
        ({"input_size": [16, 16.5]}, r"input_size must be whole numbers"),
        ({"intensity": "fixed", "intensity_range": [100, -100]}, r"intensity_range must be"),
    ],
)
def test_a_card_that_would_give_wrong_numbers_is_refused_naming_its_file(tmp_path, change, message):
    path = tmp_path / "card.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(ModelError, match=message) as err:
        ModelCard.load(path)
    assert str(err.value).startswith(f"{path}: model card: ")


def test_a_good_card_keeps_its_values_as_numbers(tmp_path):
    path = tmp_path / "card.json"
    path.write_text(json.dumps({**GOOD, "mean": [0.5], "std": [0.25], "pixel_range": [0, 255]}))
    card = ModelCard.load(path)
    assert card.input_size == (16, 16) and card.pixel_range == (0.0, 255.0)
    assert card.std == (0.25,) and card.class_names == ["0", "1", "2"]


DOC = Path(__file__).parents[2] / "docs" / "model-card.md"


def test_an_incomplete_card_names_every_missing_and_unknown_field(tmp_path):
    path = tmp_path / "card.json"
    path.write_text(json.dumps({"architecture": "small_cnn", "num_clases": 3, "inchannels": 1}))
    with pytest.raises(ModelError) as caught:
        ModelCard.load(path)
    assert str(caught.value) == (
        f"{path}: model card: unknown field 'inchannels' (did you mean in_channels?); "
        "unknown field 'num_clases' (did you mean num_classes?); "
        "missing num_classes (how many classes the model predicts) "
        "(every field is described in docs/model-card.md)"
    )
    with pytest.raises(ModelError, match=r"missing architecture \(the network: .*num_classes"):
        ModelCard.from_dict({})


def test_a_card_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "card.json"
    text = json.dumps({**GOOD, "description": "Zürich"}, ensure_ascii=False)
    path.write_bytes(text.encode("latin-1"))
    said = rf"model card {path} line 1 is not UTF-8 text \(save it as UTF-8\)"
    with pytest.raises(ModelError, match=said):
        ModelCard.load(path)


def test_every_field_is_documented_and_the_worked_example_loads():
    text = DOC.read_text()
    documented = set(re.findall(r"^\| `(\w+)`(?:, `(\w+)`)?", text, re.M))
    names = {name for pair in documented for name in pair if name}
    assert names == set(ModelCard.__dataclass_fields__)
    example = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    card = ModelCard.from_dict(example)
    assert (card.architecture, card.num_classes, card.in_channels) == ("onnx", 4, 3)
    assert card.class_names[1] == "pneumonia" and card.intensity == "voi"
