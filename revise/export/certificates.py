"""Certificates for the second signature scheme: a bundle signed with a key whose X.509
certificate a (private) CA issued, verified offline against that CA.

model-signing puts the signing certificate and the chain given at signing into the signature;
a verifier trusts only the CA certificates it is handed (``revise verify --ca``), so a signature
made under another CA fails. What it checks, and so what revise checks before signing:

* the chain: OpenSSL's path validation from the signing certificate, through the chain in the
  signature, to a trusted CA, at the time the signing certificate became valid (model-signing
  sets the store's time to its ``notBefore``: a signature outlives the certificate's expiry; it
  checks no revocation, being offline);
* the use: the signing certificate has KeyUsage ``digitalSignature`` or ExtendedKeyUsage
  ``codeSigning``; its key is an EC key on P-256, P-384 or P-521.

Before signing, revise also refuses a certificate that is not of the private key, that is not
valid now, or that the chain given does not issue (the signature would never verify).
:func:`describe` is what signing.json records of a certificate: names and fingerprints only.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from revise.errors import SignatureError, UsageError

_CA_HINT = "pass the CA certificate(s) of the private CA that issued the signing certificate"


def load_certificate(path: Path, what: str = "signing certificate") -> x509.Certificate:
    """The one PEM certificate in ``path``."""
    certificates = load_certificates([path], what)
    if len(certificates) != 1:
        raise SignatureError(
            f"{what} {path} holds {len(certificates)} certificates, not one",
            hint="pass the signing certificate alone; its issuers go into the chain",
        )
    return certificates[0]


def load_certificates(paths: Iterable[Path], what: str) -> list[x509.Certificate]:
    """Every PEM certificate in ``paths`` (a file may hold several), in order."""
    found: list[x509.Certificate] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{what} {path} does not exist", hint="pass a PEM certificate file")
        data = path.read_bytes()
        try:
            found += x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            hint = "pass the certificate, not a key" if b"KEY-----" in data else None
            raise SignatureError(
                f"{what} {path} is not a PEM certificate ({exc})",
                hint=hint or "pass a PEM file (-----BEGIN CERTIFICATE-----)",
            ) from exc
    return found


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 fingerprint, as OpenSSL and model-signing print it (``AB:CD:...``)."""
    return ":".join(f"{b:02X}" for b in certificate.fingerprint(hashes.SHA256()))


def describe(certificate: x509.Certificate) -> dict[str, str]:
    """What signing.json records of a certificate: who, issued by whom, when valid, which."""
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": format(certificate.serial_number, "x"),
        "not_valid_before": _utc(certificate.not_valid_before_utc),
        "not_valid_after": _utc(certificate.not_valid_after_utc),
        "sha256_fingerprint": fingerprint(certificate),
    }


def _utc(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def can_sign(certificate: x509.Certificate) -> bool:
    """model-signing's rule: KeyUsage digitalSignature, or ExtendedKeyUsage codeSigning."""
    extensions = certificate.extensions
    try:
        if extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        usage = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CODE_SIGNING in usage


def check_signer(
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
    *,
    certificate_path: Path,
    chain_paths: Sequence[Path],
    now: dt.datetime | None = None,
) -> None:
    """Refuse, before signing, a certificate that would give a signature no CA verifies: not
    of ``key``, not for signing, not valid now, or not issued by the ``chain`` given."""
    subject = certificate.subject.rfc4514_string()
    if certificate.public_key() != key.public_key():
        raise SignatureError(
            f"the signing certificate {certificate_path} ({subject}) is not of this private key",
            hint="pass the key the certificate was issued for",
        )
    if not can_sign(certificate):
        raise SignatureError(
            f"the signing certificate {certificate_path} ({subject}) is not for signing: it has "
            "neither KeyUsage digitalSignature nor ExtendedKeyUsage codeSigning",
            hint="have the CA issue a code-signing certificate",
        )
    now = now or dt.datetime.now(dt.timezone.utc)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        when = (
            f"expired {_utc(certificate.not_valid_after_utc)}"
            if now > certificate.not_valid_after_utc
            else f"is valid only from {_utc(certificate.not_valid_before_utc)}"
        )
        raise SignatureError(
            f"the signing certificate {certificate_path} ({subject}) {when}",
            hint="have the CA issue a new one",
        )
    # Path validation with the chain's certificates as anchors (a chain may end below the root):
    # the chain must issue the signing certificate, or the verifier's CA never will.
    problem = _path_problem(certificate, chain, chain, at=now, partial=True)
    if problem:
        named = ", ".join(str(p) for p in chain_paths)
        raise SignatureError(
            f"the chain {named} does not issue the signing certificate {certificate_path} "
            f"({subject}): {problem}",
            hint="pass the intermediate (and root) certificates of the CA that issued it",
        )


def signer_certificates(
    key: ec.EllipticCurvePrivateKey,
    certificate: str | Path | None,
    chain: Sequence[str | Path],
    password: bytes | None,
) -> tuple[x509.Certificate, list[x509.Certificate]] | None:
    """The signing certificate and its chain, checked to give a signature the CA verifies;
    None for the bare-key scheme."""
    if certificate is None:
        if chain:
            raise UsageError(
                "a certificate chain was given without a signing certificate",
                hint="pass {certificate} too, or drop {chain} to sign with the bare key",
                options=("certificate", "chain"),
            )
        return None
    if not chain:
        raise UsageError(
            "a signing certificate needs its chain: the CA certificate(s) that issued it",
            hint="pass {chain} (the intermediate, and the root if you like)",
            options=("chain",),
        )
    if password is not None:  # model-signing 1.1 loads a certificate signer's key unencrypted
        raise UsageError(
            "model-signing cannot sign with a certificate and an encrypted key",
            hint="use an unencrypted key (kept on an encrypted volume) with {certificate}, or "
            "sign with the bare key",
            options=("certificate",),
        )
    paths = [Path(p) for p in chain]
    leaf = load_certificate(Path(certificate))
    issuers = load_certificates(paths, "certificate chain")
    check_signer(key, leaf, issuers, certificate_path=Path(certificate), chain_paths=paths)
    return leaf, issuers


def chain_entry(certificate: x509.Certificate) -> dict[str, str]:
    entry = describe(certificate)
    return {k: entry[k] for k in ("subject", "issuer", "sha256_fingerprint")}


def verifying_with(
    public_key: str | Path | None, ca: Sequence[str | Path]
) -> tuple[Path | None, list[Path]]:
    """The public key, or the CA certificates: exactly one of the two schemes."""
    if (public_key is None) == (not ca):
        raise UsageError(
            "verify with a public key or against a CA, not "
            + ("both" if public_key is not None else "neither"),
            hint="pass {public_key} for a bundle signed with a bare key, {ca} for one signed "
            "with a certificate",
            options=("public_key", "ca"),
        )
    return (Path(public_key) if public_key is not None else None), [Path(p) for p in ca]


def scheme_of(signature: Path, *, by_certificate: bool) -> list[x509.Certificate] | None:
    """The signature's certificate chain (None: signed with a bare key), refused when it is
    not of the scheme the verifier was given. An unreadable file is left to the checks after."""
    try:
        chain = signature_chain(json.loads(signature.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError) as exc:
        if not by_certificate:  # the key scheme's checks say what is wrong with it
            return None
        raise SignatureError(
            f"{signature} is not a model-signing signature ({type(exc).__name__}: {exc})",
            hint="sign the bundle again with revise sign",
        ) from exc
    if by_certificate and chain is None:
        raise SignatureError(
            f"{signature} was made with a bare key, not a certificate",
            hint="verify it with the signer's public key: revise verify BUNDLE --pub KEY.pub",
        )
    if not by_certificate and chain is not None:
        subject = chain[0].subject.rfc4514_string() if chain else "?"
        raise SignatureError(
            f"{signature} was made with a certificate ({subject}), not a bare key",
            hint="verify it against the CA that issued it: revise verify BUNDLE --ca CA.pem",
        )
    return chain


def signature_chain(signature: dict[str, Any]) -> list[x509.Certificate] | None:
    """The certificates in a model-signing signature (signing certificate first); None: it
    was signed with a bare key."""
    material = signature.get("verificationMaterial") or {}
    chain = material.get("x509CertificateChain")
    if chain is None:
        return None
    try:
        return [
            x509.load_der_x509_certificate(base64.b64decode(c["rawBytes"]))
            for c in chain["certificates"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureError(
            f"the signature's certificate chain is unreadable ({type(exc).__name__}: {exc})",
            hint="sign the bundle again with revise sign",
        ) from exc


def verify_chain(
    chain: Sequence[x509.Certificate], trusted: Sequence[x509.Certificate], ca_paths: Sequence[Path]
) -> ec.EllipticCurvePublicKey:
    """The signing certificate's key, once ``chain`` (from the signature) is shown to lead to a
    CA in ``trusted`` as model-signing checks it; else a SignatureError saying why."""
    if not chain:
        raise SignatureError("the signature holds no certificate")
    leaf = chain[0]
    subject = leaf.subject.rfc4514_string()
    problem = _path_problem(leaf, trusted, chain[1:], at=leaf.not_valid_before_utc)
    if problem:
        named = ", ".join(str(p) for p in ca_paths)
        raise SignatureError(
            f"the signing certificate ({subject}, issued by {leaf.issuer.rfc4514_string()}) "
            f"does not chain to the CA in {named}: {problem}",
            hint=_CA_HINT,
        )
    if not can_sign(leaf):
        raise SignatureError(f"the signing certificate ({subject}) is not for signing")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"the signing certificate ({subject}) holds no EC key")
    return key


def _path_problem(
    leaf: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate],
    *,
    at: dt.datetime,
    partial: bool = False,
) -> str | None:
    """Why OpenSSL finds no valid path from ``leaf`` to one of ``anchors`` (through
    ``untrusted``) at time ``at``; None: it finds one. ``partial``: any anchor ends a path,
    not only a self-signed one."""
    from OpenSSL import crypto

    store = crypto.X509Store()
    for certificate in anchors:
        store.add_cert(crypto.X509.from_cryptography(certificate))
    if partial:
        store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    store.set_time(at)
    context = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(c) for c in untrusted],
    )
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as exc:
        return str(exc)
    return None
