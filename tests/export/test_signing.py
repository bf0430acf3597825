"""Signing and verifying a revision bundle: real bundles (`revise export` + `revise validate`,
see tests/export_site.py), real EC keys, real model-signing signatures, and model-signing's own
verifier (API and command line) as the independent check."""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import model_signing
import pytest
from clirunner import invoke
from cryptography.exceptions import InvalidSignature

from revise.errors import DataError, SignatureError, UsageError
from revise.export.keys import generate_keys
from revise.export.manifest import SIGNATURE_NAME, SIGNING_RECORD
from revise.export.signing import sign_bundle, verify_bundle


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    private, public = tmp_path / "keys/revise-signing.key", tmp_path / "keys/revise-signing.pub"
    generate_keys(private, public)
    return private, public


@pytest.fixture
def bundle(bundle_copy) -> Path:
    """A real bundle, validated (verdict pass), unsigned: this test's own copy."""
    return bundle_copy("pass")


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
    assert result.files == len(files) == 13  # every file, sub-folders and signing.json too
    assert result.record == record
    assert (result.changed, result.added, result.removed) == ([], [], [])


def test_key_files(keys):
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    with pytest.raises(UsageError) as err:
        generate_keys(private, public)
    assert str(err.value) == (
        f"key files {private} and {public} already exist "
        "(pass overwrite to replace the pair, or pick another folder)"
    )  # the keyword in Python; `revise keygen` says --overwrite
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
    assert result.stdout.splitlines()[0] == "OK: 13 files verified"


def test_cli_keygen_curve_p384(tmp_path):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    result = invoke("keygen", "-o", tmp_path / "keys", "--curve", "P-384")
    assert result.exit_code == 0, result.output
    assert "(P-384," in result.stdout
    key = load_pem_private_key((tmp_path / "keys/revise-signing.key").read_bytes(), None)
    assert key.curve.name == "secp384r1"


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


def test_resigning_replaces_signature_and_record(signed, keys, tmp_path):
    """Re-signing (here with a new key: a key rotation) replaces revise.sig and signing.json;
    the old key no longer verifies the bundle."""
    first = (signed / SIGNATURE_NAME).read_bytes()
    new_private, new_public = tmp_path / "new/k.key", tmp_path / "new/k.pub"
    generate_keys(new_private, new_public)
    cli = invoke("sign", signed, "--key", new_private)
    assert cli.exit_code == 0, cli.output
    record = json.loads((signed / SIGNING_RECORD).read_text())
    assert (signed / SIGNATURE_NAME).read_bytes() != first
    assert record["validation_verdict"] == "pass"
    assert verify_bundle(signed, new_public).ok
    assert library_verifies(signed, new_public)
    assert not verify_bundle(signed, keys[1]).ok


def test_resigning_a_changed_bundle_is_refused(signed, keys):
    """A signed bundle whose model changed is not signed again over the change."""
    flip_last_byte(signed / "model.onnx")
    before = (signed / SIGNATURE_NAME).read_bytes()
    with pytest.raises(DataError, match=r"model\.onnx is not the file bundle\.json records"):
        sign_bundle(signed, keys[0])
    assert (signed / SIGNATURE_NAME).read_bytes() == before  # the old signature still stands
    assert verify_bundle(signed, keys[1]).changed == ["model.onnx"]


# -- the validation gate ----------------------------------------------------------------------


def test_refuses_failed_bundle_unless_allowed(bundle_copy, keys):
    bundle = bundle_copy("fail")
    with pytest.raises(UsageError, match="acceptance gates") as caught:
        sign_bundle(bundle, keys[0])
    assert "pass allow_unvalidated to sign anyway" in str(caught.value)  # the keyword
    assert not (bundle / SIGNATURE_NAME).exists() and not (bundle / SIGNING_RECORD).exists()
    cli = invoke("sign", bundle, "--key", keys[0])
    assert cli.exit_code == 2 and "--allow-unvalidated" in cli.stderr
    record = sign_bundle(bundle, keys[0], allow_unvalidated=True)
    assert record["validation_verdict"] == "fail" and record["allow_unvalidated"] is True
    result = verify_bundle(bundle, keys[1])
    assert result.ok and result.record["allow_unvalidated"] is True
    cli = invoke("verify", bundle, "--pub", keys[1])
    assert cli.exit_code == 0 and "signed with --allow-unvalidated" in cli.stderr


def test_refuses_unvalidated_bundle_unless_allowed(bundle_copy, keys):
    bundle = bundle_copy(None)
    with pytest.raises(UsageError, match="never validated"):
        sign_bundle(bundle, keys[0])
    cli = invoke("sign", bundle, "--key", keys[0], "--allow-unvalidated")
    assert cli.exit_code == 0, cli.output
    record = json.loads((bundle / SIGNING_RECORD).read_text())
    assert record["validation_verdict"] is None and record["allow_unvalidated"] is True
    assert verify_bundle(bundle, keys[1]).ok


def test_report_and_bundle_json_must_agree(bundle, keys):
    report = json.loads((bundle / "revision_report.json").read_text())
    (bundle / "revision_report.json").write_text(json.dumps({**report, "verdict": "fail"}))
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


def test_an_empty_folder_is_flagged_and_refused(signed, keys):
    """model-signing hashes files only: an empty triton/demo/2/ (a version Triton would try to
    load) added after signing passes its verifier, but not revise's, and is never signed."""
    (signed / "triton/demo/2").mkdir()
    (signed / "extra/a/b").mkdir(parents=True)  # nested: named once, by its outermost folder
    assert library_verifies(signed, keys[1])  # invisible to model-signing
    result = verify_bundle(signed, keys[1])
    assert not result.ok
    assert result.added == ["extra/", "triton/demo/2/"] and not result.changed + result.removed
    cli = invoke("verify", signed, "--pub", keys[1])
    assert cli.exit_code == 1 and cli.stdout.splitlines()[1:] == [
        "added: extra/",
        "added: triton/demo/2/",
    ]
    with pytest.raises(SignatureError, match=r"empty folders.*extra/, triton/demo/2/"):
        sign_bundle(signed, keys[0])
    (signed / "triton/demo/2").rmdir()
    for folder in ("extra/a/b", "extra/a", "extra"):
        (signed / folder).rmdir()
    assert verify_bundle(signed, keys[1]).ok


# -- the bundle signed is the bundle exported and validated ------------------------------------


def _relist(bundle: Path, *names: str) -> None:
    """Record the current sha256 of ``names`` in bundle.json, as a forger would."""
    from revise._io.digests import sha256_file

    manifest = json.loads((bundle / "bundle.json").read_text())
    for name in names:
        manifest["files"][name] = {
            "sha256": sha256_file(bundle / name),
            "bytes": (bundle / name).stat().st_size,
        }
    (bundle / "bundle.json").write_text(json.dumps(manifest))


def _swap_onnx(bundle: Path, other: Path) -> None:
    shutil.copyfile(other / "model.onnx", bundle / "model.onnx")


def _swap_onnx_relisted(bundle: Path, other: Path) -> None:
    _swap_onnx(bundle, other)
    _relist(bundle, "model.onnx")


def _swap_onnx_relisted_and_graph(bundle: Path, other: Path) -> None:
    from revise.export.onnx_file import graph_digest

    _swap_onnx_relisted(bundle, other)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["onnx"]["variants"]["model.onnx"]["graph_sha256"] = graph_digest(bundle / "model.onnx")
    (bundle / "bundle.json").write_text(json.dumps(manifest))


def _swap_weights_relisted(bundle: Path, other: Path) -> None:
    shutil.copyfile(other / "model.safetensors", bundle / "model.safetensors")
    _relist(bundle, "model.safetensors")


def _swap_triton_relisted(bundle: Path, other: Path) -> None:
    shutil.copyfile(other / "model.onnx", bundle / "triton/demo/1/model.onnx")
    _relist(bundle, "triton/demo/1/model.onnx")


def _add_file(bundle: Path, other: Path) -> None:
    shutil.copyfile(other / "model.onnx", bundle / "triton/demo/1/model2.onnx")


def _remove_file(bundle: Path, other: Path) -> None:
    (bundle / "card.json").unlink()


SWAPS = {
    "model.onnx replaced": (_swap_onnx, r"model\.onnx is not the file bundle\.json records"),
    "and relisted": (_swap_onnx_relisted, r"model\.onnx holds another ONNX graph"),
    "and its graph recorded": (
        _swap_onnx_relisted_and_graph,
        r"model\.onnx was exported from other weights",
    ),
    "weights replaced": (_swap_weights_relisted, r"model\.safetensors holds other weights"),
    "triton copy replaced": (
        _swap_triton_relisted,
        r"triton/demo/1/model\.onnx holds another ONNX graph",
    ),
    "file added": (_add_file, r"triton/demo/1/model2\.onnx is not one of the files"),
    "file removed": (_remove_file, r"card\.json is listed in .*bundle\.json but missing"),
}


@pytest.mark.parametrize("case", SWAPS)
def test_sign_refuses_a_bundle_that_is_not_the_one_validated(bundle, keys, other_export, case):
    """The reviewer's repro and its variants: the validated bundle with another model's files
    copied in (bundle.json's verdict still 'pass') must not be signed as validated."""
    tamper, message = SWAPS[case]
    tamper(bundle, other_export[1])
    cli = invoke("sign", bundle, "--key", keys[0])
    assert cli.exit_code == 1, cli.output
    assert re.search(message, cli.stderr), cli.stderr
    assert "validation: pass" not in cli.stdout
    assert not (bundle / SIGNATURE_NAME).exists() and not (bundle / SIGNING_RECORD).exists()
    with pytest.raises(DataError, match=message):  # allow_unvalidated does not skip the check
        sign_bundle(bundle, keys[0], allow_unvalidated=True)


@pytest.mark.parametrize(
    ("field", "message"),
    [
        (("models", "candidate", "sha256"), r"revision_report\.json validates other weights"),
        (("inputs", "onnx", "graph_sha256"), r"parity check of .* ran on another ONNX graph"),
    ],
)
def test_a_report_of_other_weights_or_another_graph_is_refused(bundle, keys, field, message):
    report_path = bundle / "revision_report.json"
    report = json.loads(report_path.read_text())
    entry = report
    for key in field[:-1]:
        entry = entry[key]
    entry[field[-1]] = "0" * 64
    report_path.write_text(json.dumps(report))
    _relist(bundle, "revision_report.json")
    with pytest.raises(DataError, match=message):
        sign_bundle(bundle, keys[0])
