"""Bad input through the CLI: one clear line on stderr naming the file or field, the right exit
code, and no partial output (no -o target, no stray ``*.part`` files beside it).

Small sites are copies of one patient folder of the shared demo site (tests/cli_site.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

FORGET_DEVICE = "Borealis CR-7"
OTHER_DEVICE = "Acme DX-100"


@pytest.fixture
def small_site(demo_site, tmp_path) -> Path:
    """A writable copy of one patient's DICOM files (a few dozen)."""
    return Path(shutil.copytree(demo_site.dicom / "05", tmp_path / "site" / "05")).parent


def _dicoms(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


def _assert_nothing_written(cli, parent: Path, *targets: Path) -> None:
    for target in targets:
        assert not target.exists(), f"{target} was written"
    assert cli.leftovers(parent) == []


# --- unreadable files while indexing -----------------------------------------------------------


def test_text_file_named_dcm_is_reported_and_left_out(cli, demo_site, small_site, tmp_path):
    good = len(_dicoms(small_site))
    bad = small_site / "05" / "bad.dcm"
    bad.write_text("patient notes, not an image\n")
    manifest = tmp_path / "m.parquet"
    result = cli("index", small_site, "-o", manifest, "--labels", demo_site.labels, code=0)
    assert "1 unreadable files" in result.stderr
    reported = [line for line in result.stderr.splitlines() if "bad.dcm" in line]
    assert len(reported) == 1, cli.describe(result)
    reason = reported[0].split("bad.dcm", 1)[1].lstrip(": ").strip()
    assert reason, "the failure carries a reason"
    df = pd.read_parquet(manifest)
    assert len(df) == good and df["label"].notna().all()
    assert not df["path"].str.endswith("bad.dcm").any()
    assert cli.leftovers(tmp_path) == []


@pytest.mark.parametrize("cut", ["half", "pixels"])
def test_truncated_dicom_is_reported_and_the_run_goes_on(cli, small_site, tmp_path, cut):
    files = _dicoms(small_site)
    victim = files[len(files) // 2]
    data = victim.read_bytes()
    # "half" ends inside the header; "pixels" ends inside the pixel data
    victim.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-40])
    manifest, failures = tmp_path / "m.parquet", tmp_path / "f.csv"
    result = cli("index", small_site, "-o", manifest, "--failures", failures, code=0)
    assert f"{victim}: " in result.stderr, cli.describe(result)
    assert "truncated" in result.stderr
    assert len(pd.read_parquet(manifest)) == len(files) - 1
    table = pd.read_csv(failures)
    assert table["path"].tolist() == [str(victim)]
    assert "truncated" in table.loc[0, "reason"]


# --- selections --------------------------------------------------------------------------------

NOTHING = 'device == "Nope"'


def test_unlearn_selection_matching_nothing(cli, demo_site, tmp_path):
    out = tmp_path / "run"
    result = cli(*cli.unlearn_args(demo_site, out, forget=NOTHING), code=2)
    line = cli.one_line_error(result)
    assert NOTHING in line and "match" in line
    _assert_nothing_written(cli, tmp_path, out)
    assert list(tmp_path.iterdir()) == []


def test_unlearn_selection_matching_nothing_lists_existing_devices(cli, demo_site, tmp_path):
    result = cli(*cli.unlearn_args(demo_site, tmp_path / "run", forget=NOTHING), code=2)
    line = cli.one_line_error(result)
    assert FORGET_DEVICE in line and OTHER_DEVICE in line


# --- model files that are not what they claim --------------------------------------------------


@pytest.fixture
def text_as_safetensors(demo_site, tmp_path) -> Path:
    model = Path(shutil.copytree(demo_site.model, tmp_path / "model"))
    (model / "model.safetensors").write_text("this is not a model\n")
    return model


@pytest.fixture
def random_onnx(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(bytes(range(256)) * 20)
    return path


@pytest.mark.parametrize("kind", ["text_as_safetensors", "random_onnx"])
def test_unlearn_with_a_bad_model_file(cli, demo_site, tmp_path, request, kind):
    model = request.getfixturevalue(kind)
    bad_file = model / "model.safetensors" if model.is_dir() else model
    out = tmp_path / "run"
    args = cli.unlearn_args(demo_site, out)
    args[args.index("--model") + 1] = model
    result = cli(*args, code=1)
    line = cli.one_line_error(result)
    assert str(bad_file) in line
    assert ("safetensors" if kind == "text_as_safetensors" else "ONNX") in line
    _assert_nothing_written(cli, tmp_path, out)


@pytest.mark.parametrize("kind", ["text_as_safetensors", "random_onnx"])
def test_export_with_a_bad_model_file(cli, demo_site, tmp_path, request, kind):
    model = request.getfixturevalue(kind)
    bad_file = model / "model.safetensors" if model.is_dir() else model
    out = tmp_path / "out" / "bundle"
    result = cli("export", model, "-o", out, "--data", demo_site.manifest, code=1)
    assert str(bad_file) in cli.one_line_error(result)
    _assert_nothing_written(cli, tmp_path, out)


# --- manifests and label files -----------------------------------------------------------------


@pytest.fixture
def wrong_suffix(demo_site, tmp_path) -> Path:
    return Path(shutil.copy(demo_site.manifest, tmp_path / "manifest.txt"))


@pytest.fixture
def corrupt_parquet(demo_site, tmp_path) -> Path:
    path = tmp_path / "manifest.parquet"
    data = demo_site.manifest.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


@pytest.mark.parametrize("command", ["unlearn", "evaluate", "select", "export"])
@pytest.mark.parametrize("kind", ["wrong_suffix", "corrupt_parquet"])
def test_bad_manifest(cli, demo_site, tmp_path, request, kind, command):
    manifest = request.getfixturevalue(kind)
    out = tmp_path / "out" / ("bundle" if command == "export" else "result.csv")
    unlearn = cli.unlearn_args(demo_site, out)
    unlearn[unlearn.index("--data") + 1] = manifest
    args = {
        "unlearn": unlearn,
        "evaluate": ["evaluate", "--model", demo_site.model, "--data", manifest, "--device", "cpu"],
        "select": ["select", manifest, "label == 1", "-o", out],
        "export": ["export", demo_site.model, "-o", out, "--data", manifest],
    }[command]
    result = cli(*args, code=1)
    line = cli.one_line_error(result)
    assert str(manifest) in line
    assert ("suffix" if kind == "wrong_suffix" else "unreadable") in line
    _assert_nothing_written(cli, tmp_path, out, out.parent)


def test_label_file_without_label_column(cli, demo_site, small_site, tmp_path):
    labels = tmp_path / "labels.csv"
    table = pd.read_csv(demo_site.labels, dtype=str)
    table.rename(columns={"label": "diagnosis"}).to_csv(labels, index=False)
    manifest = tmp_path / "out" / "m.parquet"
    result = cli("index", small_site, "-o", manifest, "--labels", labels, code=1)
    line = cli.one_line_error(result)
    assert str(labels) in line and "'label'" in line
    _assert_nothing_written(cli, tmp_path, manifest, manifest.parent)


def test_label_map_with_a_non_integer_class(cli, small_site, tmp_path):
    manifest = tmp_path / "m.parquet"
    args = ["index", small_site, "-o", manifest, "--label-tag", "body_part"]
    result = cli(*args, "--label-map", "HAND=x", code=2)
    line = cli.one_line_error(result)
    assert "HAND=x" in line and "internal error" not in line
    _assert_nothing_written(cli, tmp_path, manifest)


def test_label_map_without_label_tag_and_a_misspelt_tag(cli, small_site, tmp_path):
    manifest = tmp_path / "m.parquet"
    result = cli("index", small_site, "-o", manifest, "--label-map", "HAND=0", code=2)
    assert "--label-map needs --label-tag" in cli.one_line_error(result)
    args = ["index", small_site, "-o", manifest, "--label-tag", "Modality"]
    result = cli(*args, "--label-map", "OT=0", code=2)
    assert "did you mean modality?" in cli.one_line_error(result)
    _assert_nothing_written(cli, tmp_path, manifest)


def test_export_to_a_file_name_ending_in_onnx_says_the_bundle_is_a_folder(cli, demo_site, tmp_path):
    out = tmp_path / "model.onnx"
    result = cli("export", demo_site.model, "-o", out, code=2)
    line = cli.one_line_error(result)
    assert "the bundle is a folder" in line and str(tmp_path / "model" / "model.onnx") in line
    _assert_nothing_written(cli, tmp_path, out)


# --- outputs that exist already ----------------------------------------------------------------


def _sweep_args(demo_site, out: Path, *grid: str) -> list[object]:
    grid_args = [arg for item in grid or ("gamma=0",) for arg in ("--grid", item)]
    return [
        "sweep",
        "--model",
        demo_site.model,
        "--data",
        demo_site.manifest,
        "--forget",
        f'device == "{FORGET_DEVICE}"',
        *grid_args,
        "--set",
        "epochs=1",
        "-o",
        out,
        "--device",
        "cpu",
    ]


def test_sweep_refuses_an_existing_out_folder_and_keeps_it(cli, demo_site, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("earlier results\n")
    cache = tmp_path / "cache"
    result = cli(*_sweep_args(demo_site, out), "--cache", cache, code=2)
    line = cli.one_line_error(result)
    assert f"{out} already exists" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "earlier results\n"
    assert not cache.exists(), "refused before any image was decoded"


# --- options refused before any work -----------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        (
            ("lr=1e-3", "lr=1e-4"),
            "--grid lr given twice (give all values in one: --grid lr=1e-3,1e-4)",
        ),
        (("lr=1e-3,",), "empty value in --grid lr=1e-3,"),
        (("lr=1e-3,,1e-4",), "did you mean --grid lr=1e-3,1e-4?"),
    ],
)
def test_sweep_grid_repeated_or_with_an_empty_value(cli, demo_site, tmp_path, grid, expected):
    out = tmp_path / "results"
    result = cli(*_sweep_args(demo_site, out, *grid), code=2)
    assert expected in cli.one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_to_group_by_file_path(cli, demo_site, tmp_path):
    json_out = tmp_path / "metrics.json"
    args = ["evaluate", "--model", demo_site.model, "--data", demo_site.manifest]
    result = cli(*args, "--by", "path", "--json", json_out, "--device", "cpu", code=2)
    line = cli.one_line_error(result)  # also: nothing on stdout, so no path was printed
    assert "--by path" in line and "patients" in line
    assert str(demo_site.dicom) not in result.output
    assert not json_out.exists()


def test_evaluate_unknown_by_column_suggests_the_close_one(cli, demo_site, tmp_path):
    args = ["evaluate", "--model", demo_site.model, "--data", demo_site.manifest]
    result = cli(*args, "--by", "devise", "--device", "cpu", code=2)
    line = cli.one_line_error(result)
    assert "--by devise: no such manifest column" in line and "(did you mean device," in line


def test_select_on_path_matching_nothing_lists_no_file_paths(cli, demo_site):
    result = cli("select", demo_site.manifest, 'path == "/x/Doe^John.dcm"', code=2)
    line = cli.one_line_error(result)
    assert "matched 0 of 1797 rows" in line
    assert str(demo_site.dicom) not in line and ".dcm, " not in line
    files = pd.read_parquet(demo_site.manifest)["path"].nunique()
    assert f"path has {files} distinct values (not listed" in line


def test_select_to_a_file_that_is_not_a_manifest_prints_and_writes_nothing(
    cli, demo_site, tmp_path
):
    out = tmp_path / "rows.txt"
    result = cli("select", demo_site.manifest, "label == 1", "-o", out, code=2)
    line = cli.one_line_error(result)  # nothing selected on stdout before the error
    assert f"-o {out}" in line and ".parquet or .csv" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--label-map", "HAND=0"], "--label-map needs --label-tag"),
        (["--label-tag", "body_part", "--label-map", "HAND=x"], "'HAND=x' is not VALUE=CLASS"),
        (["--label-tag", "body_part"], "--label-tag body_part needs --label-map"),
        (["--label-tag", "Modality", "--label-map", "OT=0"], "did you mean modality?"),
    ],
)
def test_index_label_options_are_checked_before_the_site_is_read(
    cli, small_site, tmp_path, monkeypatch, options, expected
):
    import revise.data.index

    def must_not_run(*args, **kwargs):
        raise AssertionError("the site was indexed before the options were checked")

    monkeypatch.setattr(revise.data.index, "index", must_not_run)
    manifest, failures = tmp_path / "m.parquet", tmp_path / "f.csv"
    args = ["index", small_site, "-o", manifest, "--failures", failures, *options]
    result = cli(*args, code=2)
    assert expected in cli.one_line_error(result)
    _assert_nothing_written(cli, tmp_path, manifest, failures)


@pytest.mark.parametrize("command", ["evaluate", "unlearn", "sweep"])
def test_device_that_is_not_a_device(cli, demo_site, tmp_path, command):
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    args = {
        "evaluate": ["evaluate", "--model", demo_site.model, "--data", demo_site.manifest],
        "unlearn": cli.unlearn_args(demo_site, out),
        "sweep": _sweep_args(demo_site, out),
    }[command]
    result = cli(*args, "--cache", cache, "--device", "gpu", code=2)
    line = cli.one_line_error(result)
    assert "--device 'gpu' is not a device" in line and "cuda:N" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_device_cuda_without_a_gpu_is_refused_before_decoding(
    cli, demo_site, tmp_path, monkeypatch, device
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cache = tmp_path / "cache"
    args = ["evaluate", "--model", demo_site.model, "--data", demo_site.manifest]
    result = cli(*args, "--cache", cache, "--device", device, code=2)
    line = cli.one_line_error(result)
    assert f"--device {device} was asked for but no CUDA device is available" in line
    assert "--device cpu" in line
    assert not cache.exists(), "refused before any image was decoded"


def test_export_parity_samples_must_be_positive(cli, demo_site, tmp_path):
    out = tmp_path / "bundle"
    result = cli("export", demo_site.model, "-o", out, "--parity-samples", "0", code=2)
    assert "--parity-samples" in result.stderr and "0 is not in the range x>=1" in result.stderr
    _assert_nothing_written(cli, tmp_path, out)


# --- onnxruntime missing (the bare install, without the cpu or gpu extra) ----------------------

PARITY_GATE = "gates:\n  - metric: parity_label_agreement\n    at_least: 1.0\n"


@pytest.mark.parametrize("command", ["export", "validate", "demo"])
def test_commands_needing_onnxruntime_say_how_to_install_it(
    cli, demo_site, tmp_path, monkeypatch, command
):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    work = tmp_path / "work"
    work.mkdir()
    (work / "gates.yaml").write_text(PARITY_GATE)
    (work / "model.onnx").write_bytes(b"\x08\x07")
    out = tmp_path / "out"
    args = {
        "export": ["export", demo_site.model, "-o", out, "--data", demo_site.manifest],
        "validate": [
            "validate",
            demo_site.model,
            "--original",
            demo_site.model,
            "--data",
            demo_site.manifest,
            "--forget",
            f'device == "{FORGET_DEVICE}"',
            "--criteria",
            work / "gates.yaml",
            "--onnx",
            work / "model.onnx",
            "-o",
            out,
            "--device",
            "cpu",
        ],
        "demo": ["demo", "-o", out, "--device", "cpu"],
    }[command]
    result = cli(*args, code=1)
    line = cli.one_line_error(result)
    assert "onnxruntime" in line and "is not installed" in line and "internal error" not in line
    assert 'pip install -e ".[cpu]"' in line and ".[gpu]" in line
    _assert_nothing_written(cli, tmp_path, out)
