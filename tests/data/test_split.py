"""revise.data.split: the four sets, and errors that never repeat a clear patient ID."""

from __future__ import annotations

import pandas as pd
import pytest

from revise.data.manifest import normalize
from revise.data.split import partition
from revise.errors import SelectionError
from revise.phi import pseudonym


@pytest.fixture
def manifest() -> pd.DataFrame:
    patients = [pseudonym(p) for p in ("MRN-4711", "MRN-4711", "MRN-9", "MRN-10")]
    return normalize(
        pd.DataFrame(
            {
                "sample_key": ["s-1", "s-2", "s-3", "s-4"],
                "path": ["a", "b", "c", "d"],
                "patient": patients,
                "label": [0, 1, 0, 1],
                "split": ["heldout", "heldout", "", "train"],
            }
        )
    )


def test_sets_by_selection_and_split(manifest):
    sets = partition(manifest, 'patient == "MRN-9"')
    assert {name: df["sample_key"].tolist() for name, df in sets.items()} == {
        "forget": ["s-3"],
        "retain": ["s-4"],
        "heldout_forget": [],
        "heldout_retain": ["s-1", "s-2"],
    }


@pytest.mark.parametrize(
    ("selection", "problem"),
    [
        ('patient == "MRN-4711"', "matches no labelled training row"),  # only held-out rows
        ('patient in ["MRN-9", "MRN-10"]', "leaves nothing to retain"),
    ],
)
def test_errors_describe_the_selection_without_patient_ids(manifest, selection, problem):
    with pytest.raises(SelectionError) as info:
        partition(manifest, selection)
    message = str(info.value)
    assert problem in message and "patient" in message
    assert "MRN" not in message


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_manifest_this_user_may_not_read_says_so_not_re_index(tmp_path, monkeypatch, suffix):
    from revise.data import manifest as manifest_mod
    from revise.errors import DataError

    path = tmp_path / f"m{suffix}"
    path.write_text("sample_key,path\n")

    def denied(*args, **kwargs):  # tests run as root, which may read anything: as the OS says
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pd, "read_csv", denied)
    monkeypatch.setattr(pd, "read_parquet", denied)
    with pytest.raises(DataError) as caught:
        manifest_mod.load(path)
    message = str(caught.value)
    assert f"manifest {path} is not readable by this user (permission denied)" in message
    assert "chmod a+r" in message and "revise index" not in message
