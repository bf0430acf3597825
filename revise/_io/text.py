"""Text inputs: a file that is not UTF-8, and a JSON file that must hold an object, as errors
naming the file (never its bytes: they may spell a patient's name)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from revise.errors import RevisionError, UsageError


def not_utf8(
    path: str | os.PathLike,
    what: str,
    kind: type[RevisionError] = UsageError,
    *,
    data: bytes | None = None,
    hint: str = "save it as UTF-8",
) -> RevisionError:
    """The error (of ``kind``) for a text input that is not UTF-8: the file and its first bad
    line, never the bytes (they may spell a patient's name). ``data``: the bytes, if read."""
    where = ""
    try:
        (Path(path).read_bytes() if data is None else data).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        where = f" line {line}"
    except OSError:
        pass
    return kind(f"{what} {path}{where} is not UTF-8 text", hint=hint)


def read_json_object(
    path: str | os.PathLike, what: str, kind: type[RevisionError], *, hint: str
) -> dict[str, Any]:
    """A JSON file that must hold an object (a run record, ...); not UTF-8, not JSON or not an
    object is an error of ``kind`` naming the file, with ``hint``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise not_utf8(path, what, kind, hint=hint) from None
    except ValueError as exc:
        raise kind(f"{path} is not valid JSON ({exc})", hint=hint) from None
    if not isinstance(data, dict):
        raise kind(f"{path} is not a JSON object (it holds a {type(data).__name__})", hint=hint)
    return data
