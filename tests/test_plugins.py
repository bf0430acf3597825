"""Plugins end to end with the example plugin ``revise-pngfolder`` (plugins/revise-pngfolder).

The plugin must be installed in the test environment (CI:
``pip install --no-deps -e plugins/revise-pngfolder``); these tests install nothing themselves.
``make_png_site`` builds a small real-data site and is meant for reuse by other tests.
"""

from __future__ import annotations

import csv
import re
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from revise.data import manifest as manifest_mod
from revise.data import plugins
from revise.data.loaders import SiteLoader
from revise.errors import DataError, PluginError, UnknownNameError
from revise.phi import pseudonym, site_key

DIST = "revise-pngfolder"
PLUGIN = "pngfolder"
INSTALL = f"pip install --no-deps -e plugins/{DIST}"

# Clear identifiers written into make_png_site's labels.csv; none may appear in any output.
PATIENT_IDS = ("MRN-4711-0042", "MRN-4711-0815", "MRN-4711-1337")
DEVICES = ("Acme ScanPro 100", "Borealis DX-2")
STUDY_DATES = ("2021-03-14", "2022-07-01", "2023-11-30")


def make_png_site(root: Path, n: int = 60, seed: int = 0) -> Path:
    """Write a pngfolder site of ``n`` 8x8 digit images (sklearn's load_digits) under ``root``.

    Images are scaled from 0..16 to 8-bit and saved as grayscale PNG under ``images/``; the label
    is the digit. Patients (``PATIENT_IDS``) cycle every image, devices (``DEVICES``) every
    three, so each patient has images from both devices. Returns ``root``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(digits.images), size=n, replace=False)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "patient_id", "device", "study_date", "body_part"])
        for i, idx in enumerate(chosen):
            pixels = np.round(digits.images[idx] * (255 / 16)).astype(np.uint8)
            rel = f"images/{i:04d}.png"
            Image.fromarray(pixels, mode="L").save(root / rel)
            p, d = i % len(PATIENT_IDS), (i // len(PATIENT_IDS)) % len(DEVICES)
            label = int(digits.target[idx])
            writer.writerow([rel, label, PATIENT_IDS[p], DEVICES[d], STUDY_DATES[p], "HAND"])
    return root


def _read_labels(root: Path) -> list[dict[str, str]]:
    with (root / "labels.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture
def installed() -> metadata.Distribution:
    """The plugin's distribution; a clear failure (not a skip) when it is not installed."""
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        pytest.fail(f"the example plugin {DIST} is not installed; run `{INSTALL}`", pytrace=False)
    names = {ep.name: ep.value for ep in dist.entry_points if ep.group == plugins.GROUP}
    if names.get(PLUGIN) != "revise_pngfolder":
        pytest.fail(
            f"{DIST} is installed without the entry point {PLUGIN}; reinstall with `{INSTALL}`",
            pytrace=False,
        )
    return dist


@pytest.fixture
def site(tmp_path) -> Path:
    return make_png_site(tmp_path / "site")


@pytest.fixture
def loader(installed, monkeypatch) -> SiteLoader:
    monkeypatch.setenv("REVISE_PLUGINS", PLUGIN)
    plugins.reset()
    return plugins.get_loader(PLUGIN)


def _info(name: str) -> plugins.PluginInfo:
    infos = {i.name: i for i in plugins.plugin_infos()}
    assert name in infos, f"plugin {name} not found; found: {sorted(infos)}"
    return infos[name]


# --- discovery and the allow-list --------------------------------------------------------------


def test_found_but_not_loaded_without_allow_list(installed):
    info = _info(PLUGIN)
    assert not info.allowed and not info.loaded
    assert _norm(DIST) in _norm(info.source)
    with pytest.raises(UnknownNameError, match="REVISE_PLUGINS"):
        plugins.get_loader(PLUGIN)


def test_other_names_on_allow_list_do_not_load_it(installed, monkeypatch):
    monkeypatch.setenv("REVISE_PLUGINS", "someotherplugin")
    plugins.reset()
    assert not _info(PLUGIN).loaded
    with pytest.raises(UnknownNameError):
        plugins.get_loader(PLUGIN)


def test_allowed_by_env(installed, monkeypatch):
    monkeypatch.setenv("REVISE_PLUGINS", PLUGIN)
    plugins.reset()
    info = _info(PLUGIN)
    assert info.allowed and info.loaded and not info.error
    dist_name, version, value = info.source.split()
    assert (_norm(dist_name), version, value) == (
        _norm(DIST),
        installed.version,
        "(revise_pngfolder)",
    )
    loader = plugins.get_loader(PLUGIN)
    assert loader.name == PLUGIN
    assert isinstance(loader, SiteLoader)


def test_allowed_by_config_file(installed, tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(f"plugins: [{PLUGIN}]\n")
    monkeypatch.setenv("REVISE_CONFIG", str(config))
    plugins.reset()
    info = _info(PLUGIN)
    assert info.allowed and info.loaded
    assert plugins.get_loader(PLUGIN).name == PLUGIN


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"plugins: {PLUGIN}\n", f"plugins must be a list, not '{PLUGIN}'"),
        (f"- {PLUGIN}\n", f": must be a mapping of names to values, not ['{PLUGIN}']"),
        (f"plugins: [{PLUGIN}\n", "line 2 column 1 is not valid YAML"),
        ("plugins: [1, 2]\n", "plugins[0] must be text, not 1"),
    ],
)
def test_malformed_config_file_is_a_plugin_error(tmp_path, monkeypatch, text, problem):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    monkeypatch.setenv("REVISE_CONFIG", str(config))
    plugins.reset()
    with pytest.raises(PluginError) as err:
        plugins.allow_list()
    message = str(err.value)
    assert f"plugin config {config}" in message and problem in message
    assert "plugins: [pngfolder]" in message  # the expected shape
    with pytest.raises(PluginError):
        plugins.plugin_infos()  # never a silent allow-list of letters, nor a crash


def test_every_problem_of_the_config_file_is_said_with_its_location(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(f"plugins: [{PLUGIN}, 7, '  ', ~]\nother: kept for other tools\n")
    monkeypatch.setenv("REVISE_CONFIG", str(config))
    with pytest.raises(PluginError) as err:
        plugins.allow_list()
    message = str(err.value)
    assert message.startswith(f"plugin config {config}: 3 problems: "), message
    assert "(1) plugins[1] must be text, not 7" in message
    assert "(2) plugins[2] must be at least 1 character of text" in message
    assert "(3) plugins[3] must be text, not None" in message
    assert message.count("plugins: [pngfolder]") == 1  # the expected shape, said once
    assert "other" not in message  # keys of other tools are theirs


def test_the_allow_list_from_the_environment_is_the_config_files_list(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text("plugins: [from-the-file]\n")
    monkeypatch.setenv("REVISE_CONFIG", str(config))
    monkeypatch.setenv("REVISE_PLUGINS", f" {PLUGIN} ,, other ")
    assert plugins.allow_list() == {PLUGIN, "other"}  # the variable wins, names stripped
    monkeypatch.setenv("REVISE_PLUGINS", f"{PLUGIN},*")
    assert plugins.allow_list() is None  # every plugin found
    monkeypatch.delenv("REVISE_PLUGINS")
    assert plugins.allow_list() == {"from-the-file"}
    config.write_text("plugins: ['*']\n")
    assert plugins.allow_list() is None


def test_empty_config_file_allows_nothing(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    for text in ("", "plugins:\n", "other: 1\n", f"plugins:\n  - {PLUGIN}\n"):
        config.write_text(text)
        monkeypatch.setenv("REVISE_CONFIG", str(config))
        assert plugins.allow_list() == ({PLUGIN} if PLUGIN in text else set())


# --- indexing ----------------------------------------------------------------------------------


def test_can_index(loader, site, tmp_path):
    assert loader.can_index(site)
    assert not loader.can_index(site / "labels.csv")
    assert not loader.can_index(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert not loader.can_index(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.csv").write_text("file,class\na.png,1\n")
    assert not loader.can_index(bad)


def test_index_rows(loader, site):
    key = site_key()
    result = loader.index(site, site="hospital-a", key=key)
    df = result.manifest
    truth = _read_labels(site)
    assert result.failures == []
    assert len(df) == len(truth) == 60
    assert list(df.columns[: len(manifest_mod.COLUMNS)]) == list(manifest_mod.COLUMNS)

    by_path = {str((site / t["file"]).resolve()): t for t in truth}
    assert set(df["path"]) == set(by_path)
    for row in df.to_dict("records"):
        t = by_path[row["path"]]
        assert Path(row["path"]).is_absolute() and Path(row["path"]).is_file()
        assert re.fullmatch(r"s-[0-9a-f]{16}", row["sample_key"])
        assert row["label"] == int(t["label"])
        assert row["device"] == t["device"]
        assert row["study_date"] == t["study_date"]
        assert row["body_part"] == "HAND"
        assert row["patient"] == pseudonym(t["patient_id"], key=key) != t["patient_id"]
        assert (row["frame"], row["frames"], row["rows"], row["cols"]) == (0, 1, 8, 8)
        assert (row["modality"], row["photometric"], row["samples_per_pixel"]) == (
            "OT",
            "MONOCHROME2",
            1,
        )
        assert (row["site"], row["loader"]) == ("hospital-a", PLUGIN)
    assert df["sample_key"].is_unique
    assert df["patient"].nunique() == len(PATIENT_IDS)
    assert set(df["device"]) == set(DEVICES)
    assert str(df["label"].dtype) == "Int64"


def test_no_clear_patient_id_in_any_output(loader, site, tmp_path, caplog):
    caplog.set_level("DEBUG")
    df = loader.index(site, site="hospital-a", key=site_key()).manifest
    cells = [str(v) for v in df.astype(str).to_numpy().ravel()] + [str(c) for c in df.columns]
    saved = manifest_mod.save(df, tmp_path / "manifest.csv").read_text()
    for clear in PATIENT_IDS:
        assert not any(clear in cell for cell in cells), clear
        assert clear not in saved
        assert clear not in caplog.text


def test_sample_keys_are_stable(loader, site, tmp_path):
    first = loader.index(site, site="a", key=b"k1").manifest
    moved = shutil.copytree(site, tmp_path / "elsewhere" / "moved")
    second = loader.index(moved, site="b", key=b"k2").manifest
    assert list(first["sample_key"]) == list(second["sample_key"])
    # a different key gives different pseudonyms for the same patients
    assert set(first["patient"]).isdisjoint(second["patient"])


def test_index_accepts_unlabelled_and_other_columns(loader, tmp_path):
    root = tmp_path / "site"
    (root / "case-1").mkdir(parents=True)
    (root / "case-2").mkdir()
    for rel in ("case-1/a.png", "case-1/b.png", "case-2/c.png"):
        Image.fromarray(np.zeros((4, 6), np.uint8)).save(root / rel)
    (root / "labels.csv").write_text(
        "File,Label,notes\ncase-1/a.png,1,John Doe\ncase-1\\b.png,,x\n./case-2/c.png,0,\n"
    )
    key = site_key()
    df = loader.index(root, site="s", key=key).manifest
    assert list(df["label"].astype(object).where(df["label"].notna(), None)) == [1, None, 0]
    # no patient column: the image's folder is the patient
    assert list(df["patient"]) == [pseudonym(f, key=key) for f in ("case-1", "case-1", "case-2")]
    assert "notes" not in df.columns
    assert "John Doe" not in df.astype(str).to_numpy().ravel().tolist()
    assert (df["rows"].tolist(), df["cols"].tolist()) == ([4, 4, 4], [6, 6, 6])


def test_missing_label_column_is_a_data_error(loader, site):
    csv_path = site / "labels.csv"
    text = csv_path.read_text().splitlines()
    rows = [line.split(",") for line in text]
    col = rows[0].index("label")
    csv_path.write_text("\n".join(",".join(r[:col] + r[col + 1 :]) for r in rows) + "\n")
    with pytest.raises(DataError) as exc:
        loader.index(site, site="s", key=site_key())
    message = str(exc.value)
    assert str(csv_path) in message
    assert "label" in message and "file,label" in message


def test_missing_and_broken_images_are_failures(loader, site):
    truth = _read_labels(site)
    gone, broken = truth[3]["file"], truth[7]["file"]
    (site / gone).unlink()
    (site / broken).write_text("not an image")
    result = loader.index(site, site="s", key=site_key())
    assert len(result.manifest) == len(truth) - 2
    reasons = {Path(f.path).resolve(): f.reason for f in result.failures}
    assert set(reasons) == {(site / gone).resolve(), (site / broken).resolve()}
    assert gone in reasons[(site / gone).resolve()]
    assert "does not exist" in reasons[(site / gone).resolve()]
    assert broken in reasons[(site / broken).resolve()]
    for clear in PATIENT_IDS:
        assert all(clear not in f.reason for f in result.failures)
    assert not result.manifest["path"].isin([str(site / gone), str(site / broken)]).any()


def test_bad_lines_are_failures(loader, site):
    with (site / "labels.csv").open("a", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["images/0000.png", "1", "", "", "", ""])  # listed twice
        writer.writerow(["../outside.png", "1", "", "", "", ""])
        writer.writerow(["images/0001.png", "cat", "", "", "", ""])
        writer.writerow(["images/0002.png", "1", "", "", "14.03.2021", ""])
    result = loader.index(site, site="s", key=site_key())
    assert len(result.manifest) == 60
    reasons = " | ".join(f.reason for f in result.failures)
    assert len(result.failures) == 4, reasons
    for part in ("already listed", "outside.png", "'cat'", "14.03.2021"):
        assert part in reasons


# --- pixels ------------------------------------------------------------------------------------


def test_read_pixels_returns_saved_values(loader, site):
    df = loader.index(site, site="s", key=site_key()).manifest
    for row in df.to_dict("records"):
        saved = np.asarray(Image.open(row["path"]))
        pixels = loader.read_pixels(row)
        assert pixels.dtype == np.float32 and pixels.shape == (1, 8, 8)
        np.testing.assert_array_equal(pixels[0], saved.astype(np.float32))
    # the Series form of a row works too, and voi is accepted
    series = df.iloc[0]
    np.testing.assert_array_equal(loader.read_pixels(series, voi=True), loader.read_pixels(series))


def test_formats_and_modes(loader, tmp_path):
    root = tmp_path / "modes"
    root.mkdir()
    rng = np.random.default_rng(1)
    h, w = 5, 7  # not square, to catch a transposition
    gray16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
    palette_idx = rng.integers(0, 4, (h, w), dtype=np.uint8)
    palette = [10, 20, 30, 40, 50, 60, 70, 80, 90, 200, 210, 220]
    pal = Image.fromarray(palette_idx, mode="P")
    pal.putpalette(palette + [0] * (768 - len(palette)))

    Image.fromarray(gray16).save(root / "g16.png")
    Image.fromarray(gray16).save(root / "g16.tif")
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(np.concatenate([rgb, alpha], axis=2)).save(root / "rgba.png")
    pal.save(root / "pal.png")
    Image.fromarray(rgb).save(root / "rgb.jpg")
    Image.fromarray(rgb[..., 0] > 127).save(root / "bw.png")
    names = ["g16.png", "g16.tif", "rgb.png", "rgba.png", "pal.png", "rgb.jpg", "bw.png"]
    (root / "labels.csv").write_text("file,label\n" + "".join(f"{n},0\n" for n in names))

    result = loader.index(root, site="s", key=site_key())
    assert result.failures == []
    rows = {Path(r["path"]).name: r for r in result.manifest.to_dict("records")}
    expected_rgb = rgb.transpose(2, 0, 1).astype(np.float32)
    colour = {"rgb.png", "rgba.png", "pal.png", "rgb.jpg"}
    for name, row in rows.items():
        assert (row["rows"], row["cols"]) == (h, w), name
        c = 3 if name in colour else 1
        assert row["samples_per_pixel"] == c, name
        assert row["photometric"] == ("RGB" if c == 3 else "MONOCHROME2"), name
        pixels = loader.read_pixels(row)
        assert pixels.dtype == np.float32 and pixels.shape == (c, h, w), name

    for name in ("g16.png", "g16.tif"):
        np.testing.assert_array_equal(loader.read_pixels(rows[name])[0], gray16.astype(np.float32))
    assert loader.read_pixels(rows["g16.png"]).max() > 255
    np.testing.assert_array_equal(loader.read_pixels(rows["rgb.png"]), expected_rgb)
    np.testing.assert_array_equal(loader.read_pixels(rows["rgba.png"]), expected_rgb)
    lut = np.asarray(palette, np.float32).reshape(-1, 3)
    np.testing.assert_array_equal(
        loader.read_pixels(rows["pal.png"]), lut[palette_idx].transpose(2, 0, 1)
    )
    decoded_jpeg = np.asarray(Image.open(root / "rgb.jpg").convert("RGB"), np.float32)
    np.testing.assert_array_equal(
        loader.read_pixels(rows["rgb.jpg"]), decoded_jpeg.transpose(2, 0, 1)
    )
    assert set(np.unique(loader.read_pixels(rows["bw.png"]))) <= {0.0, 255.0}


def test_read_pixels_of_a_vanished_file_is_a_data_error(loader, site):
    row = loader.index(site, site="s", key=site_key()).manifest.iloc[0].to_dict()
    Path(row["path"]).unlink()
    with pytest.raises(DataError, match=re.escape(Path(row["path"]).name)):
        loader.read_pixels(row)


def test_the_plugin_api_is_the_machinerys_own():
    """Plugin authors import revise.plugins (plugins/revise-pngfolder does): its marker and
    types are the ones the loader registry uses, so a hook marked with it is found."""
    import revise.plugins as api

    assert api.hookimpl is plugins.hookimpl and api.GROUP == plugins.GROUP == "revise"
    assert api.plugin_infos is plugins.plugin_infos
    assert {"hookimpl", "SiteLoader", "plugin_infos"} <= set(api.__all__)
