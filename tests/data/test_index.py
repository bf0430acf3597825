"""revise.data.index: choosing the loader, and labels from a CSV or a column rule."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom
import pytest

from revise.data import index as index_mod
from revise.data.dicom_loader import DicomLoader, index_dicom
from revise.data.index import apply_label_rule, index
from revise.data.loaders import IndexResult
from revise.data.manifest import empty_manifest, join_labels, normalize
from revise.errors import DataError, UnknownNameError, UsageError
from revise.phi import pseudonym

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DIR_TREE = TEST_FILES / "dicomdirtests"


class FakeLoader:
    name = "fake"

    def __init__(self, accepts: bool) -> None:
        self.accepts = accepts
        self.calls: list[Path] = []

    def can_index(self, root: Path) -> bool:
        return self.accepts

    def index(self, root: Path, *, site: str, key: bytes) -> IndexResult:
        self.calls.append(root)
        return IndexResult(empty_manifest())

    def read_pixels(self, row, *, voi=False):
        raise NotImplementedError


def test_auto_picks_dicom_for_a_folder():
    result = index(DIR_TREE, site="tree")
    expected = index_dicom(DIR_TREE, site="tree")  # same site key (REVISE_PHI_KEY)
    pd.testing.assert_frame_equal(result.manifest, expected.manifest)
    assert set(result.manifest["loader"]) == {"dicom"} and set(result.manifest["site"]) == {"tree"}
    assert len(result.skipped) == len(expected.skipped) and not result.failures
    assert result.manifest["patient"].iloc[0] == pseudonym(
        str(pydicom.dcmread(result.manifest["path"].iloc[0]).PatientID)
    )


def test_named_loader_and_key(tmp_path):
    result = index(TEST_FILES / "CT_small.dcm", loader="dicom", key=b"other")
    assert result.manifest["patient"].tolist() == [pseudonym("1CT1", key=b"other")]
    with pytest.raises(UnknownNameError, match="nope"):
        index(DIR_TREE, loader="nope")
    with pytest.raises(DataError, match="does not exist"):
        index(tmp_path / "missing")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="no site loader recognises"):
        index(text)


def test_auto_asks_plugins_before_dicom(monkeypatch):
    from revise.data import plugins

    fake = FakeLoader(accepts=True)
    monkeypatch.setattr(plugins, "site_loaders", lambda: {"dicom": DicomLoader(), "fake": fake})
    assert index_mod.choose_loader(DIR_TREE) is fake
    index(DIR_TREE)
    assert fake.calls == [DIR_TREE]
    fake.accepts = False
    assert isinstance(index_mod.choose_loader(DIR_TREE), DicomLoader)


def test_labels_from_csv(tmp_path):
    ct = pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True)
    mr = pydicom.dcmread(TEST_FILES / "MR_small.dcm", stop_before_pixels=True)
    csv = tmp_path / "labels.csv"
    csv.write_text(f"sop_instance_uid,label\n{ct.SOPInstanceUID},1\n{mr.SOPInstanceUID},0\n")
    for name in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm"):
        (tmp_path / "site").mkdir(exist_ok=True)
        (tmp_path / "site" / name).write_bytes((TEST_FILES / name).read_bytes())
    df = index(tmp_path / "site", labels=csv).manifest
    labels = dict(zip(df["path"].map(lambda p: Path(p).name), df["label"], strict=False))
    assert labels["CT_small.dcm"] == 1 and labels["MR_small.dcm"] == 0
    assert df.loc[df["path"].str.endswith("rtdose.dcm"), "label"].isna().all()
    assert str(df["label"].dtype) == "Int64"


def test_relative_paths_in_a_label_csv_are_relative_to_the_indexed_folder(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "ct").mkdir(parents=True)
    (site / "ct" / "CT_small.dcm").write_bytes((TEST_FILES / "CT_small.dcm").read_bytes())
    (site / "MR_small.dcm").write_bytes((TEST_FILES / "MR_small.dcm").read_bytes())
    csv = tmp_path / "elsewhere" / "labels.csv"
    csv.parent.mkdir()
    csv.write_text("path,label\nct/CT_small.dcm,1\n" + f"{site / 'MR_small.dcm'},0\n")
    monkeypatch.chdir(csv.parent)  # neither the CSV's folder nor the site
    df = index(site, labels=csv).manifest
    labels = dict(zip(df["path"].map(lambda p: Path(p).name), df["label"], strict=True))
    assert labels == {"CT_small.dcm": 1, "MR_small.dcm": 0}
    csv.write_text("path,label\nsite/ct/CT_small.dcm,1\n")  # relative to the wrong folder
    with pytest.raises(DataError) as err:
        index(site, labels=csv)
    message = str(err.value)
    assert f"the label file has {site / 'site' / 'ct' / 'CT_small.dcm'}" in message
    assert "relative to the indexed folder" in message


def test_a_label_csv_without_a_label_column_shows_its_header(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("SOPInstanceUID,class\n1.2.3,0\n")
    with pytest.raises(DataError, match=r"no 'label' column \(its header: SOPInstanceUID,class\)"):
        join_labels(_two_rows(), csv)


def _two_rows() -> pd.DataFrame:
    return normalize(pd.DataFrame({"sample_key": ["s-1", "s-2"], "path": ["a", "b"]}))


def test_label_csv_values_are_checked(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("sample_key,label,split\ns-1,1.0,TRAIN\n\ns-2, 0 , heldout\n")
    df = join_labels(_two_rows(), csv)
    assert df["label"].tolist() == [1, 0] and str(df["label"].dtype) == "Int64"
    assert df["split"].tolist() == ["train", "heldout"]
    csv.write_text("sample_key,label\ns-1,\ns-2,1\n")  # an empty label is "unlabelled"
    assert join_labels(_two_rows(), csv)["label"].isna().tolist() == [True, False]


@pytest.mark.parametrize(
    ("rows", "where", "fix"),
    [
        ("s-1,pneumonia,train\ns-2,1,train", "line 2: label 'pneumonia' is not", "integers"),
        ("s-1,0,train\n\ns-2,1.5,train", "line 4: label '1.5' is not a class index", "integers"),
        (
            "s-1,0,train\ns-2,1,held-out",
            "line 3: split 'held-out' is not one of train, heldout",
            "heldout",
        ),
        (
            "s-1,0,test\ns-2,1,holdout",
            "line 2: split 'test' is not one of train, heldout (1 more such rows)",
            "heldout",
        ),
    ],
)
def test_bad_label_or_split_names_the_file_line_and_value(tmp_path, rows, where, fix):
    csv = tmp_path / "labels.csv"
    csv.write_text("sample_key,label,split\n" + rows + "\n")
    with pytest.raises(DataError) as err:
        join_labels(_two_rows(), csv)
    assert f"label file {csv} {where}" in str(err.value) and fix in str(err.value)


def test_labels_from_a_column_rule():
    rule = {"column": "body_part", "map": {"HEAD": 0, "ABDOMEN": 1}}
    df = index(TEST_FILES, labels=rule).manifest
    assert (df.loc[df["body_part"] == "HEAD", "label"] == 0).all()
    assert (df.loc[df["body_part"] == "ABDOMEN", "label"] == 1).all()
    assert df["label"].notna().sum() == 6
    assert df.loc[~df["body_part"].isin(["HEAD", "ABDOMEN"]), "label"].isna().all()
    with pytest.raises(UsageError, match="malformed"):
        index(DIR_TREE, labels={"column": "body_part"})


def test_apply_label_rule():
    df = normalize(
        pd.DataFrame(
            {
                "sample_key": ["s-1", "s-2", "s-3", "s-4"],
                "path": ["a", "b", "c", "d"],
                "body_part": ["CHEST", " HEAD", "KNEE", None],
                "label": [pd.NA, pd.NA, 5, pd.NA],
            }
        )
    )
    out = apply_label_rule(df, "bodypart", {"CHEST": 0, "HEAD": "1"})  # alias, str class
    assert out["label"].tolist()[:3] == [0, 1, 5]  # KNEE keeps its label
    assert pd.isna(out["label"].iloc[3])
    assert str(out["label"].dtype) == "Int64"
    assert df["label"].isna().sum() == 3  # input not modified
    with pytest.raises(DataError, match="no row has any of"):
        apply_label_rule(df, "body_part", {"chest": 0})  # exact, case-sensitive
    with pytest.raises(UsageError, match="unknown column"):
        apply_label_rule(df, "organ", {"CHEST": 0})
    with pytest.raises(UsageError, match="not an integer"):
        apply_label_rule(df, "body_part", {"CHEST": "zero"})
    with pytest.raises(UsageError, match="not an integer"):
        apply_label_rule(df, "body_part", {"CHEST": 0.5})


def test_an_instance_stored_twice_gets_two_distinct_keys(tmp_path):
    import shutil

    from revise.data.dicom_loader import sample_key

    source = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    shutil.copy(source, tmp_path / "a.dcm")
    shutil.copy(source, tmp_path / "b.dcm")
    manifest = index(tmp_path).manifest
    assert len(manifest) == 2
    assert manifest["sample_key"].is_unique
    first = manifest.sort_values("path").iloc[0]
    assert first["sample_key"] == sample_key(first["sop_instance_uid"], 0)
