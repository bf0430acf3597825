"""The certificate scheme: a bundle signed with a key whose certificate a private CA issued
(root -> intermediate -> code-signing leaf, made here with `cryptography`), verified offline
against the CA by revise and by model-signing's own verifier; tampering is caught as with bare
keys, a certificate of another CA is refused, and bare-key bundles verify as before."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import model_signing
import pytest
from clirunner import invoke
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL.crypto import X509StoreContextError

from revise.errors import SignatureError, UsageError
from revise.export.keys import generate_keys
from revise.export.manifest import SIGNATURE_NAME, SIGNING_RECORD
from revise.export.signing import sign_bundle, verify_bundle

NOW = dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Pki:
    ca: Path  # the root CA's certificate: what a verifier trusts
    chain: Path  # the intermediate's certificate: what the signer ships
    cert: Path  # the code-signing leaf
    key: Path  # the leaf's private key (unencrypted: model-signing loads it so)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Hospital"),
        ]
    )


def _usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=not (sign or ca),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    signing: bool = True,
    valid: tuple[dt.timedelta, dt.timedelta] = (dt.timedelta(days=-1), dt.timedelta(days=30)),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + valid[0])
        .not_valid_after(NOW + valid[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_usage(sign=signing and not ca, ca=ca), critical=True)
    )
    if not ca and signing:
        eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
        builder = builder.add_extension(eku, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def make_pki(folder: Path, org: str = "A", **leaf) -> Pki:
    """A root CA, an intermediate CA and a leaf for code signing, as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root, inter = f"{org} Root CA", f"{org} Intermediate CA"
    files = Pki(folder / "ca.pem", folder / "chain.pem", folder / "signer.pem", folder / "k.key")
    files.ca.write_bytes(_pem(_certificate(root, root_key, root, root_key, ca=True)))
    files.chain.write_bytes(_pem(_certificate(inter, inter_key, root, root_key, ca=True)))
    signer = _certificate(f"{org} Model Signer", leaf_key, inter, inter_key, ca=False, **leaf)
    files.cert.write_bytes(_pem(signer))
    files.key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture
def pki(tmp_path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def bundle(bundle_copy) -> Path:
    return bundle_copy("pass")


@pytest.fixture
def signed(bundle, pki) -> Path:
    sign_bundle(bundle, pki.key, certificate=pki.cert, chain=[pki.chain])
    return bundle


def library_verifies(bundle: Path, ca: Path) -> bool:
    """model-signing's own verifier, told nothing but the CA."""
    config = model_signing.verifying.Config().use_certificate_verifier(certificate_chain=[ca])
    try:
        config.verify(bundle, bundle / SIGNATURE_NAME)
    except (ValueError, X509StoreContextError):
        return False
    return True


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_sign_with_a_certificate_and_verify_against_the_ca(bundle, pki):
    record = sign_bundle(bundle, pki.key, certificate=pki.cert, chain=[pki.chain])
    assert record["scheme"] == "certificate" and record["validation_verdict"] == "pass"
    leaf = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    fingerprint = ":".join(f"{b:02X}" for b in leaf.fingerprint(hashes.SHA256()))
    assert record["certificate"]["subject"] == "O=Test Hospital,CN=A Model Signer"
    assert record["certificate"]["issuer"] == "O=Test Hospital,CN=A Intermediate CA"
    assert record["certificate"]["sha256_fingerprint"] == fingerprint
    assert [c["subject"] for c in record["chain"]] == ["O=Test Hospital,CN=A Intermediate CA"]
    written = (bundle / SIGNING_RECORD).read_text()
    assert json.loads(written) == record and "PRIVATE" not in written  # no secrets
    result = verify_bundle(bundle, ca=[pki.ca])
    assert result.ok, result.message
    assert result.record == record and result.certificate == record["certificate"]
    assert (result.changed, result.added, result.removed) == ([], [], [])
    assert library_verifies(bundle, pki.ca)  # model-signing agrees, offline


def test_model_signing_cli_verifies_it(signed, pki):
    done = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "certificate", str(signed),
         "--signature", str(signed / SIGNATURE_NAME), "--certificate_chain", str(pki.ca)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stderr


@pytest.mark.parametrize(
    "tamper, line",
    [
        (lambda b: _flip_last_byte(b / "model.onnx"), "changed: model.onnx"),
        (lambda b: _flip_last_byte(b / SIGNING_RECORD), "changed: signing.json"),
        (lambda b: (b / "card.json").unlink(), "removed: card.json"),
        (lambda b: (b / "extra.txt").write_text("x"), "added: extra.txt"),
    ],
)
def test_tampering_is_named(signed, pki, tamper, line):
    tamper(signed)
    result = verify_bundle(signed, ca=[pki.ca])
    assert not result.ok
    kind, name = line.split(": ")
    assert getattr(result, kind) == [name]
    cli = invoke("verify", signed, "--ca", pki.ca)
    assert cli.exit_code == 1 and cli.stdout.splitlines()[1:] == [line]
    assert not library_verifies(signed, pki.ca)


def test_a_certificate_of_another_ca_fails(signed, bundle_copy, pki, tmp_path):
    other = make_pki(tmp_path / "other", org="B")
    result = verify_bundle(signed, ca=[other.ca])
    assert not result.ok and "does not chain to the CA" in result.message
    assert "A Model Signer" in result.message and not library_verifies(signed, other.ca)
    cli = invoke("verify", signed, "--ca", other.ca)
    assert cli.exit_code == 1 and "does not chain to the CA" in cli.stdout
    # signed under B, trusted A: the same
    second = bundle_copy("pass", name="second")
    sign_bundle(second, other.key, certificate=other.cert, chain=[other.chain])
    assert not verify_bundle(second, ca=[pki.ca]).ok and verify_bundle(second, ca=[other.ca]).ok
    # a chain of the other CA at signing: refused before signing, nothing written
    fresh = bundle_copy("pass", name="fresh")
    with pytest.raises(SignatureError, match="does not issue the signing certificate"):
        sign_bundle(fresh, pki.key, certificate=pki.cert, chain=[other.chain])
    assert not (fresh / SIGNATURE_NAME).exists() and not (fresh / SIGNING_RECORD).exists()


def test_the_cli_signs_and_verifies_with_a_certificate(bundle, pki):
    cli = invoke("sign", bundle, "--key", pki.key, "--cert", pki.cert, "--chain", pki.chain)
    assert cli.exit_code == 0, cli.output
    assert "certificate: O=Test Hospital,CN=A Model Signer (sha256 " in cli.stdout
    cli = invoke("verify", bundle, "--ca", pki.ca)
    assert cli.exit_code == 0, cli.output
    lines = cli.stdout.splitlines()
    assert lines[0].startswith("OK: ") and lines[0].endswith(" files verified")
    assert lines[1].startswith("signed by O=Test Hospital,CN=A Model Signer (issued by ")


def test_the_schemes_are_not_mixed(signed, bundle_copy, pki, tmp_path):
    generate_keys(tmp_path / "k.key", tmp_path / "k.pub")
    leaf_public = tmp_path / "leaf.pub"
    leaf = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    leaf_public.write_bytes(
        leaf.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = verify_bundle(signed, leaf_public)  # even the certificate's own key: say --ca
    assert (
        not result.ok and "made with a certificate" in result.message and "--ca" in result.message
    )
    keyed = bundle_copy("pass", name="keyed")
    sign_bundle(keyed, tmp_path / "k.key")
    result = verify_bundle(keyed, ca=[pki.ca])
    assert not result.ok and "made with a bare key" in result.message
    assert verify_bundle(keyed, tmp_path / "k.pub").ok  # the bare-key scheme as before
    assert json.loads((keyed / SIGNING_RECORD).read_text())["scheme"] == "key"
    with pytest.raises(UsageError, match="not both"):
        verify_bundle(keyed, tmp_path / "k.pub", ca=[pki.ca])
    with pytest.raises(UsageError, match="not neither"):
        verify_bundle(keyed)
    cli = invoke("verify", keyed)
    assert cli.exit_code == 2 and "--pub" in cli.stderr and "--ca" in cli.stderr


def test_refused_before_signing(bundle_copy, pki, tmp_path):
    bundle = bundle_copy("pass")
    with pytest.raises(UsageError, match="needs its chain"):
        sign_bundle(bundle, pki.key, certificate=pki.cert)
    with pytest.raises(UsageError, match="without a signing certificate"):
        sign_bundle(bundle, pki.key, chain=[pki.chain])
    other_key = tmp_path / "o.key"
    generate_keys(other_key, tmp_path / "o.pub")
    with pytest.raises(SignatureError, match="is not of this private key"):
        sign_bundle(bundle, other_key, certificate=pki.cert, chain=[pki.chain])
    with pytest.raises(SignatureError, match="is not a PEM certificate"):
        sign_bundle(bundle, pki.key, certificate=pki.key, chain=[pki.chain])
    not_for_signing = make_pki(tmp_path / "tls", signing=False)
    with pytest.raises(SignatureError, match="not for signing"):
        sign_bundle(
            bundle, not_for_signing.key, certificate=not_for_signing.cert, chain=[pki.chain]
        )
    past = (dt.timedelta(days=-30), dt.timedelta(days=-1))
    expired = make_pki(tmp_path / "old", valid=past)
    with pytest.raises(SignatureError, match="expired"):
        sign_bundle(bundle, expired.key, certificate=expired.cert, chain=[expired.chain])
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(UsageError, match="a certificate and an encrypted key"):
        sign_bundle(bundle, encrypted, password=b"secret", certificate=pki.cert, chain=[pki.chain])
    assert not (bundle / SIGNATURE_NAME).exists()
    cli = invoke("sign", bundle, "--key", pki.key, "--chain", pki.chain)
    assert cli.exit_code == 2 and "--cert" in cli.stderr


def test_a_tls_certificate_without_signing_usage_fails_verification(bundle, tmp_path):
    """model-signing's rule, checked by revise the same way: a certificate with neither
    digitalSignature nor codeSigning signs nothing (here: forged past revise's own check)."""
    from revise.export.certificates import can_sign

    tls = make_pki(tmp_path / "tls", signing=False)
    leaf = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    assert not can_sign(leaf)
    config = model_signing.signing.Config().use_certificate_signer(
        private_key=tls.key, signing_certificate=tls.cert, certificate_chain=[tls.chain]
    )
    config.set_hashing_config(
        model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME])
    ).sign(bundle, bundle / SIGNATURE_NAME)
    result = verify_bundle(bundle, ca=[tls.ca])
    assert not result.ok and "not for signing" in result.message
    assert not library_verifies(bundle, tls.ca)
