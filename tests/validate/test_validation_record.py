"""The validation report (revision_report.json) as a typed value: one of the current shape
round-trips unchanged (in memory and through the file), its parts read with attribute access,
and a damaged one is refused naming the file and each wrong field."""

from __future__ import annotations

import copy
import json

import pytest
from test_report_html import make_report

from revise._io.atomic import write_json_atomic
from revise._validation_record import (
    Inputs,
    LossMia,
    Membership,
    ReferenceDistance,
    ValidationReport,
    read_validation_report,
)
from revise.errors import ModelError


def test_a_report_of_the_current_shape_round_trips_unchanged(tmp_path):
    report = make_report()
    record = ValidationReport.model_validate(copy.deepcopy(report))
    assert record.to_json() == report  # no key added (not even as null), none lost
    path = tmp_path / "revision_report.json"
    write_json_atomic(path, report)
    again = read_validation_report(path, hint="re-run revise validate")
    assert again.to_json() == json.loads(path.read_text())
    write_json_atomic(tmp_path / "again.json", again.to_json())
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()  # the same bytes on disk


def test_the_parts_read_with_attribute_access():
    record = ValidationReport.model_validate(make_report())
    assert record.schema_name == "revise.validation_report/1" and record.verdict == "fail"
    by_device = record.accuracy["candidate"]["heldout_retain"].by["device"]
    assert by_device["Borealis CR-7"].value == 0.935 and by_device["Borealis CR-7"].n == 162
    assert record.models["candidate"].sha256 == "ab12" * 16
    assert record.inputs.criteria.sha256 == "f3" * 32 and record.inputs.bundle is None
    assert record.inputs.onnx.path == "model.onnx" and record.inputs.onnx.graph_sha256 is None
    assert [g.passed for g in record.gates] == [True, False, False, True, True]
    assert record.gates[1].group == {"device": "Borealis CR-7"}
    assert record.gates[3].threshold == [0.4, 0.6]
    assert record.mia["candidate"].loss_mia.nonmembers == "heldout_forget"
    assert record.reference.original_avg_gap == 31.5 and record.parity.within_tolerance is True
    assert record.confusion["original"].matrix[0][0] == 42
    assert record.loss_histograms["reference"].members_label == "forget set (train)"


def test_keys_of_other_versions_and_the_kind_of_each_number_are_kept():
    report = make_report()
    report["timings_s"] = {"decode": 2, "total": 4.0}  # an integer stays one: 2, not 2.0
    report["future"] = {"nested": [1, 2]}
    report["gates"][0]["future_key"] = "kept"
    report["inputs"]["site"] = "a caller's own description"
    record = ValidationReport.model_validate(copy.deepcopy(report))
    assert record.future == {"nested": [1, 2]} and record.gates[0].future_key == "kept"
    out = record.to_json()
    assert out == report
    assert json.dumps(out["timings_s"], sort_keys=True) == '{"decode": 2, "total": 4.0}'
    assert list(out["inputs"]) == ["data", "heldout", "criteria", "onnx", "site"]  # as given


def test_a_minimal_report_writes_only_what_was_given():
    bare = {"verdict": "pass", "summary": "0 of 0 gates passed"}
    record = ValidationReport.model_validate(bare)
    assert record.gates == [] and record.inputs.criteria is None and record.reference is None
    assert record.to_json() == bare


def test_parts_set_after_the_start_are_written_and_checked():
    record = ValidationReport(verdict="pass", summary="1 of 1 gates passed")
    record.timings_s["total"] = 1.5  # filled in place
    record.mia["candidate"] = Membership(loss_mia=LossMia(error="too few non-members"))
    record.reference = ReferenceDistance(distance=0.1, avg_gap=None)
    record.inputs.onnx = None  # said: no ONNX model
    assert record.to_json() == {
        "verdict": "pass",
        "summary": "1 of 1 gates passed",
        "inputs": {"onnx": None},
        "mia": {"candidate": {"loss_mia": {"error": "too few non-members"}}},
        "reference": {"distance": 0.1, "avg_gap": None},
        "timings_s": {"total": 1.5},
    }
    with pytest.raises(ValueError, match="verdict"):
        record.verdict = "maybe"  # an assignment is checked too
    with pytest.raises(ValueError, match="n_per_group"):
        LossMia(n_per_group=2.5)


def test_inputs_keep_the_order_they_were_given_in():
    inputs = Inputs.model_validate({"site": "x", "data": {"path": "m.parquet"}})
    inputs.criteria = None
    inputs.onnx = None
    assert list(inputs.to_json()) == ["site", "data", "criteria", "onnx"]


@pytest.mark.parametrize(
    ("where", "value", "named"),
    [
        (("verdict",), "maybe", "verdict must be one of pass, fail, not 'maybe'"),
        (("summary",), 3, "summary must be text"),
        (("gates", 1, "passed"), "no", "gates[1].passed must be true or false"),
        (("gates", 0, "threshold"), "0.45", "gates[0].threshold must be a number"),
        (("gates", 3, "group"), ["device"], "gates[3].group must be a mapping"),
        (("models", "candidate", "sha256"), 12, "models.candidate.sha256 must be text"),
        (("inputs", "onnx"), "model.onnx", "inputs.onnx must be a mapping"),
        (("accuracy", "candidate", "forget", "by", "device", "Acme DX-100", "value"), True,
         "accuracy.candidate.forget.by.device.Acme DX-100.value must be a number"),
        (("sets", "forget", "n"), 435.5, "sets.forget.n must be a whole number"),
        (("mia", "candidate", "mia_efficacy", "value"), None, None),  # null: not measured
        (("parity", "within_tolerance"), 1, "parity.within_tolerance must be true or false"),
        (("confusion", "original", "matrix"), [[1, "2"]], "confusion.original.matrix[0][1]"),
    ],
)  # fmt: skip
def test_a_damaged_report_is_refused_naming_the_file_and_the_field(tmp_path, where, value, named):
    report = make_report()
    parent = report
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = value
    path = tmp_path / "revision_report.json"
    path.write_text(json.dumps(report))
    if named is None:
        assert read_validation_report(path, hint="fix").to_json() == report
        return
    with pytest.raises(ModelError) as info:
        read_validation_report(path, hint="re-run revise validate")
    message = str(info.value)
    assert f"{path} is not a valid validation report" in message and named in message, message
    assert info.value.hint == "re-run revise validate"
    assert "pydantic" not in message.lower()


def test_every_wrong_field_is_named_at_once(tmp_path):
    report = make_report()
    del report["verdict"]
    report["gates"][0]["n"] = "110"
    report["reference"]["distance"] = "far"
    path = tmp_path / "revision_report.json"
    path.write_text(json.dumps(report))
    with pytest.raises(ModelError) as info:
        read_validation_report(path, hint="fix")
    message = str(info.value)
    assert "3 problems" in message and str(path) in message, message
    for named in ("missing verdict", "gates[0].n", "reference.distance"):
        assert named in message, message


@pytest.mark.parametrize(
    ("text", "said"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "is not a JSON object")],
)
def test_a_file_that_is_no_report_is_refused_naming_it(tmp_path, text, said):
    path = tmp_path / "revision_report.json"
    path.write_text(text)
    with pytest.raises(ModelError, match=said) as info:
        read_validation_report(path, hint="fix")
    assert str(path) in str(info.value)
