"""The built-in DICOM loader on pydicom's own test files (real, partly broken, DICOMDIR tree)."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_color_lut

from revise.data import dicom_loader
from revise.data.dicom_loader import DicomLoader, index_dicom, sample_key
from revise.data.manifest import COLUMNS
from revise.data.select import select
from revise.errors import DataError
from revise.phi import pseudonym

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
KEY = b"dicom-loader-test-key"

# The deliberately broken files of the folder and what their failure reason must say.
BROKEN = {
    "ExplVR_BigEndNoMeta.dcm": "not a DICOM file",  # no preamble/file meta: needs force=True
    "ExplVR_LitEndNoMeta.dcm": "not a DICOM file",
    "no_meta.dcm": "not a DICOM file",
    "rtstruct.dcm": "not a DICOM file",
    "MR_truncated.dcm": "truncated pixel data",
    "rtplan_truncated.dcm": "truncated header",
    "badVR.dcm": "invalid NumberOfFrames '1A'",
    "meta_missing_tsyntax.dcm": "missing required tag(s): SOPInstanceUID, Rows, Columns",
    "nested_priv_SQ.dcm": "missing required tag(s): SOPInstanceUID, Rows, Columns",
}
DICOMDIRS = [
    "dicomdirtests/DICOMDIR",
    "dicomdirtests/DICOMDIR-bigEnd",
    "dicomdirtests/DICOMDIR-empty.dcm",
    "dicomdirtests/DICOMDIR-implicit",
    "dicomdirtests/DICOMDIR-nooffset",
    "dicomdirtests/DICOMDIR-nopatient",
    "dicomdirtests/DICOMDIR-reordered",
    "dicomdirtests/TINY_ALPHA/DICOMDIR",
]
NOT_DICOM = [
    "README.txt",
    "crayons.icc",
    "dicomdirtests/README.txt",
    "dicomdirtests/TINY_ALPHA/README",
    "rtplan.dump",
    "rtstruct.dump",
    "test1.json",
    "test_PN.json",
    "zipMR.gz",
]
MONOCHROME1 = [
    "dicomdirtests/77654033/CR1/6154",
    "dicomdirtests/77654033/CR2/6247",
    "dicomdirtests/77654033/CR3/6278",
]


def rel(path: str) -> str:
    return Path(path).relative_to(TEST_FILES).as_posix()


def read(name: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(TEST_FILES / name)


@pytest.fixture(scope="module")
def indexed():
    return index_dicom(TEST_FILES, site="pydicom", key=KEY)


@pytest.fixture(scope="module")
def manifest(indexed) -> pd.DataFrame:
    return indexed.manifest


def row_of(manifest: pd.DataFrame, name: str, frame: int = 0) -> dict:
    hit = manifest[(manifest["path"] == str(TEST_FILES / name)) & (manifest["frame"] == frame)]
    assert len(hit) == 1, name
    return hit.iloc[0].to_dict()


# --- indexing ----------------------------------------------------------------------------------


def test_every_file_is_accounted_for_exactly_once(indexed):
    files = {p.relative_to(TEST_FILES).as_posix() for p in TEST_FILES.rglob("*") if p.is_file()}
    with_rows = {rel(p) for p in indexed.manifest["path"].unique()}
    skipped = [rel(s.path) for s in indexed.skipped]
    failed = [rel(f.path) for f in indexed.failures]
    assert len(skipped) == len(set(skipped)) and len(failed) == len(set(failed))
    assert not (with_rows & set(skipped)) and not (with_rows & set(failed))
    assert not (set(skipped) & set(failed))
    assert with_rows | set(skipped) | set(failed) == files
    assert len(files) > 150 and len(with_rows) > 80


def test_broken_files_are_failures_with_reasons(indexed):
    reasons = {rel(f.path): f.reason for f in indexed.failures}
    assert set(reasons) == set(BROKEN)
    for name, expected in BROKEN.items():
        assert expected in reasons[name], (name, reasons[name])
    assert "8130 of 8192 bytes" in reasons["MR_truncated.dcm"]


def test_files_without_images_are_skipped(indexed):
    reasons = {rel(s.path): s.reason for s in indexed.skipped}
    for name in DICOMDIRS:
        assert reasons[name].startswith("DICOMDIR"), name
    for name in NOT_DICOM:
        assert reasons[name].startswith("not a DICOM file"), name
    assert reasons["test-SR.dcm"] == "no pixel data (Comprehensive SR Storage)"
    assert reasons["rtplan.dcm"] == "no pixel data (RT Plan Storage)"
    assert reasons["waveform_ecg.dcm"].startswith("no pixel data")
    tiny = [n for n in reasons if n.startswith("dicomdirtests/TINY_ALPHA/PT000000/")]
    assert len(tiny) > 20  # the stub instances of the tiny file-set carry no pixel data
    assert all(reasons[n] == "no pixel data (CT Image Storage)" for n in tiny)


def test_manifest_columns_and_values(manifest):
    assert list(manifest.columns) == list(COLUMNS)
    paths = list(zip(manifest["path"], manifest["frame"], strict=True))
    assert paths == sorted(paths)
    ct = row_of(manifest, "CT_small.dcm")
    ds = read("CT_small.dcm")
    assert ct["sample_key"] == sample_key(ds.SOPInstanceUID, 0)
    digest = hashlib.sha256(f"{ds.SOPInstanceUID}/0".encode()).hexdigest()[:16]
    assert ct["sample_key"] == f"s-{digest}"
    assert Path(ct["path"]).is_absolute()
    assert ct["patient"] == pseudonym("1CT1", key=KEY)
    assert ct["sop_instance_uid"] == ds.SOPInstanceUID
    assert ct["series_uid"] == ds.SeriesInstanceUID
    assert ct["study_uid"] == ds.StudyInstanceUID
    assert (ct["modality"], ct["manufacturer"], ct["device"]) == (
        "CT",
        "GE MEDICAL SYSTEMS",
        "RHAPSODE",
    )
    assert ct["study_date"] == "2004-01-19"
    assert (ct["rows"], ct["cols"], ct["frames"], ct["samples_per_pixel"]) == (128, 128, 1, 1)
    assert ct["photometric"] == "MONOCHROME2"
    assert ct["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert (ct["site"], ct["loader"], ct["split"]) == ("pydicom", "dicom", "")
    assert pd.isna(ct["label"])
    head = manifest[manifest["body_part"] == "HEAD"]
    assert len(head) == 5


def test_multi_frame_files_give_one_row_per_frame(manifest):
    for name, frames in [
        ("rtdose.dcm", 15),
        ("examples_ybr_color.dcm", 30),
        ("SC_rgb_rle_2frame.dcm", 2),
    ]:
        rows = manifest[manifest["path"] == str(TEST_FILES / name)]
        assert list(rows["frame"]) == list(range(frames))
        assert set(rows["frames"]) == {frames}
        assert rows["sample_key"].nunique() == frames


def test_patient_is_empty_without_patient_id(manifest):
    # Anonymised images must not all share the pseudonym of "" (one made-up patient).
    assert "PatientID" not in read("GDCMJ2K_TextGBR.dcm")
    assert str(read("SC_rgb_jpeg.dcm").PatientID).strip() == ""
    assert row_of(manifest, "GDCMJ2K_TextGBR.dcm")["patient"] == ""
    assert row_of(manifest, "SC_rgb_jpeg.dcm")["patient"] == ""
    assert pseudonym("", key=KEY) not in set(manifest["patient"])
    with_id = manifest["patient"] != ""
    assert manifest.loc[with_id, "patient"].str.fullmatch(r"p-[0-9a-f]{16}").all()
    assert 0 < (~with_id).sum() < len(manifest)
    empty = set(select(manifest, "patient is empty")["path"])
    assert str(TEST_FILES / "GDCMJ2K_TextGBR.dcm") in empty


def test_no_patient_name_id_or_birth_date_in_the_manifest(manifest):
    secrets: set[str] = set()
    for path in TEST_FILES.rglob("*"):
        if not path.is_file():
            continue
        try:
            ds = read(str(path.relative_to(TEST_FILES)))
        except Exception:
            continue
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            value = str(ds.get(keyword, "") or "").strip()
            if value:
                secrets.add(value)
                secrets.update(part for part in value.split("^") if len(part) >= 4)
    assert {"1CT1", "Doe^Archibald", "77654033", "Lestrade^G", "Citizen^Jan"} <= secrets
    hashed = {"sample_key", "patient", "sop_instance_uid", "series_uid", "study_uid"}
    for column in manifest.columns:
        cells = [str(v) for v in manifest[column] if not pd.isna(v)]
        for secret in secrets:
            assert secret not in cells, (column, secret)  # no cell *is* a secret
        if column == "path":
            continue  # see below
        for secret in secrets:
            if column in hashed and len(secret) < 8:
                continue  # a short ID may appear by chance inside a UID or hash
            assert not any(secret in cell for cell in cells), (column, secret)
    # The path column is where the file lies: a site that names folders after patient IDs (as
    # this DICOMDIR tree does, 77654033/) exposes them there, and only there.
    leaking = {s for s in secrets if any(s in p for p in manifest["path"])}
    assert leaking == {"77654033"}


def test_sample_keys_are_stable_and_independent_of_the_key(manifest):
    again = index_dicom(TEST_FILES / "dicomdirtests", key=b"another-key").manifest
    first = manifest.set_index(["path", "frame"])
    for _, row in again.iterrows():
        old = first.loc[(row["path"], row["frame"])]
        assert old["sample_key"] == row["sample_key"]
        assert old["patient"] != row["patient"]


def test_index_a_single_file_and_can_index(tmp_path):
    result = index_dicom(TEST_FILES / "CT_small.dcm", key=KEY)
    assert len(result.manifest) == 1 and not result.failures and not result.skipped
    loader = DicomLoader()
    assert loader.can_index(TEST_FILES)
    assert loader.can_index(TEST_FILES / "CT_small.dcm")
    assert loader.can_index(TEST_FILES / MONOCHROME1[0])  # no suffix, DICM prefix
    assert not loader.can_index(TEST_FILES / "README.txt")
    assert not loader.can_index(tmp_path / "missing")
    with pytest.raises(DataError, match="does not exist"):
        index_dicom(tmp_path / "missing", key=KEY)


def test_the_builtin_plugin_provides_the_loader():
    from revise.data.plugins import get_loader

    loader = get_loader("dicom")
    assert isinstance(loader, DicomLoader) and loader.name == "dicom"


def test_broken_copies_beside_good_files(tmp_path):
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    shutil.copy(TEST_FILES / "CT_small.dcm", tmp_path / "good_ct.dcm")
    (tmp_path / "sub").mkdir()
    shutil.copy(TEST_FILES / "MR_small.dcm", tmp_path / "sub" / "good_mr.dcm")
    (tmp_path / "bad.dcm").write_text("this is not DICOM\n")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "cut_pixels.dcm").write_bytes(ct[: len(ct) - 10_000])
    raw = read("CT_small.dcm").get_item(0x00080070)  # Manufacturer, in the middle of the header
    (tmp_path / "cut_header.dcm").write_bytes(ct[: raw.value_tell + raw.length // 2])
    result = index_dicom(tmp_path, key=KEY)
    reasons = {Path(f.path).name: f.reason for f in result.failures}
    assert reasons.pop("cut_pixels.dcm").startswith("truncated pixel data (file ends after ")
    assert reasons == {
        "bad.dcm": "not a DICOM file (a text file)",
        "cut_header.dcm": "truncated header (the file ends inside a data element)",
    }
    assert sorted(Path(p).name for p in result.manifest["path"]) == ["good_ct.dcm", "good_mr.dcm"]
    assert [(Path(s.path).name, s.reason) for s in result.skipped] == [
        (".DS_Store", "not a DICOM file (hidden file)")
    ]
    # Decoding it anyway (a manifest made before the file was damaged) is a DataError.
    row = row_of(index_dicom(TEST_FILES / "CT_small.dcm", key=KEY).manifest, "CT_small.dcm")
    row["path"] = str(tmp_path / "cut_pixels.dcm")
    with pytest.raises(DataError, match=r"cut_pixels\.dcm"):
        DicomLoader().read_pixels(row)


def test_uid_named_file_with_a_damaged_preamble_is_a_failure(tmp_path):
    ct = bytearray((TEST_FILES / "CT_small.dcm").read_bytes())
    ct[128:132] = b"DIXM"  # damaged prefix
    uid_named = tmp_path / "1.2.826.0.1.3680043.8.498.868"  # suffix ".868" is part of the UID
    uid_named.write_bytes(bytes(ct))
    (tmp_path / "rotated.log.1").write_text("an old log file\n")  # numeric suffix, text
    result = index_dicom(tmp_path, key=KEY)
    assert [(Path(f.path).name, f.reason) for f in result.failures] == [
        (uid_named.name, "not a DICOM file (no 'DICM' prefix / file meta header)")
    ]
    assert [(Path(s.path).name, s.reason) for s in result.skipped] == [
        ("rotated.log.1", "not a DICOM file (text)")
    ]


def test_image_header_without_its_pixel_data_is_a_failure(tmp_path):
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    cut = ct.rfind(b"\xe0\x7f\x10\x00")  # the Pixel Data tag: the file ends just before it
    (tmp_path / "cut_before_pixels.dcm").write_bytes(ct[:cut])
    shutil.copy(TEST_FILES / "test-SR.dcm", tmp_path / "report.dcm")  # no image: still a skip
    result = index_dicom(tmp_path, key=KEY)
    reasons = {Path(f.path).name: f.reason for f in result.failures}
    assert list(reasons) == ["cut_before_pixels.dcm"]
    assert reasons["cut_before_pixels.dcm"].startswith("missing pixel data although the header")
    assert [Path(s.path).name for s in result.skipped] == ["report.dcm"]
    assert result.manifest.empty


# --- decoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "frame", "shape"),
    [
        ("CT_small.dcm", 0, (1, 128, 128)),
        ("MR_small.dcm", 0, (1, 64, 64)),
        ("MR_small_RLE.dcm", 0, (1, 64, 64)),
        ("MR_small_jp2klossless.dcm", 0, (1, 64, 64)),
        ("MR_small_bigendian.dcm", 0, (1, 64, 64)),
        ("rtdose.dcm", 14, (1, 10, 10)),
        ("image_dfl.dcm", 0, (1, 512, 512)),
        ("liver_1frame.dcm", 0, (1, 512, 512)),
        ("SC_rgb_rle.dcm", 0, (3, 100, 100)),
        ("SC_rgb_rle_2frame.dcm", 1, (3, 100, 100)),
        ("SC_rgb_small_odd.dcm", 0, (3, 3, 3)),
        ("ExplVR_BigEnd.dcm", 0, (3, 60, 80)),
        ("examples_ybr_color.dcm", 29, (3, 240, 320)),
        ("examples_jpeg2k.dcm", 0, (3, 480, 640)),
        ("examples_palette.dcm", 0, (3, 350, 800)),
    ],
)
def test_read_pixels_shapes(manifest, name, frame, shape):
    out = DicomLoader().read_pixels(row_of(manifest, name, frame))
    assert out.dtype == np.float32 and out.shape == shape
    assert np.isfinite(out).all()


def test_same_image_in_other_encodings_decodes_alike(manifest):
    loader = DicomLoader()
    mr = loader.read_pixels(row_of(manifest, "MR_small.dcm"))
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"):
        np.testing.assert_array_equal(loader.read_pixels(row_of(manifest, name)), mr)
    rgb = loader.read_pixels(row_of(manifest, "SC_rgb_rle.dcm"))
    assert rgb[:, 0, 50].tolist() == [255, 0, 0]  # the red bar
    # YBR_FULL_422, uncompressed and as JPEG: converted to RGB (pydicom 3 does this).
    for name, tolerance in [
        ("SC_ybr_full_422_uncompressed.dcm", 1.5),
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", 4),
    ]:
        row = row_of(manifest, name)
        assert row["photometric"] == "YBR_FULL_422"
        out = loader.read_pixels(row)
        assert np.abs(out - rgb).mean() < tolerance, name
    sixteen = loader.read_pixels(row_of(manifest, "SC_rgb_rle_16bit.dcm"))
    np.testing.assert_allclose(sixteen / 257, rgb)


def test_palette_colour_is_applied(manifest):
    ds = read("examples_palette.dcm")
    expected = apply_color_lut(ds.pixel_array, ds).transpose(2, 0, 1)
    out = DicomLoader().read_pixels(row_of(manifest, "examples_palette.dcm"))
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    voi = DicomLoader().read_pixels(row_of(manifest, "examples_palette.dcm"), voi=True)
    np.testing.assert_allclose(voi, expected / 65535.0, rtol=1e-6)


def test_modality_lut_of_ct(manifest):
    ds = read("CT_small.dcm")
    out = DicomLoader().read_pixels(row_of(manifest, "CT_small.dcm"))
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(out[0], expected.astype(np.float32))


def test_monochrome1_is_inverted(manifest):
    found = sorted(rel(p) for p in manifest.loc[manifest["photometric"] == "MONOCHROME1", "path"])
    assert found == MONOCHROME1
    loader = DicomLoader()
    for name in MONOCHROME1:
        ds = read(name)
        stored = ds.pixel_array.astype(np.float64)
        out = loader.read_pixels(row_of(manifest, name))[0]
        assert np.corrcoef(out.ravel(), stored.ravel())[0, 1] < -0.99
        # Inverted about the modality range of the possible stored values (12 bits, rescaled).
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = intercept, (2 ** int(ds.BitsStored) - 1) * slope + intercept
        np.testing.assert_allclose(out, low + high - (stored * slope + intercept), rtol=1e-6)
        # With voi the window output is inverted: 1 - window(value).
        center, width = float(ds.WindowCenter), float(ds.WindowWidth)
        window = np.clip((stored * slope + intercept - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
        voi = loader.read_pixels(row_of(manifest, name), voi=True)[0]
        np.testing.assert_allclose(voi, 1 - window, atol=1e-6)


def test_voi_window_maps_to_unit_range(manifest):
    loader = DicomLoader()
    ds = read("MR_small.dcm")  # WindowCenter 600, WindowWidth 1600, no rescale
    values = ds.pixel_array.astype(np.float64)
    expected = np.clip((values - 599.5) / 1599 + 0.5, 0, 1)
    np.testing.assert_allclose(
        loader.read_pixels(row_of(manifest, "MR_small.dcm"), voi=True)[0], expected, atol=1e-6
    )
    ct = loader.read_pixels(row_of(manifest, "CT_small.dcm"), voi=True)  # no window: min..max
    assert ct.min() == 0.0 and ct.max() == 1.0
    # Three windows (center/width 40/100, 40/100, 40/200): the first one is used.
    multi = loader.read_pixels(row_of(manifest, "J2K_pixelrep_mismatch.dcm"), voi=True)[0]
    raw = read("J2K_pixelrep_mismatch.dcm").pixel_array.astype(np.float64)
    first = np.clip((raw - 39.5) / 99 + 0.5, 0, 1)
    last = np.clip((raw - 39.5) / 199 + 0.5, 0, 1)
    np.testing.assert_allclose(multi, first, atol=1e-6)
    assert np.abs(multi - last).max() > 0.2  # the wider window would have given other values
    for name in ("SC_rgb_rle.dcm", "SC_rgb_rle_32bit.dcm", "rtdose.dcm"):
        out = loader.read_pixels(row_of(manifest, name), voi=True)
        assert out.min() >= 0.0 and out.max() <= 1.0, name


def _with_voi_lut(name: str, path: Path, descriptor: list[int], data, vr: str = "US") -> Path:
    """A copy of a test file whose only VOI transform is the given VOI LUT."""
    ds = read(name)
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            del ds[keyword]
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUTDescriptor
    item.add_new(0x00283006, vr, data)  # LUTData
    ds.VOILUTSequence = pydicom.Sequence([item])
    ds.save_as(path)
    return path


def test_voi_lut_with_8_bit_entries_does_not_wrap(tmp_path):
    # 12-bit MR values 0..1123; 256 falling entries from input 100 (8 bits: 255 down to 0).
    path = _with_voi_lut(
        "examples_overlay.dcm", tmp_path / "lut8.dcm", [256, 100, 8], [255 - i for i in range(256)]
    )
    stored = read("examples_overlay.dcm").pixel_array.astype(np.int64)
    out = DicomLoader().read_pixels({"path": str(path), "frame": 0}, voi=True)[0]
    at = {int(v): float(out[stored == v][0]) for v in (0, 100, 300, 354, 355, 356, 600, 1123)}
    # below the first mapped value: entry 0; 300 -> entry 200 = 55; from 355 on: the last entry
    assert at == pytest.approx(
        {0: 1.0, 100: 1.0, 300: 55 / 255, 354: 1 / 255, 355: 0.0, 356: 0.0, 600: 0.0, 1123: 0.0}
    )
    index = np.clip(stored - 100, 0, 255)
    np.testing.assert_allclose(out, (255 - index) / 255, atol=1e-7)


def test_voi_lut_with_16_bit_entries_signed_first_value_and_65536_entries(tmp_path):
    # CT: stored 128..2191, rescaled by -1024. Entries 0 means 65536; the first value mapped,
    # written as US 64512, is -1024 for signed pixels. So output = (65535 - stored) / 65535.
    words = (65535 - np.arange(65536)).astype("<u2").tobytes()
    path = _with_voi_lut("CT_small.dcm", tmp_path / "lut16.dcm", [0, 64512, 16], words, "OW")
    stored = read("CT_small.dcm").pixel_array.astype(np.float64)
    out = DicomLoader().read_pixels({"path": str(path), "frame": 0}, voi=True)[0]
    assert float(out[stored == 128][0]) == pytest.approx(65407 / 65535)
    assert float(out[stored == 2191][0]) == pytest.approx(63344 / 65535)
    np.testing.assert_allclose(out, (65535 - stored) / 65535, atol=1e-7)


def test_frames_of_a_file_are_read_once(manifest, monkeypatch):
    calls = []
    real = pydicom.dcmread

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(dicom_loader.pydicom, "dcmread", counting)
    loader = DicomLoader()
    frames = [loader.read_pixels(row_of(manifest, "rtdose.dcm", f)) for f in range(15)]
    assert len(calls) == 1
    assert not all(np.array_equal(frames[0], f) for f in frames[1:])


def test_read_pixels_errors(manifest, tmp_path):
    loader = DicomLoader()
    row = row_of(manifest, "CT_small.dcm")
    with pytest.raises(DataError, match="frame 3"):
        loader.read_pixels({**row, "frame": 3})
    with pytest.raises(DataError, match="not readable"):
        loader.read_pixels({**row, "path": str(tmp_path / "gone.dcm")})
    with pytest.raises(DataError, match="another instance"):
        loader.read_pixels({**row, "path": str(TEST_FILES / "MR_small.dcm")})
    broken = row_of(manifest, "JPEG2000-embedded-sequence-delimiter.dcm")
    with pytest.raises(DataError, match=r"JPEG2000-embedded-sequence-delimiter\.dcm"):
        loader.read_pixels(broken)


def test_indexing_says_which_images_no_installed_decoder_can_read(tmp_path, caplog):
    """JPEG Lossless needs gdcm or pylibjpeg-libjpeg (optional; GPL): said when indexing, with
    the count and what to install, rather than only image by image when decoding."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    for name in ("SC_rgb_jpeg_gdcm.dcm", "CT_small.dcm"):
        shutil.copy(TEST_FILES / name, tmp_path / name)
    with caplog.at_level("WARNING", logger="revise.data.dicom_loader"):
        result = index_dicom(tmp_path, key=KEY)
    assert len(result.manifest) == 2 and not result.failures  # headers index either way
    warned = [r.getMessage() for r in caplog.records if "no installed decoder" in r.getMessage()]
    if get_decoder(JPEGLosslessSV1).is_available:
        assert warned == []
    else:
        (message,) = warned
        assert message.startswith("dicom: 1 image(s) use JPEG Lossless") and "pylibjpeg" in message
