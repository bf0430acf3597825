"""validate() against hand-computed answers: models whose every prediction is known."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from revise.evaluate import EvalSet
from revise.models.card import ModelCard
from revise.pipeline import PreparedData
from revise.unlearn.base import LabelledTensors
from revise.validate.api import validate
from revise.validate.criteria import parse_criteria

CARD = ModelCard("small_cnn", 2, 1, (2, 2))  # mean 0, std 1: the model sees the raw pixels
SIZES = {"forget": 20, "retain": 20, "heldout_forget": 20, "heldout_retain": 40}


class Lookup(nn.Module):
    """Image i (its pixels all equal i / 1000) gets the logits in row i of ``table``."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[(x[:, 0, 0, 0] * 1000).round().long()]


def _data() -> tuple[PreparedData, dict[str, slice]]:
    sets, where, start = {}, {}, 0
    for name, n in SIZES.items():
        ids = torch.arange(start, start + n, dtype=torch.float32)
        x = (ids / 1000).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
        y = torch.full((n,), 0 if "forget" in name else 1)
        rows = pd.DataFrame({"label": y.numpy(), "device": "a"})
        sets[name] = EvalSet(LabelledTensors(x, y), rows)
        where[name], start = slice(start, start + n), start + n
    return PreparedData("label == 0", sets, {}), where


def _model(wrong: dict[str, slice], where: dict[str, slice]) -> Lookup:
    """Right on every image but those in ``wrong`` (by set, positions within the set)."""
    total = sum(SIZES.values())
    labels = torch.zeros(total, dtype=torch.long)
    for name, span in where.items():
        labels[span] = 0 if "forget" in name else 1
    predicted = labels.clone()
    for name, part in wrong.items():
        idx = torch.arange(where[name].start, where[name].stop)[part]
        predicted[idx] = 1 - labels[idx]
    return Lookup(nn.functional.one_hot(predicted, 2).float() * 4)


def test_agreement_accuracy_and_accuracy_change_are_the_hand_computed_values():
    data, where = _data()
    original = _model({}, where)  # right everywhere
    candidate = _model({"heldout_retain": slice(30, 40), "forget": slice(0, 15)}, where)
    criteria = parse_criteria(
        "gates:\n"
        "  - {metric: accuracy_change, set: heldout_retain, at_least: -0.01}\n"
        "  - {metric: accuracy, set: forget, at_most: 0.3}\n"
        "  - {metric: agreement, set: heldout_retain, at_least: 0.7}\n"
    )
    models = {"candidate": candidate, "original": original}
    result = validate(models, data, criteria, card=CARD, device="cpu")
    report = result.report
    assert report["agreement"]["heldout_retain"]["value"] == pytest.approx(30 / 40)
    assert report["agreement"]["forget"]["value"] == pytest.approx(5 / 20)
    assert report["accuracy"]["candidate"]["heldout_retain"]["value"] == pytest.approx(0.75)
    assert report["accuracy"]["original"]["heldout_retain"]["value"] == pytest.approx(1.0)
    change, forgotten, agreement = result.verdicts
    assert change.estimate.value == pytest.approx(-0.25) and not change.passed
    assert forgotten.estimate.value == pytest.approx(5 / 20) and forgotten.passed
    assert agreement.estimate.value == pytest.approx(0.75) and agreement.passed
    assert report["summary"] == "2 of 3 gates passed" and report["verdict"] == "fail"
