"""Inputs that gave silently wrong numbers with exit 0, or an ``internal error``: each is now
refused with one line naming the file, the rows and the column, never a patient value.

Probes kept (what a careless user tried, and what revise must do):
* a manifest whose ``sample_key`` repeats (every key the same: retain accuracy 0.083 instead of
  1.000, exit 0), or is empty in a row: every command that reads the manifest (`evaluate`,
  `select`, ...; they all pass through ``manifest.load``) exits 1 naming the first two lines
  (CSV) or rows (Parquet) that share a key, how many more do, and the column;
* a label CSV with two rows for one image that disagree on ``label`` or ``split`` (last row
  used to win): `revise index --labels` exits 1 naming both lines and the column; rows keyed by
  ``path`` count as the same image when their paths name the same file. Rows that repeat one
  another exactly (same key, label and split) are accepted: whichever is used, the result is
  the same, and concatenated label exports repeat rows;
* a label CSV or a manifest CSV saved as Latin-1 (``Müller``): exit 2, one line naming the file,
  the line and the fix (save it as UTF-8), not ``internal error``; the bytes are not echoed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from revise.data import manifest as manifest_mod


def _keys_all_equal(site_manifest: Path, out: Path) -> Path:
    df = manifest_mod.load(site_manifest)
    df["sample_key"] = df["sample_key"].iloc[0]
    df.to_csv(out, index=False) if out.suffix == ".csv" else df.to_parquet(out, index=False)
    return out


@pytest.mark.parametrize(
    ("suffix", "unit"), [(".csv", "lines 2 and 3"), (".parquet", "rows 1 and 2")]
)
def test_evaluate_refuses_a_manifest_whose_sample_keys_repeat(
    cli, demo_site, tmp_path, suffix, unit
):
    manifest = _keys_all_equal(demo_site.manifest, tmp_path / f"m{suffix}")
    key = manifest_mod.load(demo_site.manifest)["sample_key"].iloc[0]
    result = cli(
        "evaluate", "--model", demo_site.model, "--data", manifest, "--device", "cpu", code=1
    )
    line = cli.one_line_error(result)
    n = len(manifest_mod.load(demo_site.manifest))
    assert f"manifest {manifest} {unit}: the same sample_key ({n - 2} more rows repeat" in line
    assert "re-create the manifest with `revise index`" in line
    assert key not in line


def test_select_refuses_one_repeated_key_naming_its_lines(cli, tmp_path):
    keys = [f"s-{i:016x}" for i in range(10)]
    keys[8] = keys[4]  # data rows 5 and 9: lines 6 and 10 under the header
    df = pd.DataFrame({"sample_key": keys, "path": [f"/p/{i}.dcm" for i in range(10)]})
    df.to_csv(tmp_path / "m.csv", index=False)
    line = cli.one_line_error(cli("select", tmp_path / "m.csv", "frame is empty", code=1))
    assert "lines 6 and 10: the same sample_key (every row needs its own key)" in line, line
    assert keys[4] not in line


def test_an_empty_sample_key_is_refused(cli, tmp_path):
    df = pd.DataFrame({"sample_key": ["s-1", "", "s-3"], "path": ["/a", "/b", "/c"]})
    df.to_csv(tmp_path / "m.csv", index=False)
    line = cli.one_line_error(cli("select", tmp_path / "m.csv", "frame is empty", code=1))
    assert f"manifest {tmp_path / 'm.csv'} line 3: sample_key is empty" in line, line


# --------------------------------------------------------------------------------------------
# Label files
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_site(demo_site, tmp_path) -> tuple[Path, list[str]]:
    """Three DICOM files of the demo site in a folder of their own, and their SOPInstanceUIDs."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    sources = sorted(demo_site.dicom.rglob("*.dcm"))[:3]
    for source in sources:
        shutil.copy(source, folder / source.name)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in sources]
    return folder, uids


def _labels(path: Path, rows: list[str], header: str = "sop_instance_uid,label,split") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    ("second", "column"),
    [("{uid},1,train", "label"), ("{uid},0,heldout", "split")],
)
def test_conflicting_label_rows_are_refused_naming_both_lines(
    cli, tiny_site, tmp_path, second, column
):
    folder, uids = tiny_site
    labels = _labels(
        tmp_path / "labels.csv",
        [f"{uids[0]},0,train", f"{uids[1]},1,train", second.format(uid=uids[0]), f"{uids[2]},2,"],
    )
    out = tmp_path / "m.parquet"
    result = cli("index", folder, "-o", out, "--labels", labels, code=1)
    line = cli.one_line_error(result)
    assert (
        f"label file {labels} lines 2 and 4: the same sop_instance_uid with different {column}"
        in line
    )
    assert "keep one row per image" in line and uids[0] not in line
    assert not out.exists()


def test_rows_for_one_file_by_different_paths_conflict(cli, tiny_site, tmp_path):
    folder, _ = tiny_site
    name = sorted(p.name for p in folder.iterdir())[0]
    labels = _labels(tmp_path / "labels.csv", [f"{name},0", f"./{name},1"], header="path,label")
    line = cli.one_line_error(
        cli("index", folder, "-o", tmp_path / "m.csv", "--labels", labels, code=1)
    )
    assert "lines 2 and 3: the same path with different label" in line, line
    assert name not in line


def test_exact_duplicate_label_rows_are_accepted(cli, tiny_site, tmp_path):
    folder, uids = tiny_site
    rows = [
        f"{uids[0]},0,train",
        f"{uids[1]},1,heldout",
        f"{uids[0]},0,train",
        f" {uids[1]} ,1,heldout",
    ]
    labels = _labels(tmp_path / "labels.csv", rows)
    out = tmp_path / "m.parquet"
    cli("index", folder, "-o", out, "--labels", labels, code=0)
    df = manifest_mod.load(out).set_index("sop_instance_uid")
    assert df.loc[uids[0], "label"] == 0 and df.loc[uids[1], "split"] == "heldout"
    assert pd.isna(df.loc[uids[2], "label"])


# --------------------------------------------------------------------------------------------
# Text that is not UTF-8
# --------------------------------------------------------------------------------------------


def test_a_latin1_label_file_is_a_usage_error(cli, tiny_site, tmp_path):
    folder, uids = tiny_site
    labels = tmp_path / "labels.csv"
    text = f"sop_instance_uid,label,reader\n{uids[0]},0,Smith\n{uids[1]},1,Müller\n"
    labels.write_bytes(text.encode("latin-1"))
    result = cli("index", folder, "-o", tmp_path / "m.csv", "--labels", labels, code=2)
    line = cli.one_line_error(result)
    assert f"label file {labels} line 3 is not UTF-8 text (save it as UTF-8" in line, line
    assert "M" not in line.split("line 3")[1].split("(")[0] and "\\xfc" not in line


def test_a_latin1_manifest_is_a_usage_error(cli, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("sample_key,path,device\ns-1,/a,Acme\ns-2,/b,Müller\n".encode("latin-1"))
    line = cli.one_line_error(cli("select", manifest, 'device == "Acme"', code=2))
    assert f"manifest {manifest} line 3 is not UTF-8 text (save it as UTF-8" in line, line
    assert "\\xfc" not in line and "0xfc" not in line
