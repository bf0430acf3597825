"""Keyed hashing of patient identifiers: outputs carry only these keys, never names or IDs.

The key is a site secret: ``REVISE_PHI_KEY`` (any string) or a key file (``REVISE_PHI_KEY_FILE``,
default ``~/.revise/phi.key``) created with 32 random bytes on first use. Without the key the
hashes cannot be linked back to patients by dictionary attack; with the same key, the same
patient gets the same pseudonym in every manifest of the site, so selections by patient work.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def _key_file() -> Path:
    return Path(os.environ.get("REVISE_PHI_KEY_FILE", Path.home() / ".revise" / "phi.key"))


def site_key() -> bytes:
    """The site's pseudonymisation key (created once, kept private to the user)."""
    env = os.environ.get("REVISE_PHI_KEY")
    if env:
        return env.encode("utf-8")
    path = _key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def key_fingerprint(key: bytes | None = None) -> str:
    """A short public fingerprint of the key, so records say which key made their pseudonyms."""
    key = site_key() if key is None else key
    return hashlib.sha256(b"revise-key-fingerprint" + key).hexdigest()[:12]


def pseudonym(value: str, *, kind: str = "patient", key: bytes | None = None) -> str:
    """HMAC-SHA256 pseudonym of an identifier, e.g. ``p-3f9a0c…`` (kind initial + 16 hex digits)."""
    key = site_key() if key is None else key
    digest = hmac.new(key, f"{kind}\x00{value.strip()}".encode(), hashlib.sha256).hexdigest()
    return f"{kind[:1]}-{digest[:16]}"
