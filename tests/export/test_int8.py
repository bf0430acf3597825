"""The INT8 variant (model.int8.onnx): `revise export --int8` of the shared psg run on the demo
site (tests/cli_site.py), its calibration on retain images only, its gate at export, the INT8
gates of `revise validate`, and the signature over a bundle that ships it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from cli_site import quick_recipe

from revise.data import manifest as manifest_mod
from revise.data.select import mask
from revise.data.split import is_heldout, partition
from revise.errors import ExportError, SelectionError, UsageError
from revise.export.manifest import INT8_ONNX, MODEL_ONNX
from revise.export.onnx_file import graph_digest, read_metadata
from revise.export.quantize import CALIBRATION_SAMPLES, forget_selection, retain_rows

GATES = """\
gates:
  - {{name: int8 agrees per device, metric: int8_label_agreement, set: heldout_retain,
     per: device, at_least: {agree}}}
  - {{name: int8 agrees on the forgotten device, metric: int8_label_agreement,
     set: heldout_forget, at_least: {agree_forget}}}
  - {{name: int8 keeps accuracy, metric: int8_accuracy_change, set: heldout_retain,
     per: label, at_least: {change}}}
"""
PASSING = GATES.format(agree=0.9, agree_forget=0.8, change=-0.2)
IMPOSSIBLE = """\
gates:
  - {name: int8 disagrees everywhere, metric: int8_label_agreement, set: heldout_retain,
     per: device, at_most: 0.05}
  - {name: int8 gains 50 points, metric: int8_accuracy_change, set: heldout_forget,
     at_least: 0.5}
"""


@pytest.fixture(scope="module")
def int8_export(cli, demo_site, psg_run, tmp_path_factory, isolated_env):
    """`revise export RUN --data MANIFEST --int8` (the forget selection from run.json), with
    every decode call recorded: (bundle, rows each load_tensors call decoded, stdout)."""
    from revise.data import tensors

    ran, run_folder = psg_run
    if ran.exit_code != 0:
        pytest.skip("the shared psg run failed (see test_unlearn_psg_run)")

    out = tmp_path_factory.mktemp("int8") / "bundle"
    decoded: list[pd.DataFrame] = []
    real = tensors.load_tensors

    def spy(rows, *args, **kwargs):
        decoded.append(rows.copy())
        return real(rows, *args, **kwargs)

    with isolated_env(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(tensors, "load_tensors", spy)
        result = cli("export", run_folder, "-o", out, "--data", demo_site.manifest, "--int8")
    assert result.exit_code == 0, cli.describe(result)
    return out, decoded, result.stdout


def test_the_int8_file_is_a_qdq_model_onnx_runtime_runs(int8_export, demo_site):
    import onnxruntime as ort

    bundle, _, _ = int8_export
    path = bundle / INT8_ONNX
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert any(len(t.dims) == 4 for t in int8), "no int8 convolution weights"
    assert not list(bundle.glob("*.data")), "one file, no external data"
    assert {entry.domain for entry in proto.opset_import} == {""}
    # the same metadata as the fp32 file (provenance, card, image metadata)
    assert read_metadata(path) == read_metadata(bundle / MODEL_ONNX)

    x = np.random.default_rng(0).normal(size=(5, 1, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (5, 10) and np.isfinite(logits).all()


def test_bundle_json_records_the_variant(int8_export):
    bundle, _, stdout = int8_export
    manifest = json.loads((bundle / "bundle.json").read_text())
    variant = manifest["onnx"]["variants"][INT8_ONNX]
    assert variant["precision"] == "int8"
    assert variant["graph_sha256"] == graph_digest(bundle / INT8_ONNX)
    assert variant["tolerance"] == {"min_label_agreement": 0.95}
    parity = variant["parity"]
    assert parity["passed"] is True and parity["label_agreement"] >= 0.95 and parity["n"] > 0
    assert parity["max_abs_diff"] > 0 and parity["rtol"] is None and parity["atol"] is None
    assert variant["quantization"]["format"] == "QDQ"
    assert "per output channel" in variant["quantization"]["weights"]
    assert variant["calibration"]["n"] == CALIBRATION_SAMPLES
    assert "the forget selection of run.json" in variant["calibration"]["source"]
    assert INT8_ONNX in manifest["files"]
    assert f"{INT8_ONNX}: parity on" in stdout and "INT8 calibration: 256 retain rows" in stdout


def test_calibration_never_reads_a_forget_set_image(int8_export, demo_site):
    bundle, decoded, _ = int8_export
    training = [rows for rows in decoded if not is_heldout(rows).any()]
    assert len(training) == 1, "one decode of training rows: the calibration images"
    (calibration,) = training
    df = manifest_mod.load(demo_site.manifest)
    forget_keys = set(df[mask(df, 'device == "Borealis CR-7"')]["sample_key"])
    retain_keys = set(partition(df, 'device == "Borealis CR-7"')["retain"]["sample_key"])
    keys = set(calibration["sample_key"])
    assert len(keys) == CALIBRATION_SAMPLES and not keys & forget_keys and keys <= retain_keys
    assert set(calibration["device"]) == {"Acme DX-100"}
    assert len(set(calibration["label"])) == 10  # drawn at random: every class is there
    recorded = json.loads((bundle / "bundle.json").read_text())["onnx"]["variants"][INT8_ONNX]
    assert recorded["calibration"]["sample_keys_sha256"] == manifest_mod.digest(calibration)


def test_retain_rows_are_training_rows_outside_the_selection(demo_site):
    df = manifest_mod.load(demo_site.manifest)
    forget = "label in [0, 1]"
    rows = retain_rows(df, forget, 40)
    assert len(rows) == 40 and not is_heldout(rows).any()
    assert not set(rows["label"].astype(str)) & {"0", "1"}
    assert rows.equals(retain_rows(df, forget, 40))  # the same rows every time
    everything = retain_rows(df, forget, 10**6)
    assert len(everything) == len(partition(df, forget)["retain"])
    with pytest.raises(SelectionError, match="leaves nothing to retain"):
        retain_rows(df, "label >= 0", 10)


def test_a_model_without_a_forget_selection_is_refused(cli, demo_site, tmp_path):
    result = cli(
        "export", demo_site.model, "-o", tmp_path / "b", "--data", demo_site.manifest, "--int8"
    )
    assert result.exit_code == 1
    line = cli.one_line_error(result)
    assert "calibrated on retain images only" in line and "records no forget selection" in line
    assert "--forget" in line
    assert not (tmp_path / "b").exists()


def test_int8_needs_the_manifest(cli, run_folder, tmp_path):
    result = cli("export", run_folder, "-o", tmp_path / "b", "--int8", code=2)
    assert "--int8 needs the site's manifest" in cli.one_line_error(result)


def _with_selection(run_folder: Path, tmp_path: Path, selection: str) -> Path:
    copy = Path(shutil.copytree(run_folder, tmp_path / "run"))
    record = json.loads((copy / "run.json").read_text())
    record["forget_selection"] = selection
    (copy / "run.json").write_text(json.dumps(record))
    return copy


def test_a_hidden_or_other_recorded_selection_is_refused(run_folder, demo_site, tmp_path):
    df = manifest_mod.load(demo_site.manifest)
    selection, whence = forget_selection(run_folder, df, None)
    assert selection == 'device == "Borealis CR-7"' and "run.json" in whence
    hidden = _with_selection(run_folder, tmp_path / "a", "patient in [2 identifiers]")
    with pytest.raises(ExportError, match="hidden") as err:
        forget_selection(hidden, df, None)
    assert err.value.options == ("forget",)
    other = _with_selection(run_folder, tmp_path / "b", "label == 0")
    with pytest.raises(ExportError, match="other training rows of this manifest"):
        forget_selection(other, df, None)
    assert forget_selection(other, df, "label == 0") == ("label == 0", "the forget selection given")


@pytest.fixture
def int8_bundle(int8_export, tmp_path) -> Path:
    return Path(shutil.copytree(int8_export[0], tmp_path / "bundle"))


def _validate(cli, site, bundle: Path, criteria: str, out: Path, tmp_path: Path):
    gates = tmp_path / "gates.yaml"
    gates.write_text(criteria)
    return cli(
        "validate", bundle, "--original", site.model, "--data", site.manifest,
        "--forget", 'device == "Borealis CR-7"', "--criteria", gates, "-o", out,
        "--device", "cpu",
    )  # fmt: skip


def test_int8_gates_pass_and_the_report_shows_the_variant(cli, demo_site, int8_bundle, tmp_path):
    from revise.export.keys import generate_keys
    from revise.export.signing import sign_bundle, verify_bundle

    out = tmp_path / "report"
    result = _validate(cli, demo_site, int8_bundle, PASSING, out, tmp_path)
    assert result.exit_code == 0, cli.describe(result)
    report = json.loads((out / "revision_report.json").read_text())
    int8 = report["int8"]
    assert int8["file"]["graph_sha256"] == graph_digest(int8_bundle / INT8_ONNX)
    for s in ("heldout_forget", "heldout_retain"):
        agreement = int8["agreement"][s]
        assert 0.8 <= agreement["value"] <= 1.0 and agreement["n"] == report["sets"][s]["n"]
        assert set(agreement["by"]) == {"device", "label"}
        fp32, quantized = int8["accuracy"]["fp32"][s], int8["accuracy"]["int8"][s]
        # each of the three is rounded to 4 places in the report
        assert int8["change"][s]["value"] == pytest.approx(
            quantized["value"] - fp32["value"], abs=2e-4
        )
    assert set(int8["change"]["heldout_retain"]["by"]["label"]) == {f"digit {i}" for i in range(10)}
    metrics = {gate["metric"] for gate in report["gates"]}
    assert metrics == {"int8_label_agreement", "int8_accuracy_change"}
    assert "int8_label_agreement" in report["definitions"]
    html = (out / "report.html").read_text()
    assert 'id="int8"' in html and "INT8 accuracy" in html and "Acme DX-100" in html

    # the validated bundle that ships model.int8.onnx signs, and verifies
    private, public = tmp_path / "keys/int8.key", tmp_path / "keys/int8.pub"
    generate_keys(private, public)
    sign_bundle(int8_bundle, private)
    verified = verify_bundle(int8_bundle, public)
    assert verified.ok, verified.message
    data = bytearray((int8_bundle / INT8_ONNX).read_bytes())
    data[-1] ^= 0x01
    (int8_bundle / INT8_ONNX).write_bytes(bytes(data))
    tampered = verify_bundle(int8_bundle, public)
    assert not tampered.ok and INT8_ONNX in tampered.changed


def test_impossible_int8_thresholds_fail(cli, demo_site, int8_bundle, tmp_path):
    out = tmp_path / "report"
    result = _validate(cli, demo_site, int8_bundle, IMPOSSIBLE, out, tmp_path)
    assert result.exit_code == 1, cli.describe(result)
    report = json.loads((out / "revision_report.json").read_text())
    assert report["verdict"] == "fail" and report["summary"] == "0 of 2 gates passed"
    names = [gate["name"] for gate in report["gates"]]
    assert names == ["int8 disagrees everywhere", "int8 gains 50 points"]
    assert report["gates"][0]["group"] == {"device": "Acme DX-100"}
    lines = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert (
        len(lines) == 2 and "int8_accuracy_change" in lines[1] and "misses at least 0.5" in lines[1]
    )


def test_an_int8_gate_on_a_bundle_without_the_variant_is_refused(cli, export_site, tmp_path):
    from export_site import validate_args

    criteria = tmp_path / "gates.yaml"
    criteria.write_text(PASSING)
    bundle = Path(shutil.copytree(export_site.bundles[None], tmp_path / "bundle"))
    args = validate_args(
        bundle, export_site.manifest, export_site.models[0], criteria, tmp_path / "out"
    )
    result = cli(*args, code=2)
    assert "needs the int8 model" in result.stderr
    assert "revise export --int8" in result.stderr


def test_int8_metrics_are_measured_on_held_out_sets_only():
    from revise.validate.criteria import parse_criteria

    with pytest.raises(UsageError, match="int8_label_agreement is measured on heldout_forget"):
        parse_criteria("gates:\n  - {metric: int8_label_agreement, set: retain, at_least: 0.9}")
    gate = parse_criteria("gates:\n  - {metric: int8_accuracy_change, at_least: -0.02}").gates[0]
    assert gate.set == "heldout_retain"


def _recipe(tmp_path: Path, site, export: dict) -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "gates.yaml").write_text(PASSING)
    return quick_recipe(tmp_path, site, export=export, validate={"criteria": "gates.yaml"})


def test_a_recipe_calibrates_on_its_own_retain_set(demo_site, tmp_path):
    from revise._io.outputs import RESOLVED_RECIPE
    from revise.cli import cli as revise_cli
    from revise.recipe import load_plan

    plan = load_plan(_recipe(tmp_path, demo_site, {"int8": True, "calibration_samples": 64}))
    stages = {stage.name: stage for stage in plan.stages}
    for stage in plan.stages:  # the outputs later stages read exist by then (click checks)
        stage.output.mkdir(parents=True, exist_ok=True)
    (plan.workdir / RESOLVED_RECIPE).write_text("")
    args = stages["export"].args
    export = revise_cli.commands["export"].make_context("export", list(args[1:])).params
    assert export["int8"] is True and export["calibration_samples"] == 64
    assert export["forget"] == 'device == "Borealis CR-7"'
    # INT8 gates need the variant: a recipe that does not export it is refused before any work
    with pytest.raises(UsageError, match="needs the int8 model"):
        load_plan(_recipe(tmp_path / "plain", demo_site, {"name": "digits"}))


def test_the_export_gate_refuses_an_int8_variant_below_its_agreement(int8_export, tmp_path):
    import torch

    from revise.export.quantize import CalibrationImages, int8_variant
    from revise.models.io import load_model

    bundle, _, _ = int8_export
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copyfile(bundle / MODEL_ONNX, folder / MODEL_ONNX)
    g = torch.Generator().manual_seed(0)
    calibration = CalibrationImages(torch.randn(32, 1, 16, 16, generator=g), ("k",) * 32, "test")
    samples = torch.randn(16, 1, 16, 16, generator=g)
    with pytest.raises(ExportError, match="predicts another class than PyTorch too often") as err:
        int8_variant(load_model(bundle), folder, samples, calibration, min_agreement=1.01)
    assert err.value.options == ("calibration_samples", "int8")
    variant = int8_variant(load_model(bundle), folder, samples, calibration, min_agreement=0.0)
    assert variant.parity is not None and variant.parity.n == 16 and variant.parity.passed
