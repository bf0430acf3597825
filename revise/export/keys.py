"""The EC keys revise signs bundles with: made by `revise keygen` (PEM, the private key PKCS#8
with mode 0600, optionally encrypted), loaded for `revise sign` and `revise verify` with errors
that say what to do, and the digest that names a public key in a signature."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from revise._io.atomic import atomic_path
from revise.errors import SignatureError, UsageError

PRIVATE_KEY_NAME = "revise-signing.key"
PUBLIC_KEY_NAME = "revise-signing.pub"

# What `revise keygen` makes. model-signing also verifies P-521 keys, so sign/verify accept them.
CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}
_SUPPORTED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_CURVE_HASH = {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}  # as model-signing
_KEY_HINT = "create a key pair with `revise keygen -o KEYDIR`"


def generate_keys(
    private_path: str | Path,
    public_path: str | Path,
    *,
    curve: str = "P-256",
    password: bytes | None = None,
    overwrite: bool = False,
) -> None:
    """Write a new EC key pair as PEM: the private key (PKCS#8, encrypted when ``password`` is
    given) with mode 0600, the public key (SubjectPublicKeyInfo) beside it."""
    if curve not in CURVES:
        raise UsageError(
            f"curve {curve!r} is not supported for revise signing keys",
            hint="use P-256 or P-384 (model-signing signs with NIST EC keys only)",
        )
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise UsageError(f"the private and the public key would both be {private_path}")
    existing = [str(p) for p in (private_path, public_path) if p.exists()]
    if existing and not overwrite:
        files = (
            f"key files {existing[0]} and {existing[1]} already exist"
            if len(existing) == 2
            else f"key file {existing[0]} already exists"
        )
        hint = "pass {overwrite} to replace the pair, or pick another folder"
        raise UsageError(files, hint=hint, options=("overwrite",))
    password = password_bytes(password)
    if password is not None and not password:
        raise UsageError("the key password is empty", hint="give a non-empty password or none")
    key = ec.generate_private_key(CURVES[curve]())
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    with atomic_path(private_path) as tmp:
        os.chmod(tmp, 0o600)  # before the key lands in it: never readable by others, not briefly
        tmp.write_bytes(private_pem)
    with atomic_path(public_path) as tmp:
        tmp.write_bytes(_public_pem(key.public_key()))
        os.chmod(tmp, 0o644)


def public_key_sha256(public_key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the PEM SubjectPublicKeyInfo: the key hint model-signing puts in a signature."""
    return hashlib.sha256(_public_pem(public_key)).hexdigest()


def _public_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def password_bytes(password: bytes | str | None) -> bytes | None:
    # model-signing's hint says str, but cryptography only takes bytes (a str crashes it).
    return password.encode("utf-8") if isinstance(password, str) else password


def load_private_key(path: Path, password: bytes | None) -> ec.EllipticCurvePrivateKey:
    """The EC private key at ``path`` (PEM), or a SignatureError/UsageError saying what to do."""
    if not path.is_file():
        raise UsageError(f"signing key {path} does not exist", hint=_KEY_HINT)
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError as exc:  # cryptography's way of saying "password missing / not expected"
        if password is None:
            raise SignatureError(
                f"signing key {path} is encrypted and no password was given",
                hint="name the environment variable holding it with {password_env} VAR",
                options=("password_env",),
            ) from exc
        raise SignatureError(
            f"signing key {path} is not encrypted but a password was given",
            hint="drop {password_env}",
            options=("password_env",),
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if password is not None and b"ENCRYPTED" in data:
            raise SignatureError(
                f"wrong password for signing key {path}",
                hint="check the environment variable named by {password_env}",
                options=("password_env",),
            ) from exc
        raise SignatureError(
            f"{path} is not a PEM private key ({exc})", hint=f"pass the .key file; {_KEY_HINT}"
        ) from exc
    _check_curve(key, path, "signing key")
    return key  # type: ignore[return-value]


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    if not path.is_file():
        raise UsageError(f"public key {path} does not exist", hint="pass the .pub file")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm) as exc:
        hint = "pass the .pub file, not the private key" if b"PRIVATE" in path.read_bytes() else ""
        raise SignatureError(
            f"{path} is not a PEM public key ({exc})", hint=hint or "pass the .pub file"
        ) from exc
    _check_curve(key, path, "public key")
    return key  # type: ignore[return-value]


def _check_curve(key: Any, path: Path, what: str) -> None:
    curve = getattr(key, "curve", None)
    if curve is None or curve.name not in _SUPPORTED_CURVES:
        name = type(key).__name__
        kind = curve.name if curve is not None else name.removesuffix("PrivateKey")
        kind = kind.removesuffix("PublicKey")
        raise SignatureError(
            f"{what} {path} holds a key of type {kind}; model-signing signs with EC keys on P-256, "
            "P-384 or P-521 only",
            hint=_KEY_HINT,
        )


def hash_for(key: ec.EllipticCurvePublicKey) -> type[hashes.HashAlgorithm]:
    """The hash model-signing signs with on ``key``'s curve."""
    return _CURVE_HASH[key.curve.key_size]
