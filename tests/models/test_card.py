"""Model cards: values that would silently give wrong numbers are refused, naming the card."""

from __future__ import annotations

import dataclasses
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
        ({"std": [0]}, r"std\[0\] must be > 0, not 0"),
        ({"pixel_range": [1, 0]}, r"pixel_range must be \[low, high\] with low < high"),
        ({"num_classes": "10"}, r"num_classes must be a whole number, not '10'"),
        ({"num_classes": 0}, r"num_classes must be in \[1, 100000\], not 0"),
        ({"mean": ["abc"]}, r"mean\[0\] must be a number, not 'abc'"),
        ({"input_size": [16]}, r"input_size must have 2 values, not \[16\]"),
        ({"input_size": [16, 16.5]}, r"input_size\[1\] must be a whole number, not 16\.5"),
        ({"intensity": "fixed", "intensity_range": [100, -100]}, r"intensity_range must be \[lo"),
        ({"intensity": "fixed"}, r"intensity_range must be given for intensity 'fixed'"),
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
        f"{path}: model card: 3 problems: "
        "(1) missing num_classes (how many classes the model predicts); "
        "(2) unknown field 'num_clases' (did you mean num_classes?); "
        "(3) unknown field 'inchannels' (did you mean in_channels?) "
        "(every field is described in docs/model-card.md)"
    )
    said = r"2 problems: \(1\) missing architecture \(the network: .*\(2\) missing num_classes"
    with pytest.raises(ModelError, match=said):
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


def test_every_mistake_of_a_card_is_reported_at_once_each_with_its_place(tmp_path):
    path = tmp_path / "card.json"
    card = {**GOOD, "input_size": [16, 0], "pixel_range": [255, 0], "num_classes": 3}
    path.write_text(json.dumps({**card, "class_names": ["a", "b", "c\nd"], "output": "probs"}))
    with pytest.raises(ModelError) as caught:
        ModelCard.load(path)
    assert str(caught.value) == (
        f"{path}: model card: 4 problems: "
        "(1) input_size[1] must be in [1, 4096], not 0 "
        "(give the size the network takes; revise resizes each image to it); "
        "(2) pixel_range must be [low, high] with low < high, not [255.0, 0.0]; "
        "(3) class_names[2] 'c\\nd' holds a line break or control character "
        "(class names become the lines of a labels file: use one line of printable text); "
        "(4) output must be one of logits, softmax, log_softmax, sigmoid, not 'probs' "
        "(did you mean softmax?) (logits: raw class scores; softmax: class probabilities "
        "(each row is non-negative and sums to 1); log_softmax: log class probabilities; "
        "sigmoid: one probability per class, each in [0, 1] on its own (multi-label))"
    )


def test_a_card_made_or_changed_in_python_is_checked_the_same_way():
    with pytest.raises(
        ModelError, match=r"^model card: num_classes must be in \[1, 100000\], not 0$"
    ):
        ModelCard("small_cnn", 0)
    said = (
        r"^model card: 2 problems: \(1\) mean must have 1 or 3 values .*\(2\) std\[0\] must be > 0"
    )
    with pytest.raises(ModelError, match=said):
        ModelCard("small_cnn", 2, 3, std=(0, 1, 1), mean=(0.5, 0.5))
    card = ModelCard("small_cnn", 2, class_names=["no", "yes"])
    with pytest.raises(ModelError, match=r"class_names has 2 names for 3 classes"):
        dataclasses.replace(card, num_classes=3)
    with pytest.raises(ModelError, match=r"in_channels must be a whole number, not '3'"):
        card.in_channels = "3"
    assert card.in_channels == 1
    # numbers of any numeric type are numbers; whole floats are whole numbers, as in JSON Schema
    assert ModelCard("small_cnn", 2.0, input_size=(16.0, 8)).input_size == (16, 8)
