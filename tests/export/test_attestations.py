"""The bundle's attestations (an in-toto Statement of the revision and a CycloneDX 1.6 ML-BOM)
and its ONNX metadata: real bundles from `revise export` + `revise validate` (tests/export_site.py),
the BOM checked with CycloneDX's own JSON schema (cyclonedx-python-lib, offline), the statement
with in-toto's own bindings, `revise verify` on real signatures; and a bundle written before the
``com.revise.`` namespace and the attestations still signs, verifies and loads."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest
from clirunner import describe, invoke

from revise._io.outputs import REPORT_JSON
from revise._validation_record import ValidationReport
from revise.errors import DataError
from revise.export.attestations import PREDICATE_TYPE, check_attestations, subject_files
from revise.export.keys import generate_keys
from revise.export.manifest import BOM_FILE, STATEMENT_FILE, UNLISTED
from revise.export.onnx_file import read_metadata
from revise.export.onnx_metadata import IMAGE_VALUES, image_props, read_prop, revise_props
from revise.export.signing import sign_bundle, verify_bundle
from revise.models.card import ModelCard

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bom_problems(bom: dict) -> str | None:
    """CycloneDX's own JSON schema for 1.6 (bundled with cyclonedx-python-lib): None if valid."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom))
    return None if error is None else str(error)


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys/k.key", tmp_path / "keys/k.pub"
    generate_keys(private, public)
    return private, public


# -- the statement --------------------------------------------------------------------------------


@pytest.mark.parametrize("verdict", ["pass", None])
def test_the_statement_attests_every_model_file_with_its_digest(bundle_copy, verdict):
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    bundle = bundle_copy(verdict)
    statement = _json(bundle / STATEMENT_FILE)
    assert statement["_type"] == STATEMENT_TYPE and statement["predicateType"] == PREDICATE_TYPE
    Statement.copy_from_pb(json_format.ParseDict(statement, statement_pb2.Statement())).validate()
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert set(subjects) == {
        "model.onnx", "model.safetensors", "card.json", "triton/demo/1/model.onnx",
    }  # fmt: skip
    assert set(subjects) == set(subject_files(bundle))
    for name, digest in subjects.items():
        assert _sha256(bundle / name) == digest, name
    predicate = statement["predicate"]
    manifest = _json(bundle / "bundle.json")
    assert predicate["bundle"]["weights_sha256"] == manifest["weights_sha256"]
    assert (
        predicate["export"]["variants"]["model.onnx"]["graph_sha256"]
        == (manifest["onnx"]["variants"]["model.onnx"]["graph_sha256"])
    )
    assert predicate["export"]["exporter"] == manifest["onnx"]["variants"]["model.onnx"]["exporter"]
    assert predicate["software"]["onnxruntime"] and predicate["builder"]["id"]
    validation = predicate["validation"]
    if verdict is None:
        assert validation["verdict"] == "not run" and validation["criteria_sha256"] is None
    else:
        assert validation["verdict"] == "pass"
        assert validation["criteria_sha256"] == manifest["validation"]["criteria_sha256"]
        assert validation["report_sha256"] == manifest["validation"]["report_sha256"]
    # exported from a model folder, not a run: no revision to record
    assert predicate["revision"] is None and predicate["base_model"] is None
    # listed and signed like every file, but not bound by the report (they record its verdict)
    assert {STATEMENT_FILE, BOM_FILE} <= set(manifest["files"])
    if verdict is not None:
        validated = _json(bundle / REPORT_JSON)["inputs"]["bundle"]["files"]
        assert STATEMENT_FILE not in validated and BOM_FILE not in validated
        assert "model.onnx" in validated
    summary = check_attestations(bundle)
    assert summary is not None and summary.verdict == (verdict or "not run")


def test_a_failing_verdict_is_attested_as_failing(bundle_copy):
    bundle = bundle_copy("fail")
    validation = _json(bundle / STATEMENT_FILE)["predicate"]["validation"]
    assert validation["verdict"] == "fail" and validation["failed_gates"] == ["impossible"]
    bom = _json(bundle / BOM_FILE)
    properties = {p["name"]: p["value"] for p in bom["metadata"]["component"]["properties"]}
    assert properties["com.revise:validation_verdict"] == "fail"
    assert _bom_problems(bom) is None


# -- the ML-BOM ----------------------------------------------------------------------------------


@pytest.mark.parametrize("verdict", ["pass", None])
def test_the_bom_is_valid_cyclonedx_1_6_with_a_model_card(bundle_copy, verdict):
    bundle = bundle_copy(verdict)
    bom = _json(bundle / BOM_FILE)
    assert _bom_problems(bom) is None
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    model = bom["metadata"]["component"]
    assert model["type"] == "machine-learning-model" and model["name"] == "demo"
    assert model["hashes"] == [{"alg": "SHA-256", "content": _sha256(bundle / "model.onnx")}]
    files = {c["name"]: c["hashes"][0]["content"] for c in bom["components"]}
    assert files == {name: _sha256(bundle / name) for name in subject_files(bundle)}
    card = model["modelCard"]
    parameters = card["modelParameters"]
    assert (
        parameters["task"] == "classification" and parameters["architectureFamily"] == "small_cnn"
    )
    assert "(batch, 1, 8, 8)" in parameters["inputs"][0]["format"]
    assert parameters["outputs"][0]["format"].startswith("logits: float32 tensor (batch, 10)")
    assert card["considerations"]["technicalLimitations"]
    if verdict is None:
        assert "quantitativeAnalysis" not in card  # nothing measured
        assert bom["version"] == 1
        return
    report = _json(bundle / REPORT_JSON)
    metrics = card["quantitativeAnalysis"]["performanceMetrics"]
    accuracy = {m["slice"]: m for m in metrics if m["type"] == "accuracy"}
    measured = report["accuracy"]["candidate"]
    assert len(accuracy) == len(measured)
    retain = accuracy["retain set (trained on, outside it)"]
    assert float(retain["value"]) == pytest.approx(measured["retain"]["value"], abs=1e-4)
    assert float(retain["confidenceInterval"]["lowerBound"]) <= float(retain["value"])
    assert bom["version"] == 2  # rewritten when the report was attached


@pytest.mark.parametrize(
    "break_it",
    [
        lambda bom: bom["metadata"]["component"].update(type="ml-model"),
        lambda bom: bom["metadata"]["component"]["hashes"][0].update(alg="SHA256"),
        lambda bom: bom["metadata"]["component"]["modelCard"]["modelParameters"].update(task=5),
        lambda bom: bom["metadata"]["component"]["modelCard"].update(performance=[]),
        lambda bom: bom.update(serialNumber="not-a-urn"),
    ],
    ids=["component type", "hash algorithm", "task", "unknown key", "serial number"],
)
def test_the_schema_check_catches_a_broken_bom(bundle_copy, break_it):
    bom = _json(bundle_copy("pass") / BOM_FILE)
    broken = copy.deepcopy(bom)
    break_it(broken)
    assert _bom_problems(bom) is None and _bom_problems(broken) is not None


def test_the_bom_keeps_its_serial_number_when_the_report_is_attached(export_site):
    exported = _json(export_site.bundles[None] / BOM_FILE)
    validated = _json(export_site.bundles["pass"] / BOM_FILE)
    assert exported["serialNumber"] == validated["serialNumber"]
    assert (exported["version"], validated["version"]) == (1, 2)


# -- revise verify -------------------------------------------------------------------------------


def test_verify_prints_the_attestations_summary(bundle_copy, keys):
    bundle = bundle_copy("pass")
    sign_bundle(bundle, keys[0])
    result = invoke("verify", bundle, "--pub", keys[1], code=0)
    lines = result.stdout.splitlines()
    listed = _json(bundle / "bundle.json")["files"]  # and bundle.json, signing.json
    assert lines[0] == f"OK: {len(listed) + 2} files verified", describe(result)
    statement = next(line for line in lines if line.startswith("attestations: "))
    assert PREDICATE_TYPE in statement and "4 subjects" in statement
    assert "each digest matches the signed file" in statement
    assert "verdict pass" in result.stdout and "method none (exported as given)" in result.stdout
    onnx_digest = _sha256(bundle / "model.onnx")
    assert "ML-BOM (CycloneDX 1.6): demo " in result.stdout
    assert f"sha256 {onnx_digest[:16]}... (model.onnx)" in result.stdout
    verified = verify_bundle(bundle, keys[1])
    assert verified.ok and verified.attestations is not None
    assert verified.attestations.sha256 == onnx_digest


@pytest.mark.parametrize("name", [STATEMENT_FILE, BOM_FILE])
def test_verify_fails_on_a_tampered_attestation(bundle_copy, keys, name):
    bundle = bundle_copy("pass")
    sign_bundle(bundle, keys[0])
    data = _json(bundle / name)
    if name == STATEMENT_FILE:
        data["predicate"]["validation"]["verdict"] = "pass (checked twice)"
    else:
        data["metadata"]["component"]["name"] = "another model"
    (bundle / name).write_text(json.dumps(data, indent=2))
    result = invoke("verify", bundle, "--pub", keys[1], code=1)
    assert result.stdout.startswith("FAILED: "), describe(result)
    assert f"changed: {name}" in result.stdout.splitlines()
    assert not verify_bundle(bundle, keys[1]).ok


def test_sign_refuses_attestations_that_do_not_describe_the_files(bundle_copy, keys):
    """A statement edited and listed again in bundle.json: the files listed match, but the
    statement attests another model.onnx than the bundle's."""
    bundle = bundle_copy("pass")
    statement = _json(bundle / STATEMENT_FILE)
    subject = next(s for s in statement["subject"] if s["name"] == "model.onnx")
    subject["digest"]["sha256"] = "0" * 64
    (bundle / STATEMENT_FILE).write_text(json.dumps(statement))
    _relist(bundle, STATEMENT_FILE)
    with pytest.raises(DataError, match=r"attests model\.onnx with sha256 000000000000"):
        sign_bundle(bundle, keys[0])


def _relist(bundle: Path, *names: str) -> None:
    manifest = _json(bundle / "bundle.json")
    for name in names:
        manifest["files"][name] = {
            "sha256": _sha256(bundle / name),
            "bytes": (bundle / name).stat().st_size,
        }
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))


# -- the ONNX metadata ---------------------------------------------------------------------------


def _card(**fields) -> ModelCard:
    return ModelCard(**{"architecture": "small_cnn", "num_classes": 2, **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"Image.BitmapPixelFormat": "Gray8", "Image.ColorSpaceGamma": "Linear",
              "Image.NominalPixelRange": "Normalized_0_1"}),
        ({"in_channels": 3, "pixel_range": (0, 255), "mean": (0.5,)},
         {"Image.BitmapPixelFormat": "Rgb8", "Image.ColorSpaceGamma": "SRGB",
          "Image.NominalPixelRange": "NominalRange_0_255"}),
        ({"in_channels": 4, "pixel_range": (-1, 1)},
         {"Image.BitmapPixelFormat": "Rgba8", "Image.ColorSpaceGamma": "SRGB",
          "Image.NominalPixelRange": "Normalized_1_1"}),
        ({"pixel_range": (16, 235)},
         {"Image.BitmapPixelFormat": "Gray8", "Image.ColorSpaceGamma": "Linear",
          "Image.NominalPixelRange": "NominalRange_16_235"}),
        # no value of the spec fits: the key is left out, not guessed
        ({"pixel_range": (0, 4095)},
         {"Image.BitmapPixelFormat": "Gray8", "Image.ColorSpaceGamma": "Linear"}),
        ({"in_channels": 2}, {"Image.NominalPixelRange": "Normalized_0_1"}),
    ],
)  # fmt: skip
def test_image_metadata_follows_the_card(fields, expected):
    assert image_props(_card(**fields)) == expected


def test_image_metadata_values_are_the_onnx_specs():
    """The spec's values (onnx/docs/MetadataProps.md), as onnxconverter-common lists them too."""
    from onnxconverter_common.metadata_props import KNOWN_METADATA_PROPS

    for key, values in IMAGE_VALUES.items():
        assert sorted(v.lower() for v in values) == sorted(KNOWN_METADATA_PROPS[key]), key


def test_the_bundles_onnx_files_carry_image_metadata_and_namespaced_keys(bundle_copy):
    bundle = bundle_copy("pass")
    for name in ("model.onnx", "triton/demo/1/model.onnx"):
        props = read_metadata(bundle / name)
        for key, values in IMAGE_VALUES.items():
            assert props[key] in values, (name, key)
        assert props["Image.BitmapPixelFormat"] == "Gray8"
        assert props["Image.NominalPixelRange"] == "Normalized_0_1"
        ours = [k for k in props if not k.startswith("Image.")]
        assert ours and all(k.startswith("com.revise.") for k in ours), ours
        assert props["com.revise.validation_verdict"] == "pass"
        assert json.loads(props["com.revise.card"])["in_channels"] == 1
    manifest = _json(bundle / "bundle.json")
    assert all(k.startswith("com.revise.") for k in manifest["provenance"])


def test_readers_accept_the_legacy_keys():
    legacy = {"revise.weights_sha256": "a" * 64, "revise.method": "psg", "site": "x"}
    assert read_prop(legacy, "weights_sha256") == "a" * 64
    both = {**legacy, "com.revise.method": "scrub"}
    assert read_prop(both, "method") == "scrub"  # the namespaced key wins
    assert revise_props(both) == {"weights_sha256": "a" * 64, "method": "scrub"}
    assert read_prop({"site": "x"}, "method") is None


# -- a bundle from before the namespace and the attestations ---------------------------------------


def _as_legacy(bundle: Path) -> None:
    """The bundle as revise wrote it before: provenance keys ``revise.*``, no image metadata,
    no attestations; its report and bundle.json record those files."""
    from revise.export.bundle_validation import validation_record, validation_summary

    for path in sorted(bundle.rglob("*.onnx")):
        proto = onnx.load(str(path))
        props = {p.key: p.value for p in proto.metadata_props if not p.key.startswith("Image.")}
        del proto.metadata_props[:]
        for key in sorted(props):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key.replace("com.revise.", "revise.", 1), props[key]
        onnx.save(proto, str(path))
    shutil.rmtree(bundle / "attestations")
    manifest = _json(bundle / "bundle.json")
    manifest["provenance"] = {
        k.replace("com.revise.", "revise.", 1): v for k, v in manifest["provenance"].items()
    }
    if (bundle / REPORT_JSON).is_file():
        report = _json(bundle / REPORT_JSON)
        report["inputs"]["bundle"].update(
            validation_record(bundle), path=report["inputs"]["bundle"]["path"]
        )
        (bundle / REPORT_JSON).write_text(json.dumps(report, indent=2))
        typed = ValidationReport.model_validate(report)
        manifest["validation"] = validation_summary(typed, bundle / REPORT_JSON).to_json()
    manifest["files"] = {
        p.relative_to(bundle).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.relative_to(bundle).as_posix() not in UNLISTED
    }
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))


def test_a_bundle_with_the_legacy_keys_still_signs_verifies_and_loads(bundle_copy, keys):
    from revise.export.bundle import load_bundle
    from revise.models.io import load_model, weights_digest

    bundle = bundle_copy("pass")
    _as_legacy(bundle)
    props = read_metadata(bundle / "model.onnx")
    assert "revise.validation_verdict" in props and not any(k.startswith("com.") for k in props)
    assert check_attestations(bundle) is None
    record = sign_bundle(bundle, keys[0])  # bound to the report: no --allow-unvalidated
    assert record["validation_verdict"] == "pass"
    result = invoke("verify", bundle, "--pub", keys[1], code=0)
    listed = _json(bundle / "bundle.json")["files"]
    assert not any(name.startswith("attestations/") for name in listed)
    assert f"OK: {len(listed) + 2} files verified" in result.stdout
    assert "attestations: none (the bundle predates them" in result.stdout
    assert load_bundle(bundle).verdict == "pass"
    manifest = _json(bundle / "bundle.json")
    assert weights_digest(load_model(bundle).module) == manifest["weights_sha256"]


def test_a_legacy_verdict_rewritten_in_the_metadata_is_still_refused(bundle_copy, keys):
    from revise.export.onnx_file import set_metadata

    bundle = bundle_copy("fail")
    _as_legacy(bundle)
    set_metadata(bundle / "model.onnx", {"com.revise.validation_verdict": "pass"})
    _relist(bundle, "model.onnx")
    with pytest.raises(DataError, match="says validation verdict 'pass'"):
        sign_bundle(bundle, keys[0], allow_unvalidated=True)


def test_validating_a_legacy_bundle_moves_its_verdict_to_the_namespace(
    bundle_copy, export_site, keys, tmp_path
):
    bundle = bundle_copy(None)
    _as_legacy(bundle)
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("gates:\n  - {metric: parity_label_agreement, at_least: 1.0}\n")
    invoke(
        "validate", bundle, "--original", export_site.models[0], "--data", export_site.manifest,
        "--forget", "label == 0", "--criteria", criteria, "-o", tmp_path / "report",
        "--device", "cpu", code=0,
    )  # fmt: skip
    props = read_metadata(bundle / "model.onnx")
    assert props["com.revise.validation_verdict"] == "pass"
    assert "revise.validation_verdict" not in props  # the legacy copy gave way
    assert read_prop(props, "weights_sha256") == props["revise.weights_sha256"]  # kept as was
    summary = check_attestations(bundle)  # written with the report
    assert summary is not None and summary.verdict == "pass"
    sign_bundle(bundle, keys[0])
    verified = verify_bundle(bundle, keys[1])
    assert verified.ok and verified.attestations is not None
