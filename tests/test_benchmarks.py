"""benchmarks/throughput.py: a tiny CPU run writes complete, sane JSON and its Markdown section,
and the efficiency arithmetic and section merging do what the README says."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def bench():
    name = "_revise_benchmark_throughput"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


OTHER_SECTION = (
    "<!-- throughput:nvidia-h200 -->\n## nvidia-h200\n\nkept\n<!-- /throughput:nvidia-h200 -->"
)


def test_a_tiny_cpu_run_writes_sane_json_and_markdown(bench, tmp_path, keep_threads):
    out, md = tmp_path / "results" / "throughput-cpu.json", tmp_path / "throughput.md"
    md.write_text("# Throughput\n\n" + OTHER_SECTION + "\n")
    argv = ["--models", "small_cnn", "--batch", "8", "--steps", "2", "--warmup", "1"]
    argv += ["--repeats", "2", "--threads", "1", "--device", "cpu"]
    returned = bench.main([*argv, "--out", str(out), "--markdown", str(md)])

    data = json.loads(out.read_text())
    assert data["models"].keys() == returned["models"].keys() == {"small_cnn"}
    machine, settings = data["machine"], data["settings"]
    assert machine["device_kind"] == "cpu" and machine["cpu"] and machine["date"]
    assert machine["torch"] == torch.__version__
    assert settings["dtype"] == "fp32" and settings["batch"] == 8 and settings["steps"] == 2
    assert settings["psg_compiled"] is False

    model = data["models"]["small_cnn"]
    assert "error" not in model
    assert model["batch"] == 8 and model["input"] == [3, 32, 32]
    assert positive(model["train_img_s"])
    assert set(model["components_ms"]) == set(bench.COMPONENTS)
    assert all(positive(v) for v in model["components_ms"].values())
    assert set(model["psg"]) == {"phi0", "phi1"}
    for key, row in model["psg"].items():
        assert row["phi"] == (0.0 if key == "phi0" else 1.0)
        assert row["steps"] == 2 and row["images"] == 16
        for field in ("img_s", "unlearn_s", "attack_s", "update_s", "ideal_s"):
            assert positive(row[field]), (key, field, row[field])
        for field in ("efficiency", "efficiency_modelled", "attack_efficiency"):
            assert 0 < row[field] < 5, (key, field, row[field])
        assert positive(row["update_efficiency"])
        assert row["attack_frac"] + row["update_frac"] == pytest.approx(1.0, abs=1e-3)
        assert row["img_s"] == pytest.approx(16 / row["unlearn_s"], rel=1e-3)

    text = md.read_text()
    assert OTHER_SECTION in text  # another device's section survives
    assert text.count("<!-- throughput:cpu -->") == 1
    assert "| small_cnn | 3x32x32 | 8 |" in text


@pytest.mark.slow  # compiles C++ kernels
def test_compile_adds_psg_with_compiled_networks(bench, tmp_path, keep_threads):
    out = tmp_path / "throughput.json"
    argv = ["--models", "small_cnn", "--batch", "8", "--steps", "2", "--warmup", "1"]
    argv += ["--threads", "1", "--device", "cpu", "--compile", "--no-markdown"]
    bench.main([*argv, "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["settings"]["psg_compiled"] is True
    model = data["models"]["small_cnn"]
    assert positive(model["train_compiled_img_s"]) and "psg_compiled_error" not in model
    row = model["psg"]["phi0 compiled"]
    assert row["compiled"] is True and row["steps"] == 2
    assert 0 < row["efficiency_vs_compiled_train"] < 5
    assert model["psg"]["phi0"]["compiled"] is False


def test_efficiency_is_the_measured_passes_over_the_actual_time(bench):
    comp = {
        "labeler_forward": 1.0,
        "labeler_forward_input_grad": 2.0,
        "train_step": 3.0,
        "forward_backward": 2.5,
    }
    run = {"unlearn_s": 20.0, "attack_s": 8.0, "update_s": 12.0, "steps": 2, "images": 64}
    row0 = bench.psg_row(dict(run), comp, 0.0)
    assert row0["ideal_s"] == pytest.approx(2 * (2 + 1 + 3))
    assert row0["efficiency"] == pytest.approx(12 / 20)
    assert row0["attack_efficiency"] == pytest.approx(6 / 8)
    assert row0["update_efficiency"] == pytest.approx(6 / 12)
    assert row0["efficiency_modelled"] == pytest.approx(2 * 3 * 2 / 20)  # 2 tau per step
    assert row0["img_s"] == pytest.approx(64 / 20)
    row1 = bench.psg_row(dict(run), comp, 1.0)
    assert row1["ideal_s"] == pytest.approx(2 * (2 + 1 + 3 + 2.5))
    assert row1["efficiency_modelled"] == pytest.approx(2 * 3 * 3 / 20)  # 3 tau per step


def test_markdown_sections_are_replaced_in_place_and_others_kept(bench):
    def section(kind: str, body: str) -> str:
        return f"<!-- throughput:{kind} -->\n{body}\n<!-- /throughput:{kind} -->"

    fresh = bench.merge_markdown(None, section("cpu", "first-body"), "cpu")
    assert fresh.startswith("# ") and section("cpu", "first-body") in fresh
    both = bench.merge_markdown(fresh, section("nvidia-h200", "gpu"), "nvidia-h200")
    again = bench.merge_markdown(both, section("cpu", "second-body"), "cpu")
    assert section("cpu", "second-body") in again and "first-body" not in again
    assert section("nvidia-h200", "gpu") in again
    assert again.index("throughput:cpu") < again.index("throughput:nvidia-h200")


def test_model_list_and_the_imagenet_resnets(bench):
    requests = bench.parse_models("allcnn:filters_percentage=0.1,small_cnn:widths=(4,8),resnet50")
    assert [r.spec.name for r in requests] == ["allcnn", "small_cnn", "resnet50"]
    assert requests[0].kwargs == {"filters_percentage": 0.1}
    assert requests[1].kwargs == {"widths": (4, 8)}
    assert requests[1].build()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # the standard ImageNet ResNets (torchvision's parameter counts)
    assert sum(p.numel() for p in bench.resnet50().parameters()) == 25_557_032
    assert sum(p.numel() for p in bench.resnet18().parameters()) == 11_689_512
    with pytest.raises(SystemExit):
        bench.parse_models("resnet1000")


# --- benchmarks/fashion_mnist.py ----------------------------------------------------------------

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def require_fashion_mnist() -> None:
    import os

    if not FASHION_MNIST.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("CI installs dataset-fashion-mnist (apt-get); it is missing")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")


@contextlib.contextmanager
def benchmark_module(script: str):
    """benchmarks/<script> loaded as a module (and unloaded after)."""
    name = f"_revise_benchmark_{Path(script).stem}"
    spec = importlib.util.spec_from_file_location(name, SCRIPT.with_name(script))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def fashion_tiny(tmp_path_factory):
    """The benchmark at its tiny scale (the CI smoke run), with its models saved."""
    require_fashion_mnist()
    with benchmark_module("fashion_mnist.py") as module:
        root = tmp_path_factory.mktemp("fashion")
        argv = [
            "--scale",
            "tiny",
            "--device",
            "cpu",
            "--out",
            str(root / "r.json"),
            "--markdown",
            str(root / "r.md"),
            "--save-models",
            str(root / "fmnist-models"),
        ]
        with torch.random.fork_rng(devices=[]):
            report = module.main(argv)
        yield root, report, module


@pytest.mark.slow  # a benchmark end to end at its tiny scale
def test_fashion_mnist_tiny_run_writes_every_number(fashion_tiny):
    root, report, fashion_module = fashion_tiny
    saved = json.loads((root / "r.json").read_text())
    assert saved["summary"] == report["summary"] and set(saved["scenarios"]) == {
        "class0",
        "random10",
    }
    configs = fashion_module.method_configs(fashion_module.SCALES["tiny"])
    labels = {"original", "retrain"} | {label for _, label, _ in configs}
    labels |= {label for label, _, _ in fashion_module.MERGES}
    assert {"boundary_shrink", "psg gamma=0.0001 lam=0", "finetune"} < labels
    for scenario, rows in saved["summary"].items():
        assert set(rows) == labels, scenario
        for label, row in rows.items():
            for column in ("fa", "ra", "ta", "loss_mia", "mia_efficacy", "distance", "avg_gap"):
                assert math.isfinite(row[column]), (scenario, label, column)
        assert rows["retrain"]["distance"] == 0.0 and rows["retrain"]["avg_gap"] == 0.0
    assert "test_forget" in saved["summary"]["class0"]["retrain"]
    text = (root / "r.md").read_text()
    assert "| boundary_shrink |" in text and "Published (the paper" in text


@pytest.mark.slow  # a benchmark end to end at its tiny scale
def test_the_fashion_mnist_recipe_checks_out_against_the_saved_models(fashion_tiny, tmp_path):
    """examples/fashion_mnist_recipe.yaml is a valid recipe once the benchmark saved its models
    (checked as a whole, commands printed; the full run is a GPU job)."""
    import shutil

    from click.testing import CliRunner

    from revise.cli import cli

    root, _, _ = fashion_tiny
    examples = Path(__file__).resolve().parents[1] / "examples"
    (tmp_path / "examples").mkdir()
    for name in ("fashion_mnist_recipe.yaml", "fashion_mnist_gates.yaml"):
        shutil.copy(examples / name, tmp_path / "examples" / name)
    shutil.copytree(root / "fmnist-models", tmp_path / "fmnist-models")
    recipe = tmp_path / "examples" / "fashion_mnist_recipe.yaml"
    result = CliRunner().invoke(cli, ["run", str(recipe), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "[index] revise index /usr/share/datasets/fashion-mnist" in result.output
    assert "[validate] revise validate" in result.output and "--reference" in result.output


# --- benchmarks/sweep_concurrency.py -----------------------------------------------------------


@pytest.mark.slow  # a benchmark end to end at its tiny scale
def test_sweep_concurrency_tiny_run_matches_the_sequential_sweep(tmp_path):
    require_fashion_mnist()
    out, md = tmp_path / "s.json", tmp_path / "sweep.md"
    argv = ["--device", "cpu", "--per-class", "20", "--grid", "2x2", "--levels", "1,2"]
    with benchmark_module("sweep_concurrency.py") as module, torch.random.fork_rng(devices=[]):
        results = module.main([*argv, "--out", str(out), "--markdown", str(md)])
    levels = json.loads(out.read_text())["levels"]
    assert [level["concurrent"] for level in levels] == [1, 2]
    assert len(levels[0]["outcome"]) == 4  # 2 gammas x 2 lambdas
    assert all(level["same_runs_as_sequential"] for level in levels)
    assert levels[0]["speedup_vs_sequential"] == 1.0
    assert positive(levels[1]["sum_of_single_runs_s"]) and positive(levels[1]["grid_wall_clock_s"])
    assert results["settings"]["forget_images"] == 20
    text = md.read_text()
    assert text.startswith("# Sweeps") and "<!-- sweep:cpu -->" in text
    assert "| 2 |" in text and "| yes |" in text


def test_the_gpu_session_script_parses():
    import subprocess

    script = SCRIPT.with_name("gpu_session.sh")
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


# --- benchmarks/scenarios.py: the scenario suite -----------------------------------------------


@pytest.fixture(scope="module")
def suite_tiny(tmp_path_factory):
    """The suite at its tiny scale on digits: all four scenarios, two baselines and the automatic
    revision where revise has it."""
    threads = torch.get_num_threads()
    with benchmark_module("scenarios.py") as module:
        root = tmp_path_factory.mktemp("scenarios")
        argv = ["--scale", "tiny", "--datasets", "digits", "--threads", "1"]
        argv += ["--methods", "finetune,neggrad_plus,auto", "--out", str(root / "s.json")]
        try:
            with torch.random.fork_rng(devices=[]):
                report = module.main(argv)
        finally:
            torch.set_num_threads(threads)
        yield root, report, module


@pytest.mark.slow  # a benchmark end to end at its tiny scale
def test_scenario_suite_tiny_run_has_every_row_and_sane_numbers(suite_tiny):
    root, report, module = suite_tiny
    saved = json.loads((root / "s.json").read_text())
    assert saved["results"] == report["results"]
    assert [(r["dataset"], r["scenario"]) for r in saved["results"]] == [
        ("digits", kind) for kind in ("class", "device", "patients", "random")
    ]
    auto = ["auto"] if saved["auto"]["available"] else []
    assert saved["auto"]["available"] == (module.load_auto()[0] is not None)
    machine = saved["machine"]
    assert machine["date"] and machine["torch"] == torch.__version__ and "git_commit" in machine
    assert saved["settings"]["threads"] == 1 and saved["settings"]["target"]["distance"] == 0.03
    counts = saved["datasets"]["digits"]["counts"]
    for result in saved["results"]:
        rows, c = result["rows"], result["counts"]
        # a device is also revised under a site's ceiling, as --criteria gives one
        ceiling = [module.AUTO_CEILING] if auto and result["scenario"] == "device" else []
        assert set(rows) == {"original", "retrain", "finetune", "neggrad_plus", *auto, *ceiling}
        assert c["forget"] + c["retain"] == counts["train"]
        assert c["test_forget"] + c["test_retain"] == counts["test"]
        assert c["calibration_forget"] + c["calibration_retain"] == counts["calibration"]
        ref = rows["retrain"]
        assert ref["distance"] == ref["avg_gap"] == ref["ta_gap"] == 0.0
        assert ref["time_vs_retrain"] == 1.0 and ref["seconds"] == result["retrain_seconds"]
        assert "meets_target" not in rows["original"]  # no unlearning time: no verdict
        # retraining against itself: another seed, scored against the reference like any row
        (other,) = result["other_retrains"].values()
        assert set(result["other_retrains"]) == {"retrain, seed 1"}
        expected = math.hypot(other["ra"] - ref["ra"], other["fa"] - ref["fa"])
        assert other["distance"] == pytest.approx(expected, abs=1e-4)
        assert other["ta_gap"] == pytest.approx(abs(other["ta"] - ref["ta"]), abs=1e-4)
        for label, row in rows.items():
            assert "error" not in row, (result["scenario"], label, row.get("error"))
            for key in ("fa", "ra", "ta", "mia_efficacy"):
                assert 0.0 <= row[key] <= 1.0, (label, key)
            expected = math.hypot(row["ra"] - ref["ra"], row["fa"] - ref["fa"])
            assert row["distance"] == pytest.approx(expected, abs=1e-4)
            assert row["ta_gap"] == pytest.approx(abs(row["ta"] - ref["ta"]), abs=1e-4)
            if label in ("original", "retrain"):
                continue
            ratio = row["seconds"] / result["retrain_seconds"]
            assert row["time_vs_retrain"] == pytest.approx(ratio, rel=0.05, abs=0.01)
            misses = {k for k, limit in module.TARGET.items() if row[k] > limit}
            assert set(row["target_misses"]) == misses
            assert row["meets_target"] == (not misses)
    by_kind = {r["scenario"]: r["rows"] for r in saved["results"]}
    # class forgetting: the original knows the class, the retrained model never predicts it
    assert by_kind["class"]["original"]["fa"] >= 0.8
    assert by_kind["class"]["retrain"]["fa"] == 0.0
    assert by_kind["class"]["retrain"]["test_forget"] == 0.0
    # the retired device is still partly recognised by a model that never saw it
    assert 0.2 < by_kind["device"]["retrain"]["fa"] < by_kind["device"]["original"]["fa"]
    for kind in ("patients", "random"):
        assert "test_forget" not in by_kind[kind]["retrain"]
        assert by_kind[kind]["retrain"]["fa"] >= 0.5  # unseen digits of the same kind
        lo, hi = by_kind[kind]["retrain"]["loss_mia_interval"]
        assert lo <= by_kind[kind]["retrain"]["loss_mia"] <= hi

    text = (root / "s.md").read_text()
    for kind in ("class", "device", "patients", "random"):
        assert f"## digits / {kind}:" in text
    assert text.count("| finetune |") == 4 and text.count("| retrain |") == 4
    assert text.count("| retrain, seed 1 |") == 4
    assert "## The automatic revision against the target" in text
    assert ("of 4 scenarios." if auto else "No row: the automatic revision") in text
    if auto:
        assert f"| digits | device, {module.AUTO_CEILING} |" in text
        ceiling = by_kind["device"][module.AUTO_CEILING]
        assert ceiling["config"]["chosen"] != "original (unchanged)" or ceiling["fa"] <= 0.5


@pytest.mark.slow  # a benchmark end to end at its tiny scale
def test_scenario_suite_render_rewrites_the_markdown(suite_tiny, tmp_path):
    root, _, module = suite_tiny
    md = tmp_path / "again.md"
    module.main(["--render", str(root / "s.json"), "--markdown", str(md)])
    assert md.read_text() == (root / "s.md").read_text()


def load_suite_helpers():
    benchmarks = str(SCRIPT.parent)
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    import _suite_data
    import _suite_scenarios

    return _suite_data, _suite_scenarios


def test_suite_datasets_are_deterministic_split_by_patient_and_two_device():
    data_mod, _ = load_suite_helpers()
    size = data_mod.DataSize(400, 80)
    a, b = data_mod.lesions(size, 0), data_mod.lesions(size, 0)
    assert torch.equal(a.x, b.x) and (a.label == b.label).all() and (a.split == b.split).all()
    assert not torch.equal(a.x, data_mod.lesions(size, 1).x)
    assert a.x.shape == (400, 3, 48, 48) and 0.0 <= float(a.x.min()) <= float(a.x.max()) <= 1.0
    assert set(a.label.tolist()) == {0, 1, 2, 3}
    for data in (a, data_mod.digits(data_mod.DataSize(300, 30), 0)):
        splits = {s: set(data.patient[data.mask(s)].tolist()) for s in data_mod.SPLITS}
        assert not splits["train"] & (splits["test"] | splits["calibration"])
        assert not splits["test"] & splits["calibration"]
        assert sum(data.counts().values()) == len(data.label)
        for p in set(data.patient.tolist()):  # one device per patient
            assert len(set(data.device[data.patient == p].tolist())) == 1
        assert 0.15 < data.device.mean() < 0.5


def test_fashion_mnist_site_has_a_second_device():
    require_fashion_mnist()
    data_mod, _ = load_suite_helpers()
    data = data_mod.fashion(data_mod.DataSize(600, 40), 0)
    assert data.x.shape == (600, 1, 28, 28) and (np.bincount(data.label) == 60).all()
    brightness = data.x.mean(dim=(1, 2, 3)).numpy()
    # the synthetic device lifts black to 0.07 and brightens the mid-tones (gamma 0.75)
    assert brightness[data.device == 1].mean() > brightness[data.device == 0].mean() + 0.03
    g = torch.Generator().manual_seed(0)
    black, white = torch.zeros(50, 1, 28, 28), torch.ones(50, 1, 28, 28)
    assert float(data_mod.second_device(black, g).mean()) == pytest.approx(0.03**0.75, abs=0.01)
    assert float(data_mod.second_device(white, g).mean()) == pytest.approx(0.88**0.75, abs=0.01)


def test_suite_scenarios_forget_the_right_rows_and_never_hand_out_test_rows():
    data_mod, sc_mod = load_suite_helpers()
    data = data_mod.lesions(data_mod.DataSize(400, 80), 0)
    train, cal, test = (data.mask(s) for s in ("train", "calibration", "test"))
    for kind in sc_mod.KINDS:
        sc = sc_mod.build_scenario(data, kind, 0)
        assert not (sc.forget & ~train).any(), kind
        assert not (sc.test_forget & ~test).any(), kind
        assert not ((sc.calibration_forget | sc.calibration_retain) & ~cal).any(), kind
        assert not (sc.calibration_forget & sc.calibration_retain).any(), kind
        assert (sc.calibration_forget | sc.calibration_retain)[cal].all(), kind
    c = sc_mod.build_scenario(data, "class", 0)
    assert (c.forget == (train & (data.label == 0))).all()
    assert (c.calibration_forget == (cal & (data.label == 0))).all()
    d = sc_mod.build_scenario(data, "device", 0)
    assert (d.forget == (train & (data.device == 1))).all() and d.test_forget.sum() > 0
    p = sc_mod.build_scenario(data, "patients", 0)
    chosen = set(data.patient[p.forget].tolist())
    assert (p.forget == (train & np.isin(data.patient, list(chosen)))).all()
    train_patients = len(set(data.patient[train].tolist()))
    assert len(chosen) == round(sc_mod.PATIENT_SHARE * train_patients)
    r = sc_mod.build_scenario(data, "random", 0)
    assert r.forget.sum() == round(0.1 * train.sum()) and not r.test_forget.any()
