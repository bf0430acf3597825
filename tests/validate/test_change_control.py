"""The change-control summary: the revision mapped to the elements of a predetermined change
control plan, from the report and the run record; written as change_control.json beside the
report, carried into the bundle, and shown as the report page's first section."""

from __future__ import annotations

import json

import pytest
from test_api import CARD, _data, _model

from revise._io.outputs import CHANGE_CONTROL, REPORT_HTML, REPORT_JSON
from revise._run_record import RunRecord
from revise.validate.api import validate, write_report
from revise.validate.change_control import change_control, report_digest
from revise.validate.change_control_record import SCHEMA, ChangeControl, read_change_control
from revise.validate.criteria import parse_criteria
from revise.validate.report_html import render_html

CRITERIA = (
    "gates:\n"
    "  - {metric: accuracy, set: heldout_retain, per: device, at_least: original - 0.1}\n"
    "  - {name: forgotten, metric: accuracy, set: forget, at_most: 0.5}\n"
)
RUN = {
    "method": "auto",
    "hyperparameters": {"lr": 0.01, "epochs": 3},
    "seed": 7,
    "device": "cpu",
    "forget_samples": 20,
    "retain_samples": 20,
    "versions": {"revise": "0.1.0", "torch": "2.13.0"},
    "chosen": "psg",
    "chosen_step": 40,
    "candidates": [{"method": "psg"}, {"method": "finetune"}],
    "calibration": {"fraction": 0.25, "rule": "stratified", "rows": {"heldout_forget": 5}},
    "target": {"kind": "class", "met": False, "warning": "forget accuracy above retrain's"},
    "base_model_digest": "b" * 64,
    "decode_failures": 2,
}


@pytest.fixture(scope="module")
def result():
    data, where = _data()
    models = {
        "candidate": _model({"heldout_retain": slice(30, 40), "forget": slice(0, 15)}, where),
        "original": _model({}, where),
    }
    given = {"data": {"path": "site.parquet", "digest": "d1"}}
    return validate(models, data, parse_criteria(CRITERIA), card=CARD, device="cpu", inputs=given)


def test_every_element_of_the_plan_from_the_report_and_the_run(result):
    record = change_control(result.record, RunRecord.model_validate(RUN))
    doc = record.to_json()
    assert doc["schema"] == SCHEMA and doc["verdict"] == result.record.verdict == "fail"
    assert "Predetermined Change Control Plan" in doc["framework"]
    assert list(doc) == [
        "schema",
        "created_utc",
        "framework",
        "verdict",
        "description_of_modification",
        "modification_protocol",
        "impact_assessment",
    ]
    protocol = doc["modification_protocol"]
    assert list(protocol) == [
        "data_management",
        "method",
        "performance_evaluation",
        "update_procedure",
    ]
    what = doc["description_of_modification"]
    assert what["forget_selection"] == "label == 0" and what["kind"] == "class"
    assert what["forget_set"]["n"] == 20
    assert what["original_model"]["sha256"] == result.record.models["original"].sha256
    assert what["revised_model"]["sha256"] == result.record.models["candidate"].sha256
    assert what["base_model_sha256"] == "b" * 64 and "with the method auto" in what["summary"]
    data = protocol["data_management"]
    assert data["used"]["training"] == {"forget": 20, "retain": 20}
    assert data["used"]["manifest_digest"] == "d1"
    assert [s["name"] for s in data["used"]["validation_sets"]] == [
        "forget",
        "retain",
        "heldout_forget",
        "heldout_retain",
    ]
    assert data["used"]["calibration"]["rows"] == {"heldout_forget": 5}
    assert data["excluded"]["forget_set"] == 20 and data["excluded"]["calibration_rows"] == 5
    assert data["excluded"]["run_decode_failures"] == 2
    assert data["excluded"]["decode_failures"] == 0
    method = protocol["method"]
    assert method["name"] == "auto" and method["seed"] == 7
    assert method["settings"] == {"lr": 0.01, "epochs": 3}
    choice = {"chosen": "psg", "chosen_step": 40, "candidates": 2, "note": None}
    assert method["automatic_choice"] == choice
    assert method["software"]["torch"] == "2.13.0"
    evaluation = protocol["performance_evaluation"]
    assert evaluation["verdict"] == "fail" and evaluation["summary"] == "1 of 2 gates passed"
    assert evaluation["criteria"]["sha256"] == result.record.inputs.criteria.sha256
    assert evaluation["report"]["sha256"] == report_digest(result.record)
    by_name = {g["name"]: g for g in evaluation["gates"]}
    forgotten = by_name["forgotten"]
    assert forgotten["metric"] == "accuracy" and forgotten["threshold"] == 0.5
    assert forgotten["value"] == pytest.approx(5 / 20) and forgotten["passed"] is True
    assert [g["passed"] for g in evaluation["gates"]] == [g.passed for g in result.verdicts]
    update = protocol["update_procedure"]
    assert update["deliverable"].startswith("model folder") and "bundle" not in update
    assert [s["name"] for s in update["schemes"]] == ["key", "certificate"]
    assert any(step.startswith("revise export") for step in update["steps"])
    assert any("--ca" in step for step in update["steps"])
    impact = doc["impact_assessment"]
    held = next(a for a in impact["accuracy"] if a["set"] == "heldout_retain" and not a["group"])
    assert (held["original"], held["revised"]) == (1.0, 0.75) and held["change"] == -0.25
    per_device = [a for a in impact["accuracy"] if a["group"] == {"device": "a"}]
    assert {a["set"] for a in per_device} == set(result.record.sets)
    assert impact["agreement"]["heldout_retain"] == pytest.approx(0.75)
    assert impact["target"]["met"] is False
    assert "forget accuracy above retrain's" in impact["warnings"]
    assert any(w.startswith("gates failed: ") for w in impact["warnings"])
    again = ChangeControl.model_validate(json.loads(json.dumps(doc)))
    assert again.to_json() == json.loads(json.dumps(doc))  # round-trips


def test_without_a_run_record_the_method_says_so(result):
    doc = change_control(result.record).to_json()
    method = doc["modification_protocol"]["method"]
    assert method["name"] is None and "no run record" in method["note"]
    assert doc["description_of_modification"]["base_model_sha256"] is None
    assert doc["impact_assessment"]["target"] is None


def test_written_beside_the_report_and_shown_first(result, tmp_path):
    out = write_report(result, tmp_path / "report")
    written = json.loads((out / CHANGE_CONTROL).read_text())
    assert written == json.loads(json.dumps(result.change_control.to_json()))
    assert read_change_control(out / CHANGE_CONTROL, hint="validate again").to_json() == written
    digest = written["modification_protocol"]["performance_evaluation"]["report"]["sha256"]
    import hashlib

    on_disk = json.loads((out / REPORT_JSON).read_text())
    assert digest == hashlib.sha256(json.dumps(on_disk, sort_keys=True).encode()).hexdigest()
    page = (out / REPORT_HTML).read_text(encoding="utf-8")
    sections = page.split('<section id="')[1:]
    assert sections[0].startswith('change_control">') and "<h2>Change control</h2>" in sections[0]
    assert sections[1].startswith('gates">')
    for title in (
        "Description of the modification",
        "Data management: used and excluded",
        "Method",
        "Performance evaluation",
        "Update procedure",
        "Impact assessment",
    ):
        assert f"<h3>{title}</h3>" in sections[0]
    assert page == render_html(result.record, result.change_control)


def test_a_damaged_file_is_refused_naming_the_field(tmp_path):
    from revise.errors import ModelError

    path = tmp_path / CHANGE_CONTROL
    path.write_text(json.dumps({"schema": SCHEMA, "verdict": "maybe"}))
    with pytest.raises(ModelError, match="verdict"):
        read_change_control(path, hint="validate again")


def test_hostile_strings_are_escaped(result):
    hostile = result.record.model_copy(deep=True)
    hostile.forget_selection = '<script>alert("x")</script>'
    page = render_html(hostile)
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page


def test_carried_into_the_bundle_and_listed(bundle_copy):
    """`revise validate BUNDLE` puts it into the bundle beside the report; bundle.json lists it
    (so the signature covers it) and it names the very files the verdict covers."""
    bundle = bundle_copy("pass")
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert CHANGE_CONTROL in manifest["files"]
    doc = json.loads((bundle / CHANGE_CONTROL).read_text())
    report = json.loads((bundle / REPORT_JSON).read_text())
    update = doc["modification_protocol"]["update_procedure"]
    assert update["deliverable"] == "bundle"
    assert update["bundle"]["files"] == report["inputs"]["bundle"]["files"]
    assert update["bundle"]["sha256"] == report["inputs"]["bundle"]["sha256"]
    assert CHANGE_CONTROL not in update["bundle"]["files"]
    assert {CHANGE_CONTROL, REPORT_JSON, "bundle.json"} <= set(
        update["bundle"]["written_after_validation"]
    )
    evaluation = doc["modification_protocol"]["performance_evaluation"]
    assert evaluation["report"]["sha256"] == manifest["validation"]["report_sha256"]
    assert doc["verdict"] == manifest["validation"]["verdict"] == "pass"
