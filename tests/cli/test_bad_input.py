"""Bad input through the CLI: one clear line on stderr naming the file or field, the right exit
code, and no partial output (no -o target, no stray ``*.part`` files beside it).

Small sites are copies of one patient folder of the shared demo site (tests/cli/conftest.py).
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


def test_folder_of_only_bad_files_fails(cli, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.dcm").write_text("not DICOM")
    (site / "b.dcm").write_bytes(b"\x00\x01\x02" * 50)
    manifest, failures = tmp_path / "m.parquet", tmp_path / "f.csv"
    result = cli("index", site, "-o", manifest, "--failures", failures, code=1)
    line = cli.one_line_error(result)
    assert str(site) in line and "2 unreadable" in line
    _assert_nothing_written(cli, tmp_path, manifest)
    # the failures file says why, even though nothing was indexed
    assert sorted(pd.read_csv(failures)["path"]) == [str(site / "a.dcm"), str(site / "b.dcm")]


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
