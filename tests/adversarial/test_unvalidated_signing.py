"""Signing only what was validated (issue 13, class 5): real bundles (tests/export_site.py),
real keys, the real `revise sign`.

Probes kept here - a validated bundle edited before signing, with bundle.json's sha256 (and the
ONNX graph digest) updated to match, as a forger would:
* card.json's normalisation, Triton's labels.txt (two labels swapped) and config.pbtxt, the card
  in model.onnx's or the Triton copy's metadata, the safetensors header, the fp16 variant's
  weights; a model.onnx.data added; labels.txt dropped. `revise sign` must refuse (exit 1, one
  `error:` line naming the file), write no signature, and --allow-unvalidated must not skip it.
* the validation verdict in the ONNX metadata rewritten to 'pass' on a failed bundle, or
  bundle.json's validation summary rewritten (no failed gates; the report digest removed, which
  skipped the report check): refused.
* a report of the model folder (`export --validation`) never saw the bundle's card.json or Triton
  files: not signed as "validation: pass" (exit 2); --allow-unvalidated signs it as not validated.
* `revise validate BUNDLE --card other.json` would validate another card than the one shipped:
  refused (exit 2) before any report is attached.
Before the fix every one of these was signed "validation: pass" (or "fail" as asked).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from clirunner import describe, invoke
from export_site import validate_args

from revise._io.digests import sha256_file
from revise.errors import DataError
from revise.export.keys import generate_keys
from revise.export.manifest import SIGNATURE_NAME, SIGNING_RECORD
from revise.export.signing import sign_bundle


@pytest.fixture
def key(tmp_path) -> Path:
    private = tmp_path / "keys/revise-signing.key"
    generate_keys(private, private.with_suffix(".pub"))
    return private


@pytest.fixture(scope="module")
def fp16_bundle(export_site, tmp_path_factory, isolated_env) -> Path:
    """A bundle with model.fp16.onnx, validated as a bundle (verdict pass)."""
    root = tmp_path_factory.mktemp("fp16-bundle")
    bundle = root / "bundle"
    with isolated_env():
        invoke(
            "export", export_site.models[0], "-o", bundle, "--data", export_site.manifest,
            "--name", "demo", "--fp16", code=0,
        )  # fmt: skip
        args = validate_args(
            bundle, export_site.manifest, export_site.models[0], export_site.root / "pass.yaml",
            root / "report",
        )  # fmt: skip
        invoke(*args, code=0)
    return bundle


def _relist(bundle: Path, *names: str) -> None:
    """Record the current sha256 of ``names`` in bundle.json (drop those that are gone), and the
    current graph digest of every ONNX variant: bundle.json consistent with the edit."""
    from revise.export.onnx_file import graph_digest

    manifest = json.loads((bundle / "bundle.json").read_text())
    for name in names:
        if (bundle / name).is_file():
            size = (bundle / name).stat().st_size
            manifest["files"][name] = {"sha256": sha256_file(bundle / name), "bytes": size}
        else:
            del manifest["files"][name]
    for name, variant in manifest["onnx"]["variants"].items():
        variant["graph_sha256"] = graph_digest(bundle / name)
    (bundle / "bundle.json").write_text(json.dumps(manifest))


def _edit_text(name: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(bundle: Path) -> None:
        text = (bundle / name).read_text()
        assert old in text
        (bundle / name).write_text(text.replace(old, new, 1))

    return edit


def _edit_card_metadata(name: str) -> Callable[[Path], None]:
    def edit(bundle: Path) -> None:
        from revise.export.onnx_file import read_metadata, set_metadata

        card = json.loads(read_metadata(bundle / name)["com.revise.card"])
        set_metadata(bundle / name, {"com.revise.card": json.dumps({**card, "mean": [0.4]})})

    return edit


def _edit_safetensors_header(bundle: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = bundle / "model.safetensors"
    save_file(load_file(str(path)), str(path), metadata={"format": "pt", "note": "edited"})


def _nudge_fp16_weights(bundle: Path) -> None:
    """Change one weight of the fp16 graph; its metadata (the weights stamp) stays."""
    import onnx
    from onnx import numpy_helper

    path = bundle / "model.fp16.onnx"
    proto = onnx.load(str(path))
    tensor = max(proto.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] = values.flat[0] + 1
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(proto, str(path))


def _add_external_data(bundle: Path) -> None:
    (bundle / "model.onnx.data").write_bytes(b"\0" * 64)


def _drop_labels(bundle: Path) -> None:
    (bundle / "triton/demo/labels.txt").unlink()


CHANGED = "changed after validation"
LABELS = "triton/demo/labels.txt"
EDITS = {  # case: (file, edit, what the error says of the file)
    "card.json": ("card.json", _edit_text("card.json", "0.5", "0.4"), CHANGED),
    "labels.txt": (LABELS, _edit_text(LABELS, "0\n1\n", "1\n0\n"), CHANGED),
    "config.pbtxt": (
        "triton/demo/config.pbtxt",
        _edit_text("triton/demo/config.pbtxt", "max_batch_size: 64", "max_batch_size: 1"),
        CHANGED,
    ),
    "model.onnx metadata": ("model.onnx", _edit_card_metadata("model.onnx"), CHANGED),
    "triton model.onnx metadata": (
        "triton/demo/1/model.onnx",
        _edit_card_metadata("triton/demo/1/model.onnx"),
        CHANGED,
    ),
    "safetensors header": ("model.safetensors", _edit_safetensors_header, CHANGED),
    "model.onnx.data added": ("model.onnx.data", _add_external_data, "was added after validation"),
    "labels.txt dropped": (LABELS, _drop_labels, "was validated but is missing"),
    "fp16 weights": ("model.fp16.onnx", _nudge_fp16_weights, CHANGED),
}


def _refused(result, name: str, why: str, code: int = 1) -> str:
    """The one `error:` line of a refused `revise sign`, which names ``name``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code and len(lines) == 1, describe(result)
    assert lines[0].startswith("error: ") and "validation: pass" not in result.stdout
    assert re.search(rf"/{re.escape(name)} {why}", lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", EDITS)
def test_sign_refuses_a_file_edited_after_validation(bundle_copy, fp16_bundle, tmp_path, key, case):
    name, edit, why = EDITS[case]
    if name == "model.fp16.onnx":
        bundle = Path(shutil.copytree(fp16_bundle, tmp_path / "bundle"))
    else:
        bundle = bundle_copy("pass")
    edit(bundle)
    _relist(bundle, name)
    line = _refused(invoke("sign", bundle, "--key", key), name, why)
    assert "revise validate" in line  # what to do: validate the bundle again
    assert not (bundle / SIGNATURE_NAME).exists() and not (bundle / SIGNING_RECORD).exists()
    with pytest.raises(DataError, match=why):  # --allow-unvalidated does not sign it either
        sign_bundle(bundle, key, allow_unvalidated=True)


def test_sign_refuses_a_verdict_rewritten_in_the_onnx_metadata(bundle_copy, key):
    from revise.export.onnx_file import set_metadata

    bundle = bundle_copy("fail")
    set_metadata(bundle / "model.onnx", {"revise.validation_verdict": "pass"})
    _relist(bundle, "model.onnx")
    result = invoke("sign", bundle, "--key", key, "--allow-unvalidated")
    line = _refused(result, "model.onnx", "says validation verdict 'pass'")
    assert "revision_report.json says 'fail'" in line
    assert not (bundle / SIGNATURE_NAME).exists()


def _summary_says_passed(validation: dict) -> None:
    validation.update(failed_gates=[], summary="1 of 1 gates passed")


def _summary_unbound(validation: dict) -> None:
    validation["report_sha256"] = None  # was: the check skipped; then the report is free to edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_summary_says_passed, r"bundle\.json records validation summary '1 of 1 gates passed'"),
        (_summary_unbound, r"revision_report\.json is not the report .*bundle\.json records"),
    ],
    ids=["no failed gates", "report digest removed"],
)
def test_sign_refuses_a_validation_summary_edited_in_bundle_json(bundle_copy, key, edit, message):
    bundle = bundle_copy("fail")
    manifest = json.loads((bundle / "bundle.json").read_text())
    edit(manifest["validation"])
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    result = invoke("sign", bundle, "--key", key, "--allow-unvalidated")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, describe(result)
    assert re.search(message, lines[0]), lines[0]
    assert not (bundle / SIGNATURE_NAME).exists()


def test_an_unedited_validated_bundle_is_still_signed(bundle_copy, fp16_bundle, tmp_path, key):
    for bundle in (bundle_copy("pass"), Path(shutil.copytree(fp16_bundle, tmp_path / "fp16"))):
        result = invoke("sign", bundle, "--key", key, code=0)
        assert "(validation: pass)" in result.stdout


def test_a_report_of_the_model_folder_does_not_validate_the_bundle(export_site, tmp_path, key):
    """`export --validation` of a report on the model folder: that report never saw the
    bundle's card.json, Triton files or ONNX metadata."""
    report, bundle = tmp_path / "report", tmp_path / "bundle"
    model = export_site.models[0]
    args = validate_args(model, export_site.manifest, model, export_site.root / "pass.yaml", report)
    invoke(*args, "--onnx", export_site.bundles[None] / "model.onnx", code=0)
    invoke("export", model, "-o", bundle, "--name", "demo", "--validation", report, code=0)
    result = invoke("sign", bundle, "--key", key)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, describe(result)
    assert lines[0].startswith(f"error: refusing to sign {bundle}: its revision_report.json ")
    assert "not this bundle's files" in lines[0] and "revise validate" in lines[0]
    assert not (bundle / SIGNATURE_NAME).exists()
    result = invoke("sign", bundle, "--key", key, "--allow-unvalidated", code=0)
    assert "(validation: not validated, signed with --allow-unvalidated)" in result.stdout
    record = json.loads((bundle / SIGNING_RECORD).read_text())
    assert record["validation_verdict"] is None and record["allow_unvalidated"] is True


def test_validate_refuses_another_card_for_a_bundle(bundle_copy, export_site, tmp_path):
    bundle = bundle_copy(None)
    card = json.loads((bundle / "card.json").read_text())
    other = tmp_path / "other-card.json"
    other.write_text(json.dumps({**card, "mean": [0.4]}))
    before = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    args = validate_args(
        bundle, export_site.manifest, export_site.models[0], export_site.root / "pass.yaml",
        tmp_path / "report",
    )  # fmt: skip
    result = invoke(*args, "--card", other)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, describe(result)
    assert f"error: {bundle} is validated with another card than its card.json" in lines[0]
    assert "drop --card" in lines[0]
    assert {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "report").exists()
