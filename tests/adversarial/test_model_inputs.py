"""Wrong or hostile model inputs give one clear line: never a traceback, an internal error, a
shifted label file or a 14 GB allocation (issue 13, classes 7, 8 and 10).

Probes kept here (what a careless user or an attacker tried; what revise must do):

* class 7: a card whose class name holds a line break or another control character (newline,
  carriage return, ESC, U+2028, NUL, tab) would shift every Triton label after it by a line. It
  is refused when the card is read, naming the card file and the class; `revise export` of such
  a model writes nothing. Class names read from a MONAI bundle's configs/metadata.json too; there,
  channel numbers that are not 0..N-1 and metadata of another shape (a list, inputs as a list) are
  a clear error, not a ValueError or AttributeError.
* class 10: a card asking for a 60000x60000 input (14 GB per image), 100,000-channel inputs or a
  million classes is refused when read, naming the card file, the field and the documented
  maximum; arch_kwargs asking for billions of weights are counted on the meta device and
  refused; `revise export` of such a model fails at once, on one line.
* class 8: `revise export --opset 99 | 5 | -1` exits 2 on one line stating the supported range;
  a supported opset below 18, where the dynamo exporter gives up, prints no traceback.
* class 8: a broken .pt2 (truncated; a zip that is no export archive; another archive_format;
  the program, a config or a weight missing; a weight whose checksum fails; a program that is not
  JSON): one line naming the file, exit 1, and no traceback from torch's own log handler.
* class 8: a truncated or non-ONNX file given to `revise validate --onnx`, or as
  `--model x.onnx`: one line naming the file, never "internal error".
* class 8: a .pt2 exported with a fixed batch size: refused when loaded, naming the file and
  how to export it again, instead of an internal error on the first batch.
* hints name the flag that exists, `--arch`, never `--architecture`.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from clirunner import START_TIMEOUT_S

import revise
from revise.errors import ModelError
from revise.export.onnx import MIN_OPSET, max_opset
from revise.models.architectures import MAX_PARAMETERS, build
from revise.models.card import MAX_CLASSES, MAX_INPUT_SIDE, ModelCard
from revise.models.io import load_model

GOOD = {"architecture": "small_cnn", "num_classes": 3, "in_channels": 1, "input_size": [16, 16]}
FORGET = "label == 0"


def _card_file(folder: Path, **changes) -> Path:
    path = folder / "card.json"
    path.write_text(json.dumps({**GOOD, **changes}))
    return path


def _model_copy(export_site, folder: Path, **changes) -> Path:
    """A copy of the export site's model folder with its card changed."""
    model = Path(shutil.copytree(export_site.models[0], folder / "model"))
    card = json.loads((model / "card.json").read_text())
    (model / "card.json").write_text(json.dumps({**card, **changes}))
    return model


# --- class 7: class names that break line-based files -----------------------------------------

BAD_NAMES = {
    "newline": "no\nfinding",
    "carriage return": "no finding\r",
    "escape": "\x1b[2Jcat",
    "line separator": "a\u2028b",
    "nul": "a\x00b",
    "tab": "a\tb",
}


@pytest.mark.parametrize("kind", list(BAD_NAMES))
def test_class_name_that_breaks_lines_is_refused_naming_card_and_class(tmp_path, kind):
    path = _card_file(tmp_path, class_names=["ok", BAD_NAMES[kind], "last"])
    with pytest.raises(ModelError) as caught:
        ModelCard.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: model card: class_names[1] {BAD_NAMES[kind]!r}"), message
    assert "\n" not in message and "\r" not in message and "\x1b" not in message


def test_export_of_a_model_whose_class_name_breaks_labels_writes_nothing(
    cli, export_site, tmp_path
):
    names = [f"digit {i}" for i in range(10)]
    names[3] = "three\nfour"
    model = _model_copy(export_site, tmp_path, class_names=names)
    out = tmp_path / "bundle"
    result = cli("export", model, "-o", out, code=1)
    line = cli.one_line_error(result)
    assert f"{model / 'card.json'}: model card: class_names[3] 'three\\nfour'" in line, line
    assert not out.exists() and cli.leftovers(tmp_path) == []


def _monai_bundle(folder: Path, meta: object) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    card = ModelCard("small_cnn", 2, input_size=(16, 16))
    torch.save(build(card).state_dict(), folder / "models" / "model.pt")
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    return folder


def _monai_meta(channel_def: object) -> dict:
    outputs = {"pred": {"num_channels": 2, "channel_def": channel_def}}
    inputs = {"image": {"num_channels": 1, "spatial_shape": [16, 16]}}
    return {"network_data_format": {"inputs": inputs, "outputs": outputs}}


def test_monai_class_names_that_break_lines_name_the_metadata_file(tmp_path):
    bundle = _monai_bundle(tmp_path / "bundle", _monai_meta({"0": "ok", "1": "bad\nname"}))
    with pytest.raises(ModelError) as caught:
        load_model(bundle, architecture="small_cnn")
    message = str(caught.value)
    assert message.startswith(f"{bundle / 'configs' / 'metadata.json'}: model card: class_names[1]")


@pytest.mark.parametrize(
    "meta",
    [
        _monai_meta({"zero": "a", "one": "b"}),  # keys that are no channel numbers
        _monai_meta({"0": "a", "5": "b"}),  # numbers outside 0..N-1
    ],
)
def test_monai_metadata_with_bad_channel_numbers_names_the_file(tmp_path, meta):
    bundle = _monai_bundle(tmp_path / "bundle", meta)
    with pytest.raises(ModelError, match=r"channel_def keys must be the channel numbers 0\.\.1"):
        load_model(bundle, architecture="small_cnn")


@pytest.mark.parametrize("meta", [["a list"], {"network_data_format": {"inputs": [1, 2]}}])
def test_monai_metadata_of_another_shape_is_no_card_not_a_crash(tmp_path, meta):
    bundle = _monai_bundle(tmp_path / "bundle", meta)
    loaded = load_model(bundle, architecture="small_cnn")  # the card is inferred from the weights
    assert (loaded.card.in_channels, loaded.card.num_classes) == (1, 2)


# --- class 10: sizes that would allocate without bound ----------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "limit"),
    [
        ({"input_size": [60000, 60000]}, "2 problems: (1) input_size[0]", f"{MAX_INPUT_SIDE}]"),
        ({"input_size": [16, 5000]}, "input_size[1]", f"in [1, {MAX_INPUT_SIDE}], not 5000"),
        ({"in_channels": 100_000, "input_size": [32, 32]}, "input_size", "values per image"),
        ({"num_classes": 1_000_000}, "num_classes", f"in [1, {MAX_CLASSES}], not 1000000"),
    ],
)
def test_card_sizes_are_bounded_naming_file_field_and_maximum(tmp_path, change, field, limit):
    path = _card_file(tmp_path, **change)
    with pytest.raises(ModelError) as caught:
        ModelCard.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: model card: {field} ") and limit in message, message


def test_the_largest_card_allowed_is_accepted(tmp_path):
    side = MAX_INPUT_SIDE
    card = ModelCard.load(_card_file(tmp_path, input_size=[side, side], in_channels=4))
    assert card.input_size == (side, side)


def test_arch_kwargs_that_ask_for_billions_of_weights_are_refused_without_allocating():
    """``widths: [1000000000]`` (21 billion weights, 84 GB) is counted on the meta device and
    refused at once; a real build would try to allocate it."""
    card = ModelCard("small_cnn", 10, input_size=(16, 16), arch_kwargs={"widths": [10**9]})
    with pytest.raises(ModelError, match=r"has 21,000,000,010 weights, more than 2,000,000,000"):
        build(card)
    assert sum(p.numel() for p in build(ModelCard("small_cnn", 10)).parameters()) < MAX_PARAMETERS


def test_export_of_a_60000_pixel_card_fails_at_once(cli, export_site, tmp_path):
    model = _model_copy(export_site, tmp_path, input_size=[60000, 60000])
    out = tmp_path / "bundle"
    line = cli.one_line_error(cli("export", model, "-o", out, code=1))
    assert f"{model / 'card.json'}: model card: 2 problems: (1) input_size[0] must be in" in line
    assert not out.exists()


# --- class 8: export --opset ------------------------------------------------------------------


@pytest.mark.parametrize("opset", ["99", "5", "-1"])
def test_export_opset_outside_the_supported_range(cli, export_site, tmp_path, opset):
    out = tmp_path / "bundle"
    result = cli("export", export_site.models[0], "-o", out, "--opset", opset, code=2)
    line = cli.one_line_error(result)
    assert f"--opset {opset}" in line and f"{MIN_OPSET} to {max_opset()}" in line, line
    assert not out.exists() and cli.leftovers(tmp_path) == []


def test_export_at_an_opset_the_dynamo_exporter_cannot_write_prints_no_traceback(
    cli, export_site, tmp_path
):
    out = tmp_path / "bundle"
    result = cli("export", export_site.models[0], "-o", out, "--opset", "17", code=0)
    assert "Traceback" not in result.stderr and "RuntimeError" not in result.stderr, result.stderr


# --- class 8: broken .pt2 files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory) -> Path:
    card = ModelCard("small_cnn", 10, input_size=(8, 8), arch_kwargs={"widths": [4]})
    program = torch.export.export(
        build(card).eval(),
        (torch.zeros(2, 1, 8, 8),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    torch.export.save(program, str(path))
    return path


def _copy_members(good: Path, out: Path, change: dict[str, bytes | None]) -> None:
    """``good`` rewritten with members (named inside its folder) replaced, or dropped (None)."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            inner = name.split("/", 1)[1]
            data = change.get(inner, src.read(name))
            if data is not None:
                dst.writestr(name, data)


def _bad_checksum(good: Path, out: Path) -> None:
    """A weight's bytes changed after the zip was written: its CRC no longer matches."""
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        offset = next(
            i for i in archive.infolist() if i.filename.endswith("/weight_0")
        ).header_offset
    name_length, extra_length = struct.unpack_from("<HH", data, offset + 26)  # local header
    data[offset + 30 + name_length + extra_length] ^= 0xFF
    out.write_bytes(bytes(data))


def _other_zip(good: Path, out: Path) -> None:
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes/readme.txt", "not a model")


BROKEN_PT2 = {
    "truncated": lambda good, out: out.write_bytes(good.read_bytes()[:5000]),
    "zip of other files": _other_zip,
    "other archive_format": lambda good, out: _copy_members(good, out, {"archive_format": b"x"}),
    "no program": lambda good, out: _copy_members(good, out, {"models/model.json": None}),
    "no weights config": lambda good, out: _copy_members(
        good, out, {"data/weights/model_weights_config.json": None}
    ),
    "no weight file": lambda good, out: _copy_members(good, out, {"data/weights/weight_3": None}),
    "bad checksum": _bad_checksum,
    "program not json": lambda good, out: _copy_members(good, out, {"models/model.json": b"{"}),
}


@pytest.mark.parametrize("kind", list(BROKEN_PT2))
def test_broken_pt2_gives_one_line_naming_the_file(cli, tmp_path, good_pt2, kind):
    path = tmp_path / "vendor.pt2"
    BROKEN_PT2[kind](good_pt2, path)
    out = tmp_path / "bundle"
    result = cli("export", path, "-o", out, code=1)
    line = cli.one_line_error(result)
    assert line.startswith(f"error: {path}") and "internal error" not in line, line
    assert not out.exists()


def test_broken_pt2_prints_one_line_in_a_real_process(tmp_path, good_pt2):
    """torch logs a failed load, with its traceback, through its own handler, which the
    in-process runner does not capture: run revise as a user does."""
    path = tmp_path / "vendor.pt2"
    _copy_members(good_pt2, path, {"data/weights/weight_3": None})
    command = [sys.executable, "-m", "revise.cli", "export", str(path), "-o", str(tmp_path / "b")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {path} is not a readable torch.export archive: it has no")


def test_fixed_batch_pt2_is_refused_when_loaded(cli, export_site, tmp_path):
    model = export_site.models[0]
    program = torch.export.export(load_model(model).module, (torch.zeros(1, 1, 8, 8),))
    path = tmp_path / "fixed.pt2"
    torch.export.save(program, str(path))
    args = ["evaluate", "--model", path, "--card", model / "card.json"]
    result = cli(*args, "--data", export_site.manifest, "--device", "cpu", code=1)
    line = cli.one_line_error(result)
    assert f"error: {path}: the model takes a batch of 1 image(s) but not of 2" in line, line
    assert "dynamic batch dimension" in line


# --- class 8: files that are not ONNX ---------------------------------------------------------


def _not_onnx(export_site, folder: Path, kind: str) -> Path:
    path = folder / "model.onnx"
    good = (export_site.bundles[None] / "model.onnx").read_bytes()
    path.write_bytes(good[: len(good) // 2] if kind == "truncated" else b"no model here\n")
    return path


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_validate_onnx_that_is_not_onnx(cli, export_site, tmp_path, kind):
    bad = _not_onnx(export_site, tmp_path, kind)
    gates = tmp_path / "gates.yaml"
    gates.write_text("gates:\n  - {metric: parity_label_agreement, at_least: 1.0}\n")
    model, out = export_site.models[0], tmp_path / "report"
    args = ["validate", model, "--original", model, "--data", export_site.manifest]
    args += ["--forget", FORGET, "--criteria", gates, "--onnx", bad, "-o", out, "--device", "cpu"]
    line = cli.one_line_error(cli(*args, code=1))
    assert line.startswith(f"error: {bad} is not a readable ONNX model"), line
    assert not out.exists()


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_model_onnx_that_is_not_onnx(cli, export_site, tmp_path, kind):
    bad = _not_onnx(export_site, tmp_path, kind)
    args = ["evaluate", "--model", bad, "--data", export_site.manifest, "--device", "cpu"]
    line = cli.one_line_error(cli(*args, code=1))
    assert line.startswith(f"error: {bad} is named .onnx so it should be an ONNX model"), line


# --- hints ------------------------------------------------------------------------------------


def test_hints_name_the_arch_flag(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "weights.safetensors"
    save_file(build(ModelCard(**GOOD)).state_dict(), str(weights))
    with pytest.raises(ModelError) as caught:
        load_model(weights)
    assert "or pass arch" in str(caught.value), caught.value  # the keyword; the CLI: --arch
    package = Path(revise.__file__).parent
    wrong = [str(p) for p in package.rglob("*.py") if "--architecture" in p.read_text()]
    assert wrong == [], "hints name a flag revise does not have"
