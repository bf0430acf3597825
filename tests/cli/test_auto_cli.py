"""`revise unlearn --method auto` on the shared DICOM site: the run record says what it chose and
how close it estimates it came, and the held-out rows it calibrated on are never judged."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from revise.data import manifest as manifest_mod
from revise.data.calibration import (
    MIN_PATIENTS,
    calibration_mask,
    run_record,
    split_heldout,
    without_calibration,
)
from revise.data.split import partition

CLASS = "label == 3"


@pytest.fixture(scope="module")
def auto_run(cli, demo_site, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "run"
    args = ["unlearn", "--model", demo_site.model, "--data", demo_site.manifest]
    result = cli(*args, "--forget", CLASS, "-o", out, "--device", "cpu")  # auto: the default
    return result, out


def test_auto_forgets_a_class_and_says_what_it_chose(cli, auto_run):
    result, out = auto_run
    assert result.exit_code == 0, cli.describe(result)
    assert "auto (class forgetting): chose " in result.stdout
    assert "chose original" not in result.stdout
    assert "estimated distance to a retrained model" in result.stdout
    record = json.loads((out / "run.json").read_text())
    assert record["method"] == "auto" and record["target"]["met"]
    # the keys every part writes (auto, the pipeline, the stage), as before the typed record
    assert set(record) - {"warning", "note"} == {
        "method", "chosen", "chosen_step", "hyperparameters", "seed", "device", "target",
        "candidates", "budget_image_passes", "wall_clock_s", "versions", "forget_samples",
        "retain_samples", "calibration", "forget_selection", "selection_digests",
        "base_model_digest", "decode_failures", "decode_left_out", "metrics", "base_model",
    }  # fmt: skip
    assert set(record["calibration"]) == {"fraction", "rule", "rows"}
    assert {"original", "reached", "estimated_distance", "met"} <= set(record["target"])
    assert record["metrics"]["forget"]["accuracy"] <= 0.02
    assert record["metrics"]["heldout_forget"]["accuracy"] <= 0.05
    original = record["target"]["original"]
    assert record["metrics"]["retain"]["accuracy"] >= original["retain"] - 0.02
    calibration = record["calibration"]
    assert calibration["fraction"] == 0.3 and calibration["rows"]["heldout_retain"] > 0


def test_the_record_is_judged_without_the_calibration_rows(cli, demo_site, auto_run):
    _, out = auto_run
    record = json.loads((out / "run.json").read_text())
    parts = partition(manifest_mod.load(demo_site.manifest), CLASS)
    judged = without_calibration(parts, run_record(out))  # as validate reads it
    for name in ("heldout_forget", "heldout_retain"):
        n = record["metrics"][name]["n"]
        assert n == len(judged[name]) < len(parts[name]), name
        assert record["selection_digests"][name] == manifest_mod.digest(judged[name])
    # the site holds out 6 patients, too few to slice by patient: the slices are rows, and
    # together they are the held-out rows
    _, calibration = split_heldout(parts)
    held = calibration["heldout_retain"]
    assert parts["heldout_retain"]["patient"].nunique() < MIN_PATIENTS
    assert len(held) + len(judged["heldout_retain"]) == len(parts["heldout_retain"])
    assert 0.15 < len(held) / len(parts["heldout_retain"]) < 0.45


def test_auto_takes_no_settings(cli, demo_site, tmp_path):
    args = ["unlearn", "--model", demo_site.model, "--data", demo_site.manifest]
    result = cli(
        *args, "--forget", CLASS, "--method", "auto", "--set", "lr=1", "-o", tmp_path / "r", code=2
    )
    assert "--method auto takes no --set" in result.stderr
    assert not (tmp_path / "r").exists()
    # without --method, --set names no method: the message says how to name one
    result = cli(*args, "--forget", CLASS, "--set", "lr=1", "-o", tmp_path / "r", code=2)
    assert "name the method with --method" in result.stderr and "e.g. --method psg" in result.stderr
    assert not (tmp_path / "r").exists()


def test_calibration_rows_follow_the_patient_and_are_stable():
    rows = pd.DataFrame(
        {
            "sample_key": [f"k{i}" for i in range(400)],
            "patient": [f"p{i // 4}" for i in range(400)][:300] + [""] * 100,
        }
    )
    mask = calibration_mask(rows)
    assert mask.equals(calibration_mask(rows.sample(frac=1, random_state=1)).sort_index())
    by_patient = mask[:300].groupby(rows["patient"][:300]).agg(["min", "max"])
    assert (by_patient["min"] == by_patient["max"]).all()  # a patient is never split
    share = mask.mean()
    assert abs(share - 0.3) < 0.1, share
    assert without_calibration({"x": rows}, None)["x"] is rows
    few = pd.DataFrame({"sample_key": [f"k{i}" for i in range(200)], "patient": ["p1", "p2"] * 100})
    assert 0.15 < calibration_mask(few).mean() < 0.45  # two patients: sliced by row instead


def test_a_damaged_run_record_is_an_error_not_a_silent_full_judgement(tmp_path):
    from revise.errors import ModelError

    assert run_record(tmp_path) is None  # no record: nothing was calibrated on
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="not a JSON object"):
        run_record(tmp_path)


CEILING = (
    "gates:\n  - {name: device forgotten, metric: accuracy, set: heldout_forget, at_most: 0.5}\n"
)


def test_criteria_guide_only_the_automatic_revision(cli, demo_site, tmp_path):
    gates = tmp_path / "gates.yaml"
    gates.write_text(CEILING)
    args = ["unlearn", "--model", demo_site.model, "--data", demo_site.manifest]
    out = tmp_path / "r"
    result = cli(*args, "--forget", cli.forget, "--method", "psg", "--criteria", gates, "-o", out)
    assert result.exit_code == 2, cli.describe(result)
    assert "acceptance criteria guide only the automatic revision, not psg" in result.stderr
    assert not out.exists()
    result = cli(*args, "--forget", cli.forget, "--criteria", gates, "-o", gates, code=2)
    assert "would replace the input" in result.stderr and gates.read_text() == CEILING


@pytest.mark.slow  # a device revision under the ceiling: about 15 s
def test_auto_aims_under_the_criteria_ceiling_on_a_device(cli, demo_site, tmp_path):
    gates = tmp_path / "gates.yaml"
    gates.write_text(CEILING)
    args = ["unlearn", "--model", demo_site.model, "--data", demo_site.manifest]
    out = tmp_path / "run"
    result = cli(*args, "--forget", cli.forget, "--criteria", gates, "-o", out, "--device", "cpu")
    assert result.exit_code == 0, cli.describe(result)
    assert f"aiming under gate 'device forgotten' of {gates}" in result.stdout
    record = json.loads((out / "run.json").read_text())
    assert record["chosen"].startswith("psg (group")
    assert record["target"]["ceiling_source"] == f"gate 'device forgotten' of {gates}"
    original = record["target"]["original"]["heldout_forget"]
    assert original >= 0.8  # the deployed model reads the device it was trained on
    assert record["metrics"]["heldout_forget"]["accuracy"] <= original - 0.25  # toward the ceiling
