"""The built-in idx loader: the IDX format, indexing MNIST-style folders, decoding, the CLI.

Test files are written byte by byte here (no download); the real Fashion-MNIST is used when the
Debian package ``dataset-fashion-mnist`` is installed (CI installs it and must not skip).
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from clirunner import invoke

from revise.data import manifest as manifest_mod
from revise.data import plugins
from revise.data._idx_format import read_idx, read_idx_header
from revise.data.idx_loader import IdxLoader
from revise.data.index import choose_loader, index
from revise.data.loaders import SiteLoader
from revise.data.tensors import load_tensors
from revise.errors import DataError
from revise.models.card import ModelCard

FASHION = Path("/usr/share/datasets/fashion-mnist")
KEY = b"idx-test-key"
CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}

# 3 training images of 2x3 with known values, and 2 test images.
TRAIN = np.arange(18, dtype=np.uint8).reshape(3, 2, 3) * 10  # 0, 10, ..., 170
TRAIN_LABELS = np.array([7, 0, 3], dtype=np.uint8)
TEST = np.array([[[255, 0, 1], [2, 3, 4]], [[9, 8, 7], [6, 5, 250]]], dtype=np.uint8)
TEST_LABELS = np.array([1, 9], dtype=np.uint8)


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of ``arr``: magic, big-endian sizes, big-endian data."""
    arr = np.asarray(arr)
    magic = bytes((0, 0, CODES[arr.dtype.str[1:]], arr.ndim))
    dims = struct.pack(f">{arr.ndim}I", *arr.shape)
    return magic + dims + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_site(root: Path, *, train: np.ndarray = TRAIN, train_labels=TRAIN_LABELS) -> Path:
    """train-* plain, t10k-* gzipped, plus a README that is not IDX."""
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte", train)
    write_idx(root / "train-labels-idx1-ubyte", train_labels)
    write_idx(root / "t10k-images-idx3-ubyte.gz", TEST)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", TEST_LABELS)
    (root / "README.txt").write_text("not an IDX file\n")
    return root


def idx_index(root: Path, **kwargs) -> pd.DataFrame:
    result = IdxLoader().index(root, site="mnist", key=KEY, **kwargs)
    assert not result.failures, result.failures
    return result.manifest


# --- the format ---------------------------------------------------------------------------------


def test_read_idx_literal_bytes(tmp_path):
    ubyte = tmp_path / "a-images-idx3-ubyte"
    ubyte.write_bytes(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03")
    with ubyte.open("ab") as f:
        f.write(bytes([0, 1, 2, 253, 254, 255]))
    arr = read_idx(ubyte)
    assert arr.dtype == np.uint8 and arr.shape == (1, 2, 3)
    assert arr.tolist() == [[[0, 1, 2], [253, 254, 255]]]

    short = tmp_path / "s.idx"
    short.write_bytes(b"\x00\x00\x0b\x01\x00\x00\x00\x03" + b"\x01\x02\xff\xfe\x7f\xff")
    arr = read_idx(short)
    assert arr.dtype == np.int16 and arr.dtype.isnative
    assert arr.tolist() == [0x0102, -2, 0x7FFF]


@pytest.mark.parametrize("dtype", sorted(CODES))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_types_plain_and_gz(tmp_path, dtype, suffix):
    values = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    if dtype == "u1":
        values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    if dtype in ("f4", "f8"):
        values = values / np.asarray(3, dtype=dtype)
    path = write_idx(tmp_path / f"x-images-idx3-ubyte{suffix}", values)
    arr = read_idx(path)
    assert arr.dtype == np.dtype(dtype) and arr.dtype.isnative
    assert arr.shape == (2, 3, 4)
    np.testing.assert_array_equal(arr, values)
    header = read_idx_header(path)
    assert header.shape == (2, 3, 4) and header.compressed == (suffix == ".gz")


def test_gz_and_plain_read_the_same(tmp_path):
    plain = write_idx(tmp_path / "a-images-idx3-ubyte", TRAIN)
    packed = write_idx(tmp_path / "a-images-idx3-ubyte.gz", TRAIN)
    np.testing.assert_array_equal(read_idx(plain), read_idx(packed))
    np.testing.assert_array_equal(read_idx(plain), TRAIN)


BROKEN = {
    "data cut short": (lambda b: b[:-1], "truncated"),
    "header cut short": (lambda b: b[:10], "truncated inside its header"),
    "magic only": (lambda b: b[:2], "truncated"),
    "bad magic": (lambda b: b"\x01\x00" + b[2:], "bad magic"),
    "gzip-like but not gzip": (lambda b: b"PK\x03\x04" + b[4:], "bad magic"),
    "unknown type": (lambda b: b[:2] + b"\x07" + b[3:], "unknown type code 0x07"),
    "trailing bytes": (lambda b: b + b"\x00\x00", r"2 byte\(s\) after the 18 data bytes"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("gz", [False, True])
def test_broken_files_raise_naming_the_file(tmp_path, case, gz):
    damage, expected = BROKEN[case]
    path = tmp_path / ("bad-images-idx3-ubyte" + (".gz" if gz else ""))
    data = damage(idx_bytes(TRAIN))
    path.write_bytes(gzip.compress(data) if gz else data)
    for read in (read_idx, read_idx_header):
        with pytest.raises(DataError, match=expected) as info:
            read(path)
        assert str(path) in str(info.value)


def test_truncated_and_damaged_gzip_streams(tmp_path):
    packed = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 255, (50, 8, 8), "u1")))
    cut = tmp_path / "cut-images-idx3-ubyte.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    for read in (read_idx, read_idx_header):
        with pytest.raises(DataError, match="truncated") as info:
            read(cut)
        assert str(cut) in str(info.value)
    flipped = bytearray(packed)
    flipped[-8] ^= 0xFF  # the CRC
    bad = tmp_path / "bad-images-idx3-ubyte.gz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="damaged gzip") as info:
        read_idx(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(DataError, match="not readable"):
        read_idx(tmp_path / "missing-images-idx3-ubyte")


# --- indexing -----------------------------------------------------------------------------------


def test_index_folder_rows(tmp_path):
    root = make_site(tmp_path / "mnist")
    result = IdxLoader().index(root, site="mnist", key=KEY)
    assert not result.failures
    assert [Path(s.path).name for s in result.skipped] == ["README.txt"]
    m = result.manifest
    assert list(m.columns) == list(manifest_mod.COLUMNS)
    assert len(m) == 5 and m["sample_key"].is_unique
    assert all(k.startswith("s-") and len(k) == 18 for k in m["sample_key"])
    by_file = {name: g for name, g in m.groupby(m["path"].map(lambda p: Path(p).name))}
    train, test = by_file["train-images-idx3-ubyte"], by_file["t10k-images-idx3-ubyte.gz"]
    assert train["frame"].tolist() == [0, 1, 2] and test["frame"].tolist() == [0, 1]
    assert train["label"].tolist() == [7, 0, 3] and test["label"].tolist() == [1, 9]
    assert set(train["split"]) == {"train"} and set(test["split"]) == {"heldout"}
    assert set(train["frames"]) == {3} and set(test["frames"]) == {2}
    assert set(m["rows"]) == {2} and set(m["cols"]) == {3} and set(m["samples_per_pixel"]) == {1}
    assert set(m["modality"]) == {"OT"} and set(m["loader"]) == {"idx"}
    assert set(m["site"]) == {"mnist"} and set(m["photometric"]) == {"MONOCHROME2"}
    assert set(m["patient"]) == {""} and set(m["sop_instance_uid"]) == {""}
    assert m["label"].dtype == "Int64" and m["frame"].dtype == "Int64"
    assert all(Path(p).is_absolute() for p in m["path"])


def test_keys_stable_across_copies_and_gzip_but_not_datasets(tmp_path):
    keys = idx_index(make_site(tmp_path / "a"))["sample_key"].tolist()
    moved = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(tmp_path / "a", moved)
    assert idx_index(moved)["sample_key"].tolist() == keys

    # gunzip the test files: same data, same keys
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        gz = moved / f"{name}.gz"
        (moved / name).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert sorted(idx_index(moved)["sample_key"]) == sorted(keys)

    # another dataset with the same names and shapes: new train keys; its t10k files are equal
    other = idx_index(make_site(tmp_path / "b", train=255 - TRAIN))
    first = idx_index(tmp_path / "a")
    for split, shared in (("train", False), ("heldout", True)):
        mine, theirs = (set(df.loc[df["split"] == split, "sample_key"]) for df in (first, other))
        assert (mine == theirs) if shared else not (mine & theirs)


def test_label_count_mismatch_fails_only_that_pair(tmp_path):
    root = make_site(tmp_path / "site", train_labels=TRAIN_LABELS[:2])
    result = IdxLoader().index(root, site="", key=KEY)
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert Path(failure.path).name == "train-images-idx3-ubyte"
    assert "2 labels for the 3 images" in failure.reason
    assert result.manifest["split"].tolist() == ["heldout", "heldout"]
    assert result.manifest["label"].tolist() == [1, 9]


def test_broken_images_file_is_a_failure(tmp_path):
    root = make_site(tmp_path / "site")
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    result = IdxLoader().index(root, site="", key=KEY)
    assert [(Path(f.path).name, "truncated" in f.reason) for f in result.failures] == [
        ("train-images-idx3-ubyte", True)
    ]
    assert len(result.manifest) == 2


def test_layout_variants(tmp_path):
    root = make_site(tmp_path / "site")
    write_idx(root / "train-images-idx3-ubyte.gz", TRAIN)  # a gzipped copy beside the plain one
    write_idx(root / "extra-labels-idx1-ubyte", TRAIN_LABELS)  # labels without images
    (root / "sub").mkdir()
    result = IdxLoader().index(root, site="", key=KEY)
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert (
        "another copy, train-images-idx3-ubyte, is indexed" in reasons["train-images-idx3-ubyte.gz"]
    )
    assert reasons["extra-labels-idx1-ubyte"] == "labels file without images file"
    assert "top level only" in reasons["sub"]
    assert len(result.manifest) == 5 and not result.failures

    # one images file: its labels come from beside it; without labels the rows are unlabelled
    one = idx_index(root / "t10k-images-idx3-ubyte.gz")
    assert one["label"].tolist() == [1, 9] and one["split"].tolist() == ["heldout"] * 2
    lone = tmp_path / "lone"
    lone.mkdir()
    write_idx(lone / "emnist-digits-test-images-idx3-ubyte", TEST)
    alone = idx_index(lone)
    assert alone["label"].isna().all() and set(alone["split"]) == {"heldout"}
    with pytest.raises(DataError, match="no IDX images file"):
        IdxLoader().index(tmp_path / "site" / "sub", site="", key=KEY)


def test_can_index_and_auto(tmp_path):
    loader = IdxLoader()
    root = make_site(tmp_path / "site")
    assert loader.can_index(root) and loader.can_index(root / "t10k-images-idx3-ubyte.gz")
    assert not loader.can_index(root / "train-labels-idx1-ubyte")
    assert not loader.can_index(root / "README.txt") and not loader.can_index(tmp_path / "no")
    images_only = tmp_path / "images-only"
    images_only.mkdir()
    write_idx(images_only / "train-images-idx3-ubyte", TRAIN)
    assert not loader.can_index(images_only)

    assert isinstance(loader, SiteLoader)
    assert choose_loader(root).name == "idx"
    dicom_dir = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    assert not loader.can_index(dicom_dir)
    assert choose_loader(dicom_dir).name == "dicom"
    infos = {i.name: i for i in plugins.plugin_infos()}
    assert infos["idx"].source == "builtin" and infos["idx"].loaded
    m = index(root, site="s", key=KEY).manifest
    assert set(m["loader"]) == {"idx"} and len(m) == 5


def test_cli_index_and_plugins(tmp_path):
    root = make_site(tmp_path / "site")
    out = tmp_path / "m.parquet"
    result = invoke("index", root, "-o", out, "--site", "north")
    assert result.exit_code == 0, result.output
    assert "indexed 5 images/frames from 2 files (5 labelled)" in result.stdout
    m = manifest_mod.load(out)
    assert set(m["loader"]) == {"idx"} and set(m["site"]) == {"north"}
    assert sorted(m["label"].tolist()) == [0, 1, 3, 7, 9]

    listed = invoke("plugins")
    assert listed.exit_code == 0, listed.output
    line = next(x for x in listed.stdout.splitlines() if x.split()[:1] == ["idx"])
    assert line.split()[1:] == ["loaded", "builtin"]
    assert "idx" in listed.stdout.splitlines()[-1]


# --- decoding -----------------------------------------------------------------------------------


def card(**kwargs) -> ModelCard:
    fields = {"architecture": "small_cnn", "num_classes": 10, "in_channels": 1}
    return ModelCard(**{**fields, "input_size": (32, 32), **kwargs})


def test_read_pixels_and_load_tensors(tmp_path):
    m = idx_index(make_site(tmp_path / "site"))
    loader = IdxLoader()
    rows = m.to_dict("records")
    for row in rows:
        pixels = loader.read_pixels(row)
        source = TRAIN if row["split"] == "train" else TEST
        assert pixels.dtype == np.float32 and pixels.shape == (1, 2, 3)
        np.testing.assert_array_equal(pixels[0], source[row["frame"]].astype(np.float32))
    assert len(loader._files) == 2  # each images file decoded once, then reused

    # input size equal to the file's and a fixed 0..255 window: exactly pixels / 255
    exact = load_tensors(m, card(input_size=(2, 3), intensity="fixed", intensity_range=(0, 255)))
    assert exact.keys == m["sample_key"].tolist() and not exact.failures
    for i, row in enumerate(rows):
        source = TRAIN if row["split"] == "train" else TEST
        want = (source[row["frame"]].astype(np.float64) / 255).astype(np.float32)
        np.testing.assert_array_equal(exact.x[i, 0].numpy(), want)
    voi = load_tensors(m, card(input_size=(2, 3), intensity="voi"))  # nominal 0..255 -> [0, 1]
    np.testing.assert_allclose(voi.x.numpy(), exact.x.numpy(), atol=1e-7)

    # resized to 32x32: a constant image stays constant; minmax spans [0, 1]
    flat = tmp_path / "flat"
    flat.mkdir()
    write_idx(flat / "train-images-idx3-ubyte", np.full((2, 4, 4), 51, np.uint8))
    write_idx(flat / "train-labels-idx1-ubyte", np.array([2, 5], np.uint8))
    fixed = card(intensity="fixed", intensity_range=(0, 255))
    x = load_tensors(idx_index(flat), fixed).x
    assert x.shape == (2, 1, 32, 32)
    np.testing.assert_allclose(x.numpy(), 0.2, atol=1e-6)
    spread = load_tensors(m.iloc[:2], card()).x  # minmax, upsampled 2x3 -> 32x32
    assert spread.shape == (2, 1, 32, 32)
    assert 0.0 <= float(spread.min()) < 0.1 and 0.9 < float(spread.max()) <= 1.0


def test_read_pixels_errors(tmp_path):
    root = make_site(tmp_path / "site")
    row = idx_index(root).iloc[-1].to_dict()  # a train row
    loader = IdxLoader()
    with pytest.raises(DataError, match="image 3 asked for"):
        loader.read_pixels({**row, "frame": 3})
    with pytest.raises(DataError, match="changed since indexing"):
        loader.read_pixels({**row, "rows": 5})
    path = Path(row["path"])
    write_idx(path, np.zeros((3, 4, 4), np.uint8))
    os.utime(path, ns=(1, 1))  # a new signature even on coarse-mtime file systems
    with pytest.raises(DataError, match="changed since indexing"):
        loader.read_pixels(row)
    path.unlink()
    with pytest.raises(DataError, match="not readable"):
        loader.read_pixels(row)


# --- the real Fashion-MNIST ---------------------------------------------------------------------


def test_real_fashion_mnist():
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{FASHION} is missing: CI installs the Debian package dataset-fashion-mnist"
            )
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    start = time.perf_counter()
    result = index(FASHION, site="fashion", key=KEY)
    seconds = time.perf_counter() - start
    print(f"indexed Fashion-MNIST (70000 rows) in {seconds:.3f} s")
    m = result.manifest
    assert not result.failures and not result.skipped
    assert set(m["loader"]) == {"idx"} and m["sample_key"].is_unique
    assert m["split"].value_counts().to_dict() == {"train": 60000, "heldout": 10000}
    for split, n in (("train", 6000), ("heldout", 1000)):
        counts = m.loc[m["split"] == split, "label"].value_counts().to_dict()
        assert counts == dict.fromkeys(range(10), n), (split, counts)
    assert set(m["rows"]) == {28} and set(m["cols"]) == {28}
    row = m[(m["split"] == "heldout") & (m["frame"] == 0)].iloc[0].to_dict()
    pixels = IdxLoader().read_pixels(row)
    assert pixels.shape == (1, 28, 28) and 0 <= pixels.min() < pixels.max() <= 255
    assert row["label"] == 9  # the first Fashion-MNIST test image is an ankle boot
