"""Manifest rows -> model tensors: the card's preprocessing, failures, and the disk cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless

from revise.data import dicom_loader
from revise.data.dicom_loader import DicomLoader, index_dicom
from revise.data.sets import DecodedSet
from revise.data.tensors import load_tensors, to_model_input
from revise.errors import DataError
from revise.models.card import ModelCard

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
KEY = b"tensor-test-key"


def card(**kwargs) -> ModelCard:
    fields = {"architecture": "test", "num_classes": 2, "in_channels": 1, "input_size": (32, 32)}
    return ModelCard(**{**fields, **kwargs})


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    return index_dicom(TEST_FILES, key=KEY).manifest


def rows_of(manifest: pd.DataFrame, *names: str) -> pd.DataFrame:
    paths = [str(TEST_FILES / n) for n in names]
    return manifest[manifest["path"].isin(paths)].reset_index(drop=True)


# --- to_model_input ----------------------------------------------------------------------------


def test_minmax_and_pixel_range():
    pixels = np.array([[[0.0, 10.0], [20.0, 40.0]]], dtype=np.float32)
    out = to_model_input(pixels, card(input_size=(2, 2)))
    np.testing.assert_allclose(out, [[[0.0, 0.25], [0.5, 1.0]]])
    assert out.dtype == np.float32
    out = to_model_input(pixels, card(input_size=(2, 2), pixel_range=(-1, 1)))
    np.testing.assert_allclose(out, [[[-1.0, -0.5], [0.0, 1.0]]])
    out = to_model_input(pixels, card(input_size=(2, 2), pixel_range=(0, 255)))
    np.testing.assert_allclose(out, [[[0.0, 63.75], [127.5, 255.0]]])
    flat = to_model_input(np.full((1, 2, 2), 7.0), card(input_size=(2, 2), pixel_range=(-1, 1)))
    np.testing.assert_array_equal(flat, np.full((1, 2, 2), -1.0))  # constant image -> zeros


def test_fixed_and_voi_intensity():
    pixels = np.array([[[-200.0, -100.0, 0.0, 100.0, 300.0]]])
    fixed = card(input_size=(1, 5), intensity="fixed", intensity_range=(-100, 100))
    np.testing.assert_allclose(to_model_input(pixels, fixed), [[[0, 0, 0.5, 1, 1]]])
    voi = card(input_size=(1, 3), intensity="voi")
    np.testing.assert_allclose(to_model_input(np.array([[[-0.5, 0.3, 1.5]]]), voi), [[[0, 0.3, 1]]])


def test_channel_conversion():
    rgb = np.array([[[0.0, 1.0]], [[0.0, 1.0]], [[1.0, 0.0]]])  # (3, 1, 2): blue, then yellow
    gray = to_model_input(rgb, card(input_size=(1, 2), intensity="voi"))
    np.testing.assert_allclose(gray, [[[0.114, 0.886]]], atol=1e-6)
    one = np.array([[[0.0, 5.0]]])
    three = to_model_input(one, card(in_channels=3, input_size=(1, 2), mean=(0.0,), std=(1.0,)))
    np.testing.assert_allclose(three, np.repeat([[[0.0, 1.0]]], 3, axis=0))
    with pytest.raises(DataError, match=r"2 channel\(s\).*expects 3"):
        to_model_input(np.zeros((2, 4, 4)), card(in_channels=3))
    with pytest.raises(DataError, match=r"3 channel\(s\).*expects 4"):
        to_model_input(np.zeros((3, 4, 4)), card(in_channels=4))


def test_resize_is_antialiased_bilinear():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 1, (1, 64, 48)).astype(np.float32)
    out = to_model_input(pixels, card(input_size=(16, 12), intensity="voi"))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(pixels)[None],
        size=(16, 12),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.shape == (1, 16, 12)
    # Averaging 4x4 blocks of a checkerboard gives grey, not aliasing.
    board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[None]
    np.testing.assert_allclose(to_model_input(board, card(input_size=(16, 16))), 0.5, atol=0.02)


# --- load_tensors ------------------------------------------------------------------------------


def expected_decode_failures() -> set[str]:
    """Rows that cannot decode: damaged pixel data, or a codec this environment lacks."""
    broken = {"JPEG2000-embedded-sequence-delimiter.dcm"}  # J2K stream with 4 bytes overwritten
    needs = {
        # 12-bit JPEG: Pillow refuses it; pylibjpeg-libjpeg (GPL) or gdcm would decode it.
        JPEGExtended12Bit: ({"JPEG-lossy.dcm", "JPGExtended.dcm"}, ("gdcm", "pylibjpeg")),
        JPEGLosslessSV1: ({"SC_rgb_jpeg_gdcm.dcm"}, ("gdcm", "pylibjpeg")),
        JPEGLSLossless: (
            {
                "JPEGLSNearLossless_08.dcm",
                "JPEGLSNearLossless_16.dcm",
                "MR_small_jpeg_ls_lossless.dcm",
                "SC_rgb_jls_lossy_line.dcm",
                "SC_rgb_jls_lossy_sample.dcm",
            },
            ("gdcm", "pylibjpeg", "pyjpegls"),
        ),
    }
    assert get_decoder(JPEG2000).is_available  # pylibjpeg-openjpeg is a dependency
    for uid, (names, plugins) in needs.items():
        if not set(get_decoder(uid).available_plugins) & set(plugins):
            broken |= names
    return broken


def test_every_indexed_row_decodes_except_the_damaged_and_codec_less(manifest):
    result = load_tensors(manifest, card())
    assert isinstance(result, DecodedSet)
    failed = {Path(f.path).name for f in result.failures}
    assert failed == expected_decode_failures()
    assert len(result) + len(result.failures) == len(manifest)
    assert result.x.shape == (len(result), 1, 32, 32) and result.x.dtype == torch.float32
    assert torch.isfinite(result.x).all() and result.x.min() >= 0 and result.x.max() <= 1
    assert result.keys == list(result.rows["sample_key"])
    ok = manifest[~manifest["path"].map(lambda p: Path(p).name in failed)]
    assert list(result.rows["path"]) == list(ok["path"])  # manifest order kept
    assert list(result.rows["frame"]) == list(ok["frame"])
    assert all(f.reason.startswith("s-") and "decode" in f.reason for f in result.failures)
    ct = result.keys.index(rows_of(manifest, "CT_small.dcm")["sample_key"][0])
    pixels = DicomLoader().read_pixels(rows_of(manifest, "CT_small.dcm").iloc[0].to_dict())
    np.testing.assert_allclose(result.x[ct].numpy(), to_model_input(pixels, card()), atol=1e-6)


def test_voi_rgb_card(manifest):
    rows = rows_of(
        manifest, "CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm", "examples_ybr_color.dcm"
    )
    result = load_tensors(
        rows, card(in_channels=3, input_size=(24, 20), intensity="voi", mean=(0.5,), std=(0.5,))
    )
    assert result.x.shape == (len(rows), 3, 24, 20)
    assert result.x.min() >= 0 and result.x.max() <= 1 and not result.failures
    gray = result.x[result.keys.index(rows["sample_key"][0])]
    torch.testing.assert_close(gray[0], gray[2])  # 1 -> 3 channels by repetition


def test_a_truncated_compressed_file_fails_at_decode(tmp_path, manifest):
    data = (TEST_FILES / "MR_small_RLE.dcm").read_bytes()
    (tmp_path / "cut_rle.dcm").write_bytes(data[: len(data) - 3000])
    shutil.copy(TEST_FILES / "CT_small.dcm", tmp_path / "ct.dcm")
    indexed = index_dicom(tmp_path, key=KEY)
    assert not indexed.failures  # encapsulated pixel data is checked only when decoded
    result = load_tensors(indexed.manifest, card())
    assert [Path(f.path).name for f in result.failures] == ["cut_rle.dcm"]
    assert "cut_rle.dcm" in result.failures[0].reason
    assert [Path(p).name for p in result.rows["path"]] == ["ct.dcm"]


def test_a_damaged_jpeg_is_named_once_without_a_decoder_traceback(tmp_path, caplog):
    """pydicom logs each failing decoder's traceback; revise reports the file and reason once,
    and the sets say which one lost the image."""
    from pydicom.encaps import encapsulate

    from revise.data.tensors import decode_sets

    ds = pydicom.dcmread(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(500)])  # a JPEG start, then nothing
    ds.save_as(tmp_path / "broken.dcm")
    shutil.copy(TEST_FILES / "CT_small.dcm", tmp_path / "ct.dcm")
    manifest = index_dicom(tmp_path, key=KEY).manifest
    manifest["label"] = 0
    broken = manifest["path"].str.endswith("broken.dcm")
    with caplog.at_level("WARNING"):
        data = decode_sets(
            {"forget": manifest[broken], "retain": manifest[~broken]}, card(), "label == 0"
        )
    assert "Traceback" not in caplog.text and all(r.exc_info is None for r in caplog.records)
    assert f"{tmp_path / 'broken.dcm'}: " in caplog.text  # the file, with its reason
    assert "left out, by set: forget 1" in caplog.text
    record = data.left_out_record()
    assert record == {"forget": {"n": 1, "sample_keys": list(manifest[broken]["sample_key"])}}
    assert data.counts() == {"forget": 0, "retain": 1}


def test_all_rows_failing_is_an_error(manifest):
    with pytest.raises(DataError, match="none of the 1 rows"):
        load_tensors(rows_of(manifest, "JPEG2000-embedded-sequence-delimiter.dcm"), card())
    with pytest.raises(DataError, match="no rows"):
        load_tensors(manifest.iloc[:0], card())


def test_each_file_is_read_once(manifest, monkeypatch):
    calls = []
    real = pydicom.dcmread

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(dicom_loader.pydicom, "dcmread", counting)
    rows = rows_of(manifest, "rtdose.dcm", "examples_ybr_color.dcm")
    shuffled = rows.sample(frac=1.0, random_state=0).reset_index(drop=True)  # frames interleaved
    result = load_tensors(shuffled, card(), progress=True)
    assert len(result) == 45 and len(calls) == 2
    assert result.keys == list(shuffled["sample_key"])


def test_disk_cache(tmp_path, manifest, monkeypatch):
    shutil.copy(TEST_FILES / "CT_small.dcm", tmp_path / "ct.dcm")
    shutil.copy(TEST_FILES / "rtdose.dcm", tmp_path / "dose.dcm")
    rows = index_dicom(tmp_path, key=KEY).manifest
    cache = tmp_path / "cache"
    first = load_tensors(rows, card(), cache_dir=cache)
    assert len(list(cache.rglob("*.npy"))) == len(rows) == 16
    assert not list(cache.rglob("*.part"))

    calls = []
    real = DicomLoader.read_pixels

    def forbidden(self, row, *, voi=False):
        raise AssertionError("the cache should have answered")

    def counting(self, row, *, voi=False):
        calls.append(row["sample_key"])
        return real(self, row, voi=voi)

    def no_open(*args, **kwargs):
        raise AssertionError("a DICOM file was opened")

    monkeypatch.setattr(DicomLoader, "read_pixels", forbidden)
    monkeypatch.setattr(dicom_loader.pydicom, "dcmread", no_open)
    second = load_tensors(rows, card(), cache_dir=cache)
    torch.testing.assert_close(second.x, first.x, rtol=0, atol=0)
    assert second.keys == first.keys and not second.failures
    monkeypatch.undo()

    # Another input size is another cache entry: everything is decoded again.
    monkeypatch.setattr(DicomLoader, "read_pixels", counting)
    bigger = load_tensors(rows, card(input_size=(40, 40)), cache_dir=cache)
    assert bigger.x.shape == (16, 1, 40, 40) and len(calls) == 16
    # So is every other preprocessing choice: a VOI window, another pixel range, channels.
    for other in (
        card(intensity="voi"),
        card(pixel_range=(-1.0, 1.0)),
        card(in_channels=3, mean=(0.5,), std=(0.5,)),
    ):
        calls.clear()
        decoded = load_tensors(rows, other, cache_dir=cache)
        assert len(calls) == 16, other  # not served a cached entry of another preprocessing
        if other.pixel_range != (0.0, 1.0):
            torch.testing.assert_close(decoded.x, first.x * 2 - 1)
    # A file that changed (new mtime) is decoded again; the others come from the cache.
    calls.clear()
    stat = os.stat(tmp_path / "ct.dcm")
    os.utime(tmp_path / "ct.dcm", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_tensors(rows, card(), cache_dir=cache)
    assert len(calls) == 1
    # A damaged cache entry is ignored and rewritten.
    calls.clear()
    for entry in cache.rglob("*.npy"):
        entry.write_bytes(b"garbage")
    again = load_tensors(rows, card(), cache_dir=cache)
    torch.testing.assert_close(again.x, first.x, rtol=0, atol=0)
    assert len(calls) == 16
