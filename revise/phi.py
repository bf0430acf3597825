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
import tempfile
from pathlib import Path

from revise.errors import RevisionError

# Shorter keys make the pseudonyms guessable (an empty key file made them unkeyed hashes).
MIN_KEY_BYTES = 16


def _key_file() -> Path:
    return Path(os.environ.get("REVISE_PHI_KEY_FILE", Path.home() / ".revise" / "phi.key"))


def site_key() -> bytes:
    """The site's pseudonymisation key (created once, kept private to the user)."""
    env = os.environ.get("REVISE_PHI_KEY")
    if env:
        return env.encode("utf-8")
    path = _key_file()
    if not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def _create_key_file(path: Path) -> None:
    """Write a new random key beside ``path`` and hard-link it into place.

    The link appears complete or not at all (a crash leaves no empty key), and it never
    replaces a key that another process (e.g. another torchrun worker) made first: then that
    key is the site's key and ours is dropped.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise _key_error(path, f"cannot be created: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp made it 0600: private to the user
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: read its key
        except OSError as exc:
            raise _key_error(path, f"cannot be created: {exc.strerror or exc}") from exc
    finally:
        os.unlink(tmp)


def _read_key_file(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise _key_error(path, f"is not readable: {exc.strerror or exc}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise _key_error(
            path, f"holds {len(key)} bytes, fewer than the {MIN_KEY_BYTES} a key needs"
        )
    return key


def _key_error(path: Path, problem: str) -> RevisionError:
    return RevisionError(
        f"PHI key file {path} {problem}",
        hint="restore the site's key file from its backup, or set REVISE_PHI_KEY; removing the "
        "file makes a new key, and manifests indexed under the old one must then be re-indexed",
    )


def key_fingerprint(key: bytes | None = None) -> str:
    """A short public fingerprint of the key, so records say which key made their pseudonyms."""
    key = site_key() if key is None else key
    return hashlib.sha256(b"revise-key-fingerprint" + key).hexdigest()[:12]


def pseudonym(value: str, *, kind: str = "patient", key: bytes | None = None) -> str:
    """HMAC-SHA256 pseudonym of an identifier, e.g. ``p-3f9a0c…`` (kind initial + 16 hex digits)."""
    key = site_key() if key is None else key
    digest = hmac.new(key, f"{kind}\x00{value.strip()}".encode(), hashlib.sha256).hexdigest()
    return f"{kind[:1]}-{digest[:16]}"
