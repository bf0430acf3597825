"""`revise index` and `revise select` on real files: the --failures report and PHI-free output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pydicom
from clirunner import describe, invoke

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def test_failures_file_is_written_when_every_file_failed(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.dcm").write_text("not DICOM")
    (site / "b.dcm").write_bytes(b"\x00\x01\x02" * 50)
    manifest, failures = tmp_path / "m.parquet", tmp_path / "f.csv"
    result = invoke("index", site, "-o", manifest, "--failures", failures, code=1)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), describe(result)
    # The error names the first files and why, and points at the full list.
    assert f"{site / 'a.dcm'}: not a DICOM file (a text file)" in errors[0]
    assert f"{site / 'b.dcm'}: not a DICOM file" in errors[0] and str(failures) in errors[0]
    assert str(site) in errors[0] and "2 unreadable" in errors[0]
    table = pd.read_csv(failures)
    assert table.columns.tolist() == ["path", "reason"]
    assert table["path"].tolist() == [str(site / "a.dcm"), str(site / "b.dcm")]
    assert not manifest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv", "site"]  # no *.part left


def test_failures_file_is_rewritten_when_nothing_failed(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", site / "ct.dcm")
    failures = tmp_path / "f.csv"
    failures.write_text("path,reason\n/old/file.dcm,stale from last week\n")
    invoke("index", site, "-o", tmp_path / "m.csv", "--failures", failures, "--overwrite", code=0)
    assert failures.read_text().splitlines() == ["path,reason"]


def test_select_never_prints_a_clear_patient_id(tmp_path):
    manifest = tmp_path / "m.csv"
    invoke("index", TEST_FILES / "CT_small.dcm", "-o", manifest, code=0)
    ct_patient_id = "1CT1"
    for expression in (f'patient == "{ct_patient_id}"', f'patient in ["{ct_patient_id}", "X9"]'):
        result = invoke("select", manifest, expression, code=0)
        first = result.stdout.splitlines()[0]
        assert first.startswith("patient "), describe(result)
        assert first.endswith(" selects 1 of 1 rows (no row has a label yet)"), describe(result)
        assert ct_patient_id not in result.stdout + result.stderr
