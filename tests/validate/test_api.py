"""validate() against hand-computed answers: models whose every prediction is known."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from revise.data.sets import DecodedSet, DecodedSets
from revise.models.card import ModelCard
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


def _data() -> tuple[DecodedSets, dict[str, slice]]:
    sets, where, start = {}, {}, 0
    for name, n in SIZES.items():
        ids = torch.arange(start, start + n, dtype=torch.float32)
        x = (ids / 1000).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
        y = torch.full((n,), 0 if "forget" in name else 1)
        rows = pd.DataFrame({"label": y.numpy(), "device": "a"})
        sets[name] = DecodedSet(x, y, rows)
        where[name], start = slice(start, start + n), start + n
    return DecodedSets("label == 0", sets, {}), where


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


def test_the_report_is_a_typed_record_written_as_its_json(tmp_path):
    from revise._io.outputs import REPORT_HTML, REPORT_JSON
    from revise._validation_record import ValidationReport, read_validation_report
    from revise.validate.api import write_report
    from revise.validate.report_html import render_html

    data, where = _data()
    original = _model({}, where)
    candidate = _model({"heldout_retain": slice(30, 40), "forget": slice(0, 15)}, where)
    criteria = parse_criteria(
        "gates:\n"
        "  - {metric: accuracy, set: heldout_retain, per: device, at_least: original - 0.3}\n"
        "  - {metric: loss_mia, between: [0.0, 1.0]}\n"
    )
    models = {"candidate": candidate, "original": original}
    given = {"data": {"path": "site.parquet", "digest": "d1"}, "site": "north"}
    result = validate(models, data, criteria, card=CARD, device="cpu", inputs=given)
    record = result.record
    assert isinstance(record, ValidationReport) and result.report == record.to_json()
    assert record.accuracy["candidate"]["heldout_retain"].by["device"]["a"].value == 0.75
    assert record.agreement["forget"].n == 20 and record.gates[0].group == {"device": "a"}
    assert record.mia["candidate"].loss_mia.members == "forget" and record.parity is None
    assert record.inputs.data.path == "site.parquet" and record.inputs.site == "north"
    assert record.inputs.criteria.sha256 == criteria.sha256 and record.inputs.onnx is None
    assert list(result.report["inputs"]) == ["data", "site", "criteria", "onnx"]
    assert result.report["reference"] is None and result.report["parity"] is None  # said
    out = write_report(result, tmp_path / "report")
    written = json.loads((out / REPORT_JSON).read_text())
    assert written == json.loads(json.dumps(result.report))
    again = read_validation_report(out / REPORT_JSON, hint="re-run revise validate")
    assert again.to_json() == written
    page = (out / REPORT_HTML).read_text(encoding="utf-8")
    assert page == render_html(record) == render_html(result.report)  # the same, typed or not


def test_inputs_the_report_cannot_hold_are_refused_before_any_work():
    from revise.errors import UsageError

    data, where = _data()
    models = {"candidate": _model({}, where), "original": _model({}, where)}
    criteria = parse_criteria("gates:\n  - {metric: accuracy, set: forget, at_most: 1.0}\n")
    with pytest.raises(UsageError, match=r"inputs.*data must be a mapping"):
        validate(models, data, criteria, card=CARD, device="cpu", inputs={"data": "x.csv"})
