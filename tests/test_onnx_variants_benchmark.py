"""benchmarks/onnx_variants.py: its timing loop on a real (tiny) ONNX Runtime session, and the
page it writes from its JSON (the committed run's)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "onnx_variants.py"
RESULTS = ROOT / "benchmarks" / "results" / "onnx_variants-cpu.json"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("onnx_variants_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("onnx_variants_bench", None)


def test_throughput_times_windows_of_real_runs(bench, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    got = bench.throughput(bench.session(path, 1), np.ones((32, 4), np.float32), 3, 0.02)
    assert len(got["windows_images_per_s"]) == 3 and got["runs_per_window"] >= 3
    assert got["images_per_s"] == sorted(got["windows_images_per_s"])[1] > 0


def test_the_committed_run_is_complete_and_its_page_is_the_json(bench):
    report = json.loads(RESULTS.read_text())
    assert set(report["variants"]) == {"pytorch fp32", "fp32", "fp16", "int8"}
    for name in ("fp32", "fp16", "int8"):
        row = report["variants"][name]
        assert row["batch_1"]["images_per_s"] > 0 and row["batch_32"]["images_per_s"] > 0
        assert set(row["accuracy"]) == {"heldout_retain", "heldout_forget"}
    assert report["variants"]["fp32"]["agreement_with_fp32"]["heldout_retain"] == 1.0
    assert report["int8"]["quantization"]["format"] == "QDQ"
    assert report["int8"]["calibration"]["source"] == "the demo's retain set"
    page = (ROOT / "docs" / "benchmarks" / "onnx-variants.md").read_text()
    assert page == bench.markdown(report)
