"""Sign a revision bundle and verify it, offline, with OpenSSF model-signing and an EC key.

The signature (``revise.sig``, model-signing's Sigstore-bundle JSON) covers every file in the
bundle folder, sub-folders included, except itself. model-signing has no room for custom
fields, so what revise wants to assert (the validation verdict, whether signing was forced) goes
into ``signing.json``, which is written *before* signing and so is covered too.

Before signing, the bundle must be the one exported and validated: exactly the files bundle.json
lists (the exporter and `revise validate` record every file they write there, the report
included), each with its recorded sha256; the weights, ONNX graphs and the report all naming the
same model. A verdict counts only for the files it was reached on: `revise validate BUNDLE`
records the digest of every file but bundle.json, the report files and the signature files, and
each must still be the one validated (a report of the model folder, `export --validation`, saw
none of the bundle's card.json, Triton files or ONNX metadata: no verdict on the bundle).
model-signing hashes files only, so a folder holding no file (an empty ``triton/<name>/2/``
that Triton would try to load as version 2) is refused when signing and reported as added when
verifying::

    sign_bundle(bundle, "keys/revise-signing.key")      # refuses unvalidated or failed bundles
    verify_bundle(bundle, "keys/revise-signing.pub")    # VerifyResult(ok, changed, added, removed)

Anyone can check a bundle without revise: ``model_signing verify key BUNDLE --signature
BUNDLE/revise.sig --public_key revise-signing.pub``.

A second scheme signs with a key whose certificate a private CA issued (model-signing's
certificate signer); it is verified offline against the CA, not a key, and signing.json
records the scheme and the certificate's subject and fingerprint (:mod:`.certificates`)::

    sign_bundle(bundle, "signer.key", certificate="signer.pem", chain=["intermediate.pem"])
    verify_bundle(bundle, ca=["root-ca.pem"])   # or: model_signing verify certificate ...

The keys are :mod:`revise.export.keys`; the checks that the bundle is the one exported and
validated, :mod:`revise.export.bundle_checks`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from revise._io.atomic import atomic_path
from revise._io.digests import sha256_file
from revise._io.outputs import REPORT_JSON
from revise.errors import DataError, SignatureError, UsageError
from revise.export.attestations import AttestationSummary, check_attestations
from revise.export.bundle_checks import (
    check_contents,
    check_signable,
    read_json,
    validated_files_unchanged,
    validation_verdict,
    walk,
)
from revise.export.certificates import (
    chain_entry,
    describe,
    load_certificates,
    scheme_of,
    signer_certificates,
    verify_chain,
    verifying_with,
)
from revise.export.keys import (
    hash_for,
    load_private_key,
    load_public_key,
    password_bytes,
    public_key_sha256,
)
from revise.export.manifest import SIGNATURE_NAME, SIGNING_RECORD

SCHEMA = "revise.signing/1"


@dataclass
class VerifyResult:
    """The outcome of `verify_bundle`; file names are relative to the bundle, '/'-separated."""

    ok: bool
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    message: str = ""
    files: int = 0  # files the signature covers
    record: dict[str, Any] | None = None  # signing.json, only when ok (then it is authentic)
    certificate: dict[str, str] | None = None  # the certificate scheme: who signed (describe)
    # the bundle's attestations, checked against the signed files (None: it has none)
    attestations: AttestationSummary | None = None


# -- signing ----------------------------------------------------------------------------------


def sign_bundle(
    bundle: str | Path,
    private_key: str | Path,
    *,
    password: bytes | None = None,
    allow_unvalidated: bool = False,
    certificate: str | Path | None = None,
    chain: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Sign every file of ``bundle`` (but the signature) and return the signing record.

    Two schemes: the bare key (the default), or ``certificate`` (PEM, issued for the key by a
    private CA) with its ``chain`` (the issuing intermediate(s), maybe the root), verified
    against the CA (:mod:`revise.export.certificates`). Refuses a bundle whose validation
    failed or never ran unless ``allow_unvalidated``; the choice goes into signing.json, which
    the signature covers. Re-signing replaces both."""
    bundle = _bundle_folder(bundle)
    key_path = Path(private_key)
    password = password_bytes(password)
    key = load_private_key(key_path, password)
    signer = signer_certificates(key, certificate, chain, password)
    check_signable(bundle)
    verdict = validation_verdict(bundle)
    check_contents(bundle)
    unbound = not validated_files_unchanged(bundle)
    if unbound:  # the report judged a model folder: no verdict on the bundle's own files
        verdict = None
    if verdict != "pass" and not allow_unvalidated:
        _refuse_unvalidated(bundle, verdict, unbound)
    check_attestations(bundle)  # the statement and the BOM describe these very files
    ms = _model_signing()
    record = {
        "schema": SCHEMA,
        "signed_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "validation_verdict": verdict,
        "allow_unvalidated": bool(allow_unvalidated),
        "public_key_sha256": public_key_sha256(key.public_key()),
        "tool": f"revise {_revise_version()} / model-signing {ms.__version__}",
        "scheme": "key" if signer is None else "certificate",
    }
    if signer is not None:  # names and fingerprints only: nothing secret
        record["certificate"] = describe(signer[0])
        record["chain"] = [chain_entry(c) for c in signer[1]]
    # Drop the old signature first: a failed re-sign leaves an unsigned bundle, not a stale one.
    (bundle / SIGNATURE_NAME).unlink(missing_ok=True)
    _write_public(
        bundle / SIGNING_RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    )
    # The ignored path must be relative to the bundle: model-signing silently drops an absolute
    # one (or one relative to the working directory), and the signature would then cover an
    # old revise.sig, or the verifier would see revise.sig as an extra file.
    hashing_config = ms.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME])
    with tempfile.TemporaryDirectory(prefix="revise-sign-") as tmp:
        # Signed into a folder outside the bundle: nothing new appears in it while it is hashed.
        staged = Path(tmp) / SIGNATURE_NAME
        config = ms.signing.Config().set_hashing_config(hashing_config)
        if certificate is None:
            config = config.use_elliptic_key_signer(private_key=key_path, password=password)
        else:
            config = config.use_certificate_signer(
                private_key=key_path, signing_certificate=certificate, certificate_chain=chain
            )
        try:
            config.sign(bundle, staged)
        except (ValueError, TypeError, OSError) as exc:
            raise SignatureError(f"model-signing could not sign {bundle}: {exc}") from exc
        _write_public(bundle / SIGNATURE_NAME, staged.read_bytes())
    return record


def _refuse_unvalidated(bundle: Path, verdict: str | None, unbound: bool) -> None:
    hint = "pass {allow_unvalidated} to sign anyway; signing.json records that choice"
    if unbound:
        why = (
            f"its {REPORT_JSON} validated a model folder, not this bundle's files (card.json, "
            "the Triton files, the ONNX metadata)"
        )
        hint = "validate the bundle itself: revise validate BUNDLE ...; or " + hint
    elif verdict == "fail":
        why = f"it failed its acceptance gates ({REPORT_JSON}: verdict 'fail')"
    else:
        why = f"it was never validated (no {REPORT_JSON})"
    raise UsageError(f"refusing to sign {bundle}: {why}", hint=hint, options=("allow_unvalidated",))


def _write_public(path: Path, data: bytes) -> None:
    """Atomically, readable by the server that loads the bundle (atomic_path's files are 0600)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)


def _bundle_folder(bundle: str | Path) -> Path:
    bundle = Path(bundle)
    if not bundle.exists():
        raise UsageError(f"bundle {bundle} does not exist", hint="write one with `revise export`")
    if not bundle.is_dir():
        raise UsageError(
            f"{bundle} is not a bundle folder",
            hint="pass the folder `revise export` wrote, not a file in it",
        )
    return bundle


def verify_bundle(
    bundle: str | Path, public_key: str | Path | None = None, *, ca: Sequence[str | Path] = ()
) -> VerifyResult:
    """Check ``bundle`` against its signature with model-signing; on a mismatch, name the
    files that changed, were added or were removed since signing. Give the ``public_key`` of
    a bundle signed with a bare key, or the ``ca`` certificate(s) (PEM) of the private CA that
    issued the signing certificate of one signed with a certificate; offline either way."""
    bundle = _bundle_folder(bundle)
    key_path, ca_paths = verifying_with(public_key, ca)
    key = load_public_key(key_path) if key_path is not None else None
    trusted = load_certificates(ca_paths, "CA certificate") if ca_paths else []
    signature = bundle / SIGNATURE_NAME
    if not signature.is_file():
        return VerifyResult(
            False, message=f"{bundle} is not signed (no {SIGNATURE_NAME}); sign it with revise sign"
        )
    ms = _model_signing()
    try:
        chain = scheme_of(signature, by_certificate=key is None)
    except SignatureError as exc:
        return VerifyResult(False, message=str(exc))
    config = ms.verifying.Config()
    if key is None:
        config = config.use_certificate_verifier(certificate_chain=ca_paths)
    else:
        config = config.use_elliptic_key_verifier(public_key=key_path)
    try:  # model-signing's own verdict is the authority: ok is never True without it
        config.verify(bundle, signature)
        failure: Exception | None = None
    except Exception as exc:  # ValueError, InvalidSignature, KeyError on a mangled file, ...
        failure = exc
    signer = None
    try:
        if key is None:  # the statement is trusted once the chain leads to the CA
            key, signer = verify_chain(chain or [], trusted, ca_paths), describe(chain[0])
            statement = _signed_statement(signature, key, f"certificate {signer['subject']}")
        else:
            statement = _signed_statement(signature, key, key_path)
    except SignatureError as exc:
        return VerifyResult(False, message=str(exc))
    predicate = statement.get("predicate") or {}
    resources = [r for r in predicate.get("resources", []) if isinstance(r, dict)]
    signed = {str(r.get("name")): r.get("digest") for r in resources}
    files, odd, empty = walk(bundle)
    present = set(files) | set(odd) | set(empty)
    # Added/removed need names only; digests are recomputed only when model-signing failed
    # (when it passed it has checked them all). Comparing names also catches a file it never
    # hashes (a top-level .gitignore ...) and an empty folder (it hashes files only) added
    # after signing.
    added = sorted(present - set(signed))
    removed = sorted(set(signed) - present)
    changed = sorted(set(odd) & set(signed))
    if failure is not None and _is_sha256_by_file(predicate):
        changed += [n for n in files if n in signed and sha256_file(bundle / n) != signed[n]]
        changed.sort()
    if failure is None and not (changed or added or removed):
        try:  # signed like every file; they must also describe the files signed
            attested = check_attestations(bundle, _signed_digests(bundle, predicate, signed))
        except DataError as exc:
            return VerifyResult(False, message=str(exc), files=len(signed))
        record_path = bundle / SIGNING_RECORD
        record = read_json(record_path) if record_path.is_file() else None
        return VerifyResult(
            True,
            message=f"{len(signed)} files verified",
            files=len(signed),
            record=record,
            certificate=signer,
            attestations=attested,
        )
    if changed or added or removed:
        message = (
            f"{bundle} does not match its signature: {len(changed)} changed, {len(added)} added, "
            f"{len(removed)} removed since signing"
        )
    else:
        message = f"model-signing rejects {bundle}: {failure}"
    return VerifyResult(False, changed, added, removed, message, files=len(signed))


def _signed_digests(bundle: Path, predicate: dict[str, Any], signed: dict) -> dict[str, str]:
    """sha256 of each signed file: as the signature records them (revise signs sha256 by
    file), else hashed here (model-signing has checked the files against the signature)."""
    if _is_sha256_by_file(predicate):
        return {name: str(digest) for name, digest in signed.items()}
    return {name: sha256_file(bundle / name) for name in signed if (bundle / name).is_file()}


def _is_sha256_by_file(predicate: dict[str, Any]) -> bool:
    """Whether the signed digests are plain sha256 of whole files (what revise signs)."""
    serialization_args = predicate.get("serialization") or {}
    return serialization_args.get("method") == "files" and all(
        r.get("algorithm") == "sha256" for r in predicate.get("resources", [])
    )


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the envelope's signature signs."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _signed_statement(
    signature: Path, key: ec.EllipticCurvePublicKey, key_path: Path | str
) -> dict[str, Any]:
    """The in-toto statement inside the signature's DSSE envelope, once the envelope is shown
    to be signed by ``key`` (so the file list it names can be trusted for the diff)."""
    try:
        bundle_json = json.loads(signature.read_text(encoding="utf-8"))
        envelope = bundle_json["dsseEnvelope"]
        payload = base64.b64decode(envelope["payload"])
        payload_type = envelope["payloadType"]
        raw_signature = base64.b64decode(envelope["signatures"][0]["sig"])
        hint = (bundle_json.get("verificationMaterial") or {}).get("publicKey", {}).get("hint")
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise SignatureError(
            f"{signature} is not a model-signing signature ({type(exc).__name__}: {exc})",
            hint="sign the bundle again with revise sign",
        ) from exc
    mine = public_key_sha256(key)
    if hint and hint != mine:
        raise SignatureError(
            f"the signature does not match this key: it was made with key sha256 {hint[:16]}..., "
            f"{key_path} is {mine[:16]}...",
            hint="use the .pub file paired with the key that signed the bundle",
        )
    try:
        key.verify(raw_signature, _pae(payload_type, payload), ec.ECDSA(hash_for(key)()))
    except InvalidSignature as exc:
        raise SignatureError(
            f"the signature does not match this key ({key_path}), or {signature} was altered"
        ) from exc
    try:
        statement = json.loads(payload)
    except ValueError as exc:  # signed but not JSON: not something model-signing writes
        raise SignatureError(f"{signature} holds no in-toto statement ({exc})") from exc
    return statement


# -- the library ------------------------------------------------------------------------------


def _model_signing() -> ModuleType:
    """model_signing, imported on first use (it pulls in sigstore: slow)."""
    try:
        import model_signing
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as exc:
        raise SignatureError(
            f"cannot import model-signing ({exc})",
            hint="pip install 'model-signing>=1.1,<1.2' 'pyOpenSSL>=24' (sigstore needs pyOpenSSL)",
        ) from exc
    return model_signing


def _revise_version() -> str:
    from revise import __version__

    return __version__
