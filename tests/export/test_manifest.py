"""bundle.json as a typed record (revise.export.manifest): a manifest of the shape revise has
always written reads and writes back unchanged, byte for byte; a damaged one is refused naming
the file and each wrong field (a ModelError when a bundle is loaded, the DataError of the other
bundle checks when one is signed)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from revise.errors import DataError, ModelError
from revise.export.bundle import load_bundle
from revise.export.manifest import (
    BundleManifest,
    FileEntry,
    OnnxEntry,
    ValidationSummary,
    read_bundle_manifest,
)

PARITY = {
    "n": 100,
    "max_abs_diff": 3.337860107421875e-06,
    "max_rel_diff": 0.0001220703125,
    "label_agreement": 1.0,
    "passed": True,
    "providers": ["CPUExecutionProvider"],
    "rtol": 0.001,
    "atol": 1e-05,
}
# A bundle.json as `revise export --fp16 --validation` (then `revise validate BUNDLE`) writes it.
EXISTING = {
    "schema": "revise.bundle/1",
    "name": "demo_digits",
    "created_utc": "2025-01-02T03:04:05Z",
    "weights_sha256": "a" * 64,
    "provenance": {
        "revise.weights_sha256": "a" * 64,
        "revise.source_format": "safetensors",
        "revise.versions": '{"onnx": "1.17.0", "revise": "0.1.0"}',
        "revise.method": "scrub",
        "revise.base_model_digest": "b" * 64,
        "revise.forget_selection": 'device == "ScannerB"',
        "revise.forget_selection_sha256": "c" * 64,
        "revise.forget_set_digest": "d" * 64,
        "revise.validation_verdict": "fail",
        "revise.criteria_sha256": "e" * 64,
    },
    "validation": {
        "verdict": "fail",
        "summary": "3 of 4 gates passed",
        "criteria_sha256": "e" * 64,
        "report_sha256": "f" * 64,
        "failed_gates": ["forget_accuracy"],
    },
    "onnx": {
        "input": "input",
        "output": "logits",
        "variants": {
            "model.onnx": {
                "precision": "fp32",
                "graph_sha256": "1" * 64,
                "opset": 18,
                "exporter": "dynamo",
                "parity": PARITY,
            },
            "model.fp16.onnx": {
                "precision": "fp16",
                "graph_sha256": "2" * 64,
                "parity": {**PARITY, "rtol": 0.0, "atol": 0.1, "max_abs_diff": 0.0123},
                "tolerance": {"max_abs_diff": 0.1, "min_label_agreement": 0.99},
            },
        },
    },
    "triton": {"repository": "triton", "model": "demo_digits", "version": 1},
    "files": {
        "card.json": {"sha256": "3" * 64, "bytes": 612},
        "model.onnx": {"sha256": "4" * 64, "bytes": 21034},
        "model.safetensors": {"sha256": "5" * 64, "bytes": 20840},
        "triton/demo_digits/1/model.onnx": {"sha256": "6" * 64, "bytes": 21034},
    },
}


def _as_written(data: object) -> str:
    """A JSON object as revise writes it (revise._io.atomic.write_json_atomic)."""
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def _bundle(tmp_path: Path, data: object) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir(exist_ok=True)
    text = data if isinstance(data, str) else _as_written(data)
    (folder / "bundle.json").write_text(text)
    return folder


@pytest.mark.parametrize(
    "data",
    [
        EXISTING,
        {**EXISTING, "validation": None},  # exported without a report: null, not left out
        {k: v for k, v in EXISTING.items() if k != "files"},  # before bundles listed files
        {**EXISTING, "future": {"kept": [1, 2]}},  # a key of a version to come
    ],
    ids=["validated", "not validated", "no files", "unknown key"],
)
def test_an_existing_manifest_round_trips_unchanged(tmp_path, data):
    folder = _bundle(tmp_path, data)
    manifest = read_bundle_manifest(folder)
    assert manifest.to_json() == data
    assert _as_written(manifest.to_json()) == (folder / "bundle.json").read_text()
    assert "validation" in manifest.to_json()  # null stays null


def test_readers_see_the_manifest_as_attributes(tmp_path):
    manifest = read_bundle_manifest(_bundle(tmp_path, EXISTING))
    assert manifest.schema_ == "revise.bundle/1" and manifest.verdict == "fail"
    assert manifest.validation is not None
    assert manifest.validation.failed_gates == ["forget_accuracy"]
    fp32 = manifest.onnx.variants["model.onnx"]
    assert fp32.parity is not None and fp32.parity.n == 100 and fp32.opset == 18
    assert manifest.onnx.variants["model.fp16.onnx"].tolerance == {
        "max_abs_diff": 0.1,
        "min_label_agreement": 0.99,
    }
    assert manifest.triton is not None and manifest.triton.version == 1
    assert manifest.files is not None and manifest.files["card.json"].bytes == 612
    unvalidated = read_bundle_manifest(_bundle(tmp_path, {**EXISTING, "validation": None}))
    assert unvalidated.verdict is None and "validation" in unvalidated.model_fields_set


def test_a_manifest_built_in_python_writes_the_keys_given():
    manifest = BundleManifest(
        schema="revise.bundle/1",
        name="n",
        created_utc="2025-01-02T03:04:05Z",
        weights_sha256="a" * 64,
        provenance={},
        validation=None,
        onnx=OnnxEntry(input="input", output="logits", variants={}),
    )
    out = manifest.to_json()
    assert out["schema"] == "revise.bundle/1" and "schema_" not in out
    assert out["validation"] is None and "triton" not in out and "files" not in out
    manifest.files = {"card.json": FileEntry(sha256="3" * 64, bytes=1)}
    manifest.validation = ValidationSummary(verdict="pass", failed_gates=[])
    out = manifest.to_json()
    assert out["files"] == {"card.json": {"sha256": "3" * 64, "bytes": 1}}
    assert out["validation"] == {"verdict": "pass", "failed_gates": []}


def _edited(edit: Callable[[dict], object]) -> dict:
    """EXISTING with ``edit`` done to a copy of it."""
    data = copy.deepcopy(EXISTING)
    edit(data)
    return data


DAMAGED = {  # case: (the bundle.json, what the refusal says)
    "weights digest a number": (
        _edited(lambda m: m.update(weights_sha256=12)),
        "weights_sha256 must be text, not 12",
    ),
    "file size not a number": (
        _edited(lambda m: m["files"]["model.onnx"].update(bytes="big")),
        "files.model.onnx.bytes must be a number, not 'big'",
    ),
    "files a list": (
        _edited(lambda m: m.update(files=["card.json"])),
        "files must be a mapping of names to values",
    ),
    "two fields wrong": (
        _edited(lambda m: (m.update(validation="pass"), m["triton"].update(version="one"))),
        "2 problems: (1) validation must be a mapping of names to values, not 'pass'; "
        "(2) triton.version must be a number, not 'one'",
    ),
    "onnx missing": ({k: v for k, v in EXISTING.items() if k != "onnx"}, "missing onnx"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_manifest_is_refused_naming_the_file_and_field(tmp_path, case):
    data, said = DAMAGED[case]
    folder = _bundle(tmp_path, data)
    path = folder / "bundle.json"
    with pytest.raises(ModelError) as refused:
        read_bundle_manifest(folder)
    assert str(refused.value).startswith(f"{path} is not a valid bundle manifest: {said}")
    assert refused.value.hint == "re-export the bundle"
    with pytest.raises(ModelError, match="is not a valid bundle manifest"):
        load_bundle(folder)  # a bundle is read through the manifest only


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[1, 2]", "is not a JSON object (it holds a list)"),
        ('"bundle"', "is not a JSON object (it holds a str)"),
        ("{not json", "is not valid JSON"),
        (_as_written({**EXISTING, "schema": "revise.bundle/2"}), "has schema 'revise.bundle/2'"),
        (_as_written({k: v for k, v in EXISTING.items() if k != "schema"}), "has schema None"),
    ],
    ids=["a list", "a string", "not JSON", "another schema", "no schema"],
)
def test_a_manifest_that_is_no_bundle_manifest_is_refused(tmp_path, text, said):
    folder = _bundle(tmp_path, text)
    with pytest.raises(ModelError) as refused:
        read_bundle_manifest(folder)
    assert str(refused.value).startswith(f"{folder / 'bundle.json'} {said}")


def test_the_bundle_checks_refuse_a_damaged_manifest_as_data(tmp_path):
    """Signing reads bundle.json through the same record, refusing as the other checks do."""
    from revise.export.bundle_checks import check_contents, validation_verdict

    folder = _bundle(tmp_path, _edited(lambda m: m.update(weights_sha256=12)))
    for check in (validation_verdict, check_contents):
        with pytest.raises(DataError, match=r"bundle\.json is not a valid bundle manifest: "):
            check(folder)
    assert not issubclass(DataError, ModelError)


def test_an_exported_bundle_has_the_manifest_shape_it_always_had(bundle_copy):
    """What `revise export` + `revise validate BUNDLE` write reads back unchanged, with the keys
    bundle.json has had since revise.bundle/1."""
    bundle = bundle_copy("pass")
    text = (bundle / "bundle.json").read_text()
    manifest = read_bundle_manifest(bundle)
    assert _as_written(manifest.to_json()) == text
    data = json.loads(text)
    assert sorted(data) == sorted(EXISTING)
    assert sorted(data["validation"]) == sorted(EXISTING["validation"])
    assert sorted(data["onnx"]["variants"]["model.onnx"]) == sorted(
        EXISTING["onnx"]["variants"]["model.onnx"]
    )
    assert sorted(data["onnx"]["variants"]["model.onnx"]["parity"]) == sorted(PARITY)
    assert sorted(data["triton"]) == sorted(EXISTING["triton"])
    assert all(sorted(entry) == ["bytes", "sha256"] for entry in data["files"].values())
    assert load_bundle(bundle).manifest == manifest
