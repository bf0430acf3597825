"""What a model file really is: its content kind, sniffed from the bytes, checked against the
kind its name claims, and the error that explains a mismatch.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from revise.errors import ModelError

# What a file name claims -> content kinds that honour the claim.
_SUFFIX_KINDS: dict[str, tuple[str, ...]] = {
    ".safetensors": ("safetensors",),
    ".ts": ("torchscript",),
    ".jit": ("torchscript",),
    ".pt": ("torchscript", "torch_save"),
    ".pth": ("torchscript", "torch_save"),
    ".bin": ("torch_save",),
    ".ckpt": ("torch_save",),
    ".pt2": ("torch_export",),
    ".onnx": ("onnx",),
}
_KIND_WORDS = {
    "safetensors": "a safetensors weights file",
    "torchscript": "a TorchScript archive",
    "torch_save": "a torch.save checkpoint (state dict)",
    "torch_export": "a torch.export program",
    "onnx": "an ONNX model",
    "zip": "a zip archive that is no PyTorch format",
    "text": "a text file",
    "empty": "an empty file",
    "unknown": "unrecognised binary data",
}
_KIND_SUFFIX = {
    "safetensors": ".safetensors",
    "torchscript": ".ts",
    "torch_save": ".pt",
    "torch_export": ".pt2",
    "onnx": ".onnx",
}
_WEIGHTS_ONLY_KINDS = ("safetensors", "torch_save")


def _sniff(path: Path) -> str:
    """The content kind of ``path`` (see ``_KIND_WORDS``); ONNX is not sniffed here."""
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
            return "torch_export"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch_save"
        return "zip"
    if size >= 10:  # before the pickle test: a header length can start with byte 0x80
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch_save"  # legacy (pre-zip) torch.save pickle
    if b"\0" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError:
            pass
    return "unknown"


def _looks_like_onnx(path: Path) -> bool:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return proto.ir_version > 0 and len(proto.graph.node) > 0


def _content_kind(path: Path) -> str:
    kind = _sniff(path)
    if kind == "unknown" and _looks_like_onnx(path):
        return "onnx"
    return kind


def _describe(path: Path, kind: str) -> str:
    words = _KIND_WORDS.get(kind, kind)
    if kind == "text":
        with open(path, "rb") as f:
            snippet = f.read(40).decode("utf-8", "replace").strip().splitlines()
        if snippet:
            words += f" starting {snippet[0][:40]!r}"
    return words


def _wrong_claim(path: Path, expected: tuple[str, ...], kind: str) -> ModelError:
    want = " or ".join(_KIND_WORDS[k] for k in expected)
    if kind in _KIND_SUFFIX:
        hint = f"it is {_KIND_WORDS[kind]}: rename it to {path.stem}{_KIND_SUFFIX[kind]}"
        if kind in _WEIGHTS_ONLY_KINDS:
            hint += " and pass {card} or {arch}"
    else:
        hint = f"the file is damaged or not a model; re-export or copy it again as {want}"
    return ModelError(
        f"{path} is named {path.suffix} so it should be {want}, but it is {_describe(path, kind)}",
        hint=hint,
        options=("card", "arch"),
    )
