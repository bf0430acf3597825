"""An ONNX file as revise reads and writes it: loaded (or refused naming the file), its
metadata_props read and merged, its graph digested without them, and written as ONE file
checked by onnx.checker."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from revise._io.atomic import atomic_path
from revise.errors import ExportError

_PROTOBUF_LIMIT = 2**31 - 1


def load_proto(path: str | os.PathLike, *, external_data: bool = True) -> Any:
    """The ONNX model at ``path``, or an ExportError naming the file."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ExportError(
            f"{path} is not a readable ONNX model: {first}",
            hint="give the model.onnx of a bundle from `revise export`, copied whole",
        ) from None


def merge_props(proto: Any, metadata: dict[str, str], drop: Iterable[str] = ()) -> dict[str, str]:
    """Merge into metadata_props by hand (onnx.helper.set_model_props drops existing ones),
    leaving out the keys ``drop`` (e.g. the legacy names of keys being rewritten)."""
    dropped = set(drop)
    props = {p.key: p.value for p in proto.metadata_props if p.key not in dropped}
    props.update({str(k): str(v) for k, v in metadata.items()})
    del proto.metadata_props[:]
    for key in sorted(props):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, props[key]
    return props


def serialize_one_file(proto: Any) -> bytes:
    """``proto`` as the bytes of one self-contained file (no external data, under 2 GiB)."""
    from onnx.external_data_helper import uses_external_data

    tensors = list(proto.graph.initializer)
    if any(uses_external_data(t) for t in tensors):
        raise ExportError("the exported graph still refers to external data; cannot ship one file")
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise ExportError(
            "the model is over 2 GiB, too large for a single-file ONNX model",
            hint="reduce the model or ship ONNX with external data",
        )
    return proto.SerializeToString()


def check_file(path: Path) -> None:
    """onnx.checker's full check of the file at ``path``, as an ExportError."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {exc}") from exc


def set_metadata(
    path: str | os.PathLike, metadata: dict[str, str], drop: Iterable[str] = ()
) -> dict[str, str]:
    """Merge ``metadata`` into an ONNX file's metadata_props (existing keys kept but those in
    ``drop``), atomically."""
    path = Path(path)
    proto = load_proto(path)
    merged = merge_props(proto, metadata, drop)
    data = serialize_one_file(proto)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        check_file(tmp)
    return merged


def graph_digest(path: str | os.PathLike) -> str:
    """sha256 of an ONNX model without its metadata_props: stays the same when provenance or
    a validation verdict is added, changes with any change to the graph or the weights."""
    proto = load_proto(path)
    del proto.metadata_props[:]
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata_props of an ONNX file."""
    proto = load_proto(path, external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
