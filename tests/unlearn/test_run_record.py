"""The run record (run.json) as a typed value: a damaged one is refused naming the file and the
field, one of an older version loads, and the JSON written keeps its shape."""

from __future__ import annotations

import json

import pytest

from revise._run_record import BaseModelRef, RunRecord, TargetCheck, read_run_record
from revise.data.calibration import run_record
from revise.errors import ModelError
from revise.merge import load_run
from revise.unlearn.api import save_run, unlearn

# A run.json as revise wrote it before world_size, compiled, stopped_at_step, decode_left_out,
# calibration and base_model's format were recorded, with a method's own fact (shadow_class).
OLD = {
    "method": "boundary_expand",
    "hyperparameters": {"lr": 0.01, "epochs": 1},
    "seed": 0,
    "device": "cpu",
    "forget_samples": 12,
    "retain_samples": 100,
    "resumed_from_step": None,
    "wall_clock_s": {"setup": 0.01, "unlearn": 1.5},
    "versions": {"revise": "0.1.0", "torch": "2.3.0", "python": "3.11.0"},
    "steps": 4,
    "shadow_class": 10,
    "target": {"kind": "class", "estimated_distance": 0.02, "met": True},
    "forget_selection": "label == 0",
    "selection_digests": {"forget": "f" * 64, "retain": "r" * 64},
    "base_model_digest": "b" * 64,
    "decode_failures": 0,
    "metrics": {"forget": {"n": 12, "accuracy": 0.0}},
    "base_model": {"path": "/models/deployed"},
}


def test_an_old_run_record_loads_and_is_written_back_unchanged(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(OLD))
    record = run_record(tmp_path)
    assert record is not None and record.method == "boundary_expand"
    assert record.calibration is None and record.compiled is None and record.world_size is None
    assert record.target.met is True and record.base_model.path == "/models/deployed"
    assert record.shadow_class == 10  # a method's own fact, kept as it was
    assert record.to_json() == OLD  # no key added (not even as null), none lost


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("seed", "zero", "seed"),
        ("wall_clock_s", {"unlearn": "fast"}, "wall_clock_s.unlearn"),
        ("target", {"met": "maybe"}, "target.met"),
        ("base_model", "deployed/", "base_model"),
        ("base_model_digest", 7, "base_model_digest"),
        ("calibration", {"rule": "patient"}, "calibration.fraction"),
    ],
)
def test_a_wrong_typed_field_is_refused_naming_the_file_and_the_field(
    tmp_path, field, value, named
):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**OLD, field: value}))
    for read in (run_record, lambda folder: read_run_record(folder / "run.json", hint="fix")):
        with pytest.raises(ModelError) as info:
            read(tmp_path)
        message = str(info.value)
        assert str(path) in message and named in message, message
        assert "pydantic" not in message.lower()


def test_a_record_without_a_method_is_refused(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({k: v for k, v in OLD.items() if k != "method"}))
    with pytest.raises(ModelError, match=r"run\.json.*method"):
        run_record(tmp_path)


def test_parts_set_after_the_start_are_written_and_checked():
    record = RunRecord(method="psg", wall_clock_s={"unlearn": 1.0})
    record.wall_clock_s["data"] = 0.25  # filled in place, as the pipeline does
    record.target = TargetCheck(kind="class", met=False, warning="too far")
    record.base_model = BaseModelRef(path="/m")
    assert record.to_json() == {
        "method": "psg",
        "wall_clock_s": {"unlearn": 1.0, "data": 0.25},
        "target": {"kind": "class", "met": False, "warning": "too far"},
        "base_model": {"path": "/m"},
    }
    with pytest.raises(ValueError, match="seed"):
        record.seed = "zero"  # an assignment is checked too


def test_a_saved_run_keeps_the_keys_unlearn_writes(digits, tmp_path):
    result = unlearn(
        digits["net"], digits["card"], digits["forget"], digits["retain"],
        method="finetune", config={"epochs": 1}, device="cpu",
    )  # fmt: skip
    result.record.base_model_digest = "0" * 64
    result.record.base_model = BaseModelRef(path=str(tmp_path / "base"))
    folder = save_run(result, tmp_path / "run")
    written = json.loads((folder / "run.json").read_text())
    assert set(written) == {
        "method", "hyperparameters", "seed", "device", "world_size", "forget_samples",
        "retain_samples", "resumed_from_step", "stopped_at_step", "compiled", "wall_clock_s",
        "versions", "steps", "base_model_digest", "base_model",
    }  # fmt: skip
    assert written["resumed_from_step"] is None and written["compiled"] is False
    loaded = load_run(folder)  # merge reads it back as the same typed record
    assert loaded.record.to_json() == written
    assert loaded.base_digest == "0" * 64
