"""Signing and verifying a revision bundle: real EC keys, real model-signing signatures, and
model-signing's own verifier (API and command line) as the independent check."""

from __future__ import annotations

import base64
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import model_signing
import onnx
import pytest
from clirunner import invoke
from cryptography.exceptions import InvalidSignature
from onnx import TensorProto, helper

from revise.errors import DataError, SignatureError, UsageError
from revise.export.signing import (
    SIGNATURE_NAME,
    SIGNING_RECORD,
    generate_keys,
    sign_bundle,
    verify_bundle,
)

WEIGHTS = "ab" * 32


def _tiny_onnx(path: Path) -> None:
    """A real (one Identity node) ONNX model: cheap, and bytes a loader would accept."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "demo", [x], [y])
    onnx.save(helper.make_model(graph), path)


def _write_bundle(folder: Path, verdict: str | None = "pass") -> Path:
    """A small bundle with the files `revise export` writes; ``verdict`` None: not validated."""
    folder.mkdir(parents=True)
    _tiny_onnx(folder / "model.onnx")
    (folder / "triton/demo/1").mkdir(parents=True)
    _tiny_onnx(folder / "triton/demo/1/model.onnx")
    (folder / "triton/demo/config.pbtxt").write_text('name: "demo"\nbackend: "onnxruntime"\n')
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (folder / "card.json").write_text(json.dumps({"arch": "small_cnn", "num_classes": 3}))
    (folder / "run.json").write_text(json.dumps({"method": "psg"}))
    validation = None
    if verdict is not None:
        report = {"verdict": verdict, "models": {"candidate": {"sha256": WEIGHTS}}}
        (folder / "revision_report.json").write_text(json.dumps(report))
        (folder / "report.html").write_text(f"<html><body>{verdict.upper()}</body></html>")
        validation = {"verdict": verdict, "summary": "1 of 1 gates passed"}
    manifest = {"schema": "revise.bundle/1", "weights_sha256": WEIGHTS, "validation": validation}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys/revise-signing.key", tmp_path / "keys/revise-signing.pub"
    generate_keys(private, public)
    return private, public


@pytest.fixture
def bundle(tmp_path) -> Path:
    return _write_bundle(tmp_path / "bundle")


@pytest.fixture
def signed(bundle, keys) -> Path:
    sign_bundle(bundle, keys[0])
    return bundle


def library_verifies(bundle: Path, public: Path) -> bool:
    """model-signing's own Python verifier, told nothing but the key and the signature."""
    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(
            bundle, bundle / SIGNATURE_NAME
        )
    except (ValueError, InvalidSignature):  # a bad signature surfaces as cryptography's error
        return False
    return True


def library_cli(bundle: Path, public: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(bundle),
         "--signature", str(bundle / SIGNATURE_NAME), "--public_key", str(public)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


# -- the happy path ---------------------------------------------------------------------------


def test_sign_and_verify_api(bundle, keys):
    private, public = keys
    record = sign_bundle(bundle, private)
    assert record["schema"] == "revise.signing/1"
    assert record["validation_verdict"] == "pass" and record["allow_unvalidated"] is False
    assert record["tool"].startswith("revise ") and "model-signing 1.1" in record["tool"]
    assert json.loads((bundle / SIGNING_RECORD).read_text()) == record
    result = verify_bundle(bundle, public)
    assert result.ok, result.message
    files = [p for p in bundle.rglob("*") if p.is_file() and p.name != SIGNATURE_NAME]
    assert result.files == len(files) == 10  # every file, sub-folders and signing.json too
    assert result.record == record
    assert (result.changed, result.added, result.removed) == ([], [], [])


def test_key_files(keys):
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        generate_keys(private, public)
    old = private.read_bytes()
    generate_keys(private, public, overwrite=True)
    assert private.read_bytes() != old and stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(UsageError, match="P-256 or P-384"):
        generate_keys(private.with_name("x.key"), public.with_name("x.pub"), curve="P-521")


def test_cli_keygen_sign_verify(bundle, tmp_path):
    result = invoke("keygen", "-o", tmp_path / "keys")
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "keys/revise-signing.key", tmp_path / "keys/revise-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert invoke("keygen", "-o", tmp_path / "keys").exit_code == 2  # no silent overwrite
    result = invoke("sign", bundle, "--key", private)
    assert result.exit_code == 0, result.output
    assert "validation: pass" in result.stdout
    result = invoke("verify", bundle, "--pub", public)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "OK: 10 files verified"


def test_model_signing_verifies_a_revise_signature(signed, keys):
    public = keys[1]
    assert library_verifies(signed, public)
    done = library_cli(signed, public)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stderr
    flip_last_byte(signed / "model.onnx")
    assert not library_verifies(signed, public)
    done = library_cli(signed, public)
    assert done.returncode == 1 and "model.onnx" in done.stderr


# -- tampering --------------------------------------------------------------------------------


def _change(name: str):
    return lambda bundle: flip_last_byte(bundle / name)


def _add(bundle: Path) -> None:
    (bundle / "triton/demo/1/extra.onnx").write_bytes(b"not a model")


def _remove(bundle: Path) -> None:
    (bundle / "card.json").unlink()


def _edit_record(bundle: Path) -> None:
    record = json.loads((bundle / SIGNING_RECORD).read_text())
    record["validation_verdict"] = "pass"
    record["allow_unvalidated"] = True
    (bundle / SIGNING_RECORD).write_text(json.dumps(record))


TAMPER = {
    "model.onnx": (_change("model.onnx"), "changed: model.onnx"),
    "report": (_change("revision_report.json"), "changed: revision_report.json"),
    "sub-folder": (
        _change("triton/demo/1/model.onnx"),
        "changed: triton/demo/1/model.onnx",
    ),
    "signing.json": (_edit_record, "changed: signing.json"),
    "added": (_add, "added: triton/demo/1/extra.onnx"),
    "removed": (_remove, "removed: card.json"),
}


@pytest.mark.parametrize("case", TAMPER)
def test_tampering_is_named(signed, keys, case):
    tamper, line = TAMPER[case]
    tamper(signed)
    result = verify_bundle(signed, keys[1])
    assert not result.ok
    kind, name = line.split(": ")
    assert getattr(result, kind) == [name]
    assert sum(map(len, (result.changed, result.added, result.removed))) == 1
    cli = invoke("verify", signed, "--pub", keys[1])
    assert cli.exit_code == 1
    assert cli.stdout.splitlines()[0].startswith("FAILED: ")
    assert cli.stdout.splitlines()[1:] == [line]
    assert not library_verifies(signed, keys[1])  # model-signing agrees it was tampered with


def test_file_model_signing_never_hashes_is_still_reported(signed, keys):
    """model-signing always skips top-level .git* paths; revise does not let one in unseen."""
    (signed / ".gitignore").write_text("*\n")
    assert library_verifies(signed, keys[1])
    result = verify_bundle(signed, keys[1])
    assert not result.ok and result.added == [".gitignore"]
    with pytest.raises(SignatureError, match="never covers"):
        sign_bundle(signed, keys[0])


def test_wrong_public_key(signed, tmp_path):
    other = tmp_path / "other"
    generate_keys(other / "k.key", other / "k.pub")
    result = verify_bundle(signed, other / "k.pub")
    assert not result.ok and "does not match this key" in result.message
    assert not library_verifies(signed, other / "k.pub")
    cli = invoke("verify", signed, "--pub", other / "k.pub")
    assert cli.exit_code == 1 and "does not match this key" in cli.stdout


def test_altered_signature_file(signed, keys):
    sig = json.loads((signed / SIGNATURE_NAME).read_text())
    entry = sig["dsseEnvelope"]["signatures"][0]
    raw = bytearray(base64.b64decode(entry["sig"]))
    raw[-1] ^= 0x01
    entry["sig"] = base64.b64encode(bytes(raw)).decode()
    (signed / SIGNATURE_NAME).write_text(json.dumps(sig))
    result = verify_bundle(signed, keys[1])
    assert not result.ok and "was altered" in result.message
    assert not library_verifies(signed, keys[1])
    (signed / SIGNATURE_NAME).write_text("{not json")
    result = verify_bundle(signed, keys[1])
    assert not result.ok and "is not a model-signing signature" in result.message


def test_unsigned_bundle(bundle, keys):
    result = verify_bundle(bundle, keys[1])
    assert not result.ok and "is not signed" in result.message
    assert invoke("verify", bundle, "--pub", keys[1]).exit_code == 1


def test_resigning_replaces_signature_and_record(signed, keys):
    first = (signed / SIGNATURE_NAME).read_bytes()
    flip_last_byte(signed / "model.onnx")
    record = sign_bundle(signed, keys[0])
    assert (signed / SIGNATURE_NAME).read_bytes() != first
    assert json.loads((signed / SIGNING_RECORD).read_text()) == record
    assert verify_bundle(signed, keys[1]).ok
    assert library_verifies(signed, keys[1])


# -- the validation gate ----------------------------------------------------------------------


def test_refuses_failed_bundle_unless_allowed(tmp_path, keys):
    bundle = _write_bundle(tmp_path / "failed", verdict="fail")
    with pytest.raises(UsageError, match="acceptance gates") as caught:
        sign_bundle(bundle, keys[0])
    assert "--allow-unvalidated" in str(caught.value)
    assert not (bundle / SIGNATURE_NAME).exists() and not (bundle / SIGNING_RECORD).exists()
    cli = invoke("sign", bundle, "--key", keys[0])
    assert cli.exit_code == 2 and "--allow-unvalidated" in cli.stderr
    record = sign_bundle(bundle, keys[0], allow_unvalidated=True)
    assert record["validation_verdict"] == "fail" and record["allow_unvalidated"] is True
    result = verify_bundle(bundle, keys[1])
    assert result.ok and result.record["allow_unvalidated"] is True
    cli = invoke("verify", bundle, "--pub", keys[1])
    assert cli.exit_code == 0 and "signed with --allow-unvalidated" in cli.stderr


def test_refuses_unvalidated_bundle_unless_allowed(tmp_path, keys):
    bundle = _write_bundle(tmp_path / "unvalidated", verdict=None)
    with pytest.raises(UsageError, match="never validated"):
        sign_bundle(bundle, keys[0])
    cli = invoke("sign", bundle, "--key", keys[0], "--allow-unvalidated")
    assert cli.exit_code == 0, cli.output
    record = json.loads((bundle / SIGNING_RECORD).read_text())
    assert record["validation_verdict"] is None and record["allow_unvalidated"] is True
    assert verify_bundle(bundle, keys[1]).ok


def test_report_and_bundle_json_must_agree(bundle, keys):
    (bundle / "revision_report.json").write_text(json.dumps({"verdict": "fail"}))
    with pytest.raises(DataError, match="records validation verdict 'pass'"):
        sign_bundle(bundle, keys[0], allow_unvalidated=True)
    (bundle / "revision_report.json").unlink()
    with pytest.raises(DataError, match=r"revision_report\.json is missing"):
        sign_bundle(bundle, keys[0], allow_unvalidated=True)


# -- keys and inputs --------------------------------------------------------------------------


def test_p384(bundle, tmp_path):
    private, public = tmp_path / "p384.key", tmp_path / "p384.pub"
    generate_keys(private, public, curve="P-384")
    sign_bundle(bundle, private)
    assert verify_bundle(bundle, public).ok
    assert library_verifies(bundle, public)


def test_password_protected_key(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("REVISE_KEY_PASSWORD", "correct horse")
    keydir = tmp_path / "keys"
    result = invoke("keygen", "-o", keydir, "--password-env", "REVISE_KEY_PASSWORD")
    assert result.exit_code == 0, result.output
    private, public = keydir / "revise-signing.key", keydir / "revise-signing.pub"
    assert b"ENCRYPTED" in private.read_bytes()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    result = invoke("sign", bundle, "--key", private, "--password-env", "REVISE_KEY_PASSWORD")
    assert result.exit_code == 0, result.output
    assert verify_bundle(bundle, public).ok
    with pytest.raises(SignatureError, match="wrong password for signing key"):
        sign_bundle(bundle, private, password=b"wrong")
    with pytest.raises(SignatureError, match="encrypted and no password"):
        sign_bundle(bundle, private)
    monkeypatch.setenv("REVISE_KEY_PASSWORD", "wrong")
    result = invoke("sign", bundle, "--key", private, "--password-env", "REVISE_KEY_PASSWORD")
    assert result.exit_code == 1 and f"wrong password for signing key {private}" in result.stderr
    result = invoke("sign", bundle, "--key", private, "--password-env", "NO_SUCH_VARIABLE")
    assert result.exit_code == 2 and "NO_SUCH_VARIABLE is not set" in result.stderr
    assert verify_bundle(bundle, public).ok  # failed attempts left the signature alone


def test_bad_inputs(bundle, keys, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    with pytest.raises(UsageError, match="is not a bundle folder"):
        sign_bundle(bundle / "card.json", keys[0])
    with pytest.raises(UsageError, match="is not a bundle folder"):
        verify_bundle(bundle / "card.json", keys[1])
    pem = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    for name, key in {
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }.items():
        path = tmp_path / f"{name}.key"
        path.write_bytes(key.private_bytes(*pem, serialization.NoEncryption()))
        with pytest.raises(
            SignatureError,
            match=rf"{re.escape(str(path))} holds a key of type \w+; model-signing signs",
        ):
            sign_bundle(bundle, path)
    with pytest.raises(SignatureError, match="not a PEM public key"):
        verify_bundle(bundle, keys[0])  # the private key where the public one belongs
