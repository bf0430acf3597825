"""Load a deployed model from whatever the site has, and save revised weights beside their card.

Formats, detected from the file's content and checked against its name:

* a folder written by :func:`save_model` (``model.safetensors`` + ``card.json``, plus the
  original ``graph.ts`` / ``graph.onnx`` / ``graph.pt2`` for opaque graphs);
* ``X.safetensors`` with a card (``card=``, ``X.card.json`` or ``card.json`` beside it);
* ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` state dicts (``torch.load(weights_only=True)`` only;
  a pickled whole model is refused) with a card or ``architecture=``;
* TorchScript (``.ts``, or a ``.pt`` / ``.pth`` TorchScript archive);
* torch.export programs (``.pt2``);
* ONNX (``.onnx``, converted to PyTorch with onnx2torch);
* a MONAI-bundle-like folder (``configs/metadata.json`` + ``models/model.ts`` or
  ``models/model.pt``).

Every failure is a :class:`~revise.errors.ModelError` that names the file, says what was
expected and how to fix it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import pickle
import shutil
import sys
import types
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revise._io import atomic_path, sha256_file
from revise.errors import ModelError, RevisionError
from revise.models.architectures import OPAQUE_ARCHITECTURES, build
from revise.models.card import ModelCard

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
GRAPH_FILES = {"torchscript": "graph.ts", "onnx": "graph.onnx", "torch_export": "graph.pt2"}

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


@dataclass
class LoadedModel:
    """A model ready for inference: ``module`` is in eval mode on the CPU."""

    module: nn.Module
    card: ModelCard
    path: Path
    format: str


# --------------------------------------------------------------------------------------------
# digests


def weights_digest(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted state-dict names, dtypes, shapes and tensor bytes."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# sniffing: what a file really is


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
            hint += " and pass --card or --architecture"
    else:
        hint = f"the file is damaged or not a model; re-export or copy it again as {want}"
    return ModelError(
        f"{path} is named {path.suffix} so it should be {want}, but it is {_describe(path, kind)}",
        hint=hint,
    )


# --------------------------------------------------------------------------------------------
# cards


def _as_card(card: ModelCard | str | os.PathLike | None) -> ModelCard | None:
    if card is None or isinstance(card, ModelCard):
        return card
    return ModelCard.load(card)


def _card_beside(path: Path) -> ModelCard | None:
    """``X.card.json`` beside ``X.ext``, else ``card.json`` in the same folder."""
    for candidate in (path.with_name(f"{path.stem}.card.json"), path.with_name(CARD_FILE)):
        if candidate.is_file():
            log.info("using model card %s", candidate)
            return ModelCard.load(candidate)
    return None


def _with_source(card: ModelCard, source_format: str, sha: str, **changes: Any) -> ModelCard:
    return dataclasses.replace(card, source_format=source_format, source_sha256=sha, **changes)


# --------------------------------------------------------------------------------------------
# state dicts


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    kind = _sniff(path)
    if kind != "safetensors":
        raise _wrong_claim(path, ("safetensors",), kind)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"{path} looks like safetensors but cannot be read: {exc}",
            hint="the file is truncated or damaged; copy it again",
        ) from exc


def _read_torch_save(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a torch.save file, unpickled with ``weights_only=True`` only."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            raise ModelError(
                f"{path} holds pickled Python objects (probably a whole model), which revise will "
                "not unpickle: loading them could run arbitrary code",
                hint="save model.state_dict() (or safetensors) and pass --architecture/--card, "
                "or export TorchScript / torch.export / ONNX",
            ) from None
        raise ModelError(
            f"{path} is not a readable torch.save checkpoint: {str(exc).splitlines()[0]}",
            hint="copy the file again or re-save it with torch.save(model.state_dict(), path)",
        ) from None
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model", "network", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(
            f"{path} does not hold a state dict (found {type(obj).__name__})",
            hint="save model.state_dict() with torch.save or safetensors",
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"{path}: state dict entries that are not tensors: {', '.join(bad[:5])}",
            hint="save model.state_dict() only",
        )
    state = {str(k): v for k, v in obj.items()}
    for prefix in ("module.", "_orig_mod."):  # DataParallel / torch.compile wrappers
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _fit_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path, what: str):
    """Load ``state`` into ``module`` strictly, explaining any misfit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if keys:
                more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
        raise ModelError(
            f"weights in {source} do not fit {what}: {'; '.join(parts)}",
            hint="check the card's architecture, in_channels, num_classes and arch_kwargs "
            "(or pass --architecture)",
        )
    full = dict(state)
    for k, v in expected.items():
        full.setdefault(k, v)  # only num_batches_tracked can be absent here
    module.load_state_dict(full, strict=True)


def _infer_card_from_state(state: Mapping[str, torch.Tensor], architecture: str) -> ModelCard:
    """in_channels from the first conv weight, num_classes from the last 2-D / 1x1 weight."""
    in_channels = num_classes = None
    for v in state.values():
        if v.ndim == 4:
            in_channels = int(v.shape[1])
            break
    for k, v in state.items():
        if k.endswith("weight") and (v.ndim == 2 or (v.ndim == 4 and v.shape[-2:] == (1, 1))):
            num_classes = int(v.shape[0])
    if in_channels is None or num_classes is None:
        raise ModelError(
            "cannot tell in_channels / num_classes from the weights alone",
            hint="pass --card CARD.json",
        )
    log.warning(
        "no model card: inferred in_channels=%d, num_classes=%d; mean/std assumed 0/1",
        in_channels,
        num_classes,
    )
    return ModelCard(
        architecture=architecture,
        num_classes=num_classes,
        in_channels=in_channels,
        description="inferred by revise from the weights: check input_size, mean, std",
    )


def _weights_module(
    state: Mapping[str, torch.Tensor],
    path: Path,
    card: ModelCard | None,
    architecture: str | None,
    source_format: str,
    sha: str,
) -> tuple[nn.Module, ModelCard]:
    card = card or _card_beside(path)
    if card is None:
        if architecture is None:
            raise ModelError(
                f"{path} holds weights only; revise needs to know the architecture",
                hint=f"pass --card CARD.json, put {path.stem}.card.json beside it, "
                "or pass --architecture",
            )
        card = _infer_card_from_state(state, architecture)
    if architecture is not None:
        card = dataclasses.replace(card, architecture=architecture)
    if card.architecture in OPAQUE_ARCHITECTURES:
        raise ModelError(
            f"{path} holds weights only, but its card names a {card.architecture} graph",
            hint="pass --architecture with a registered architecture",
        )
    card = _with_source(card, source_format, sha)
    module = build(card)
    _fit_state_dict(module, state, path, f"architecture {card.architecture!r}")
    return module, card


# --------------------------------------------------------------------------------------------
# opaque graphs


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _mark_graph(module: nn.Module, kind: str, path: Path, sha: str) -> None:
    """Remember the graph file a module came from, so save_model can ship it again."""
    entry = (kind, str(path.resolve()), sha)
    meta = getattr(module, "meta", None)
    if isinstance(meta, dict):
        meta["revise_graph"] = entry  # fx.GraphModule keeps .meta across deepcopy
    with contextlib.suppress(Exception):
        object.__setattr__(module, "_revise_graph", entry)


def _graph_of(module: nn.Module) -> tuple[str, str, str] | None:
    meta = getattr(module, "meta", None)
    if isinstance(meta, dict) and "revise_graph" in meta:
        return meta["revise_graph"]
    return getattr(module, "_revise_graph", None)


def _load_torchscript(path: Path) -> nn.Module:
    kind = _sniff(path)
    if kind != "torchscript":
        raise _wrong_claim(path, ("torchscript",), kind)
    try:
        with _quiet():
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(
            f"{path} is a TorchScript archive but cannot be loaded: {str(exc).splitlines()[0]}",
            hint="it may need custom ops or a newer PyTorch; export it as ONNX or torch.export",
        ) from None


def _fixed_mode_train(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        log.warning(
            "a torch.export graph keeps the train/eval behaviour it was exported with "
            "(BatchNorm, Dropout); train() only sets the flag"
        )
    for m in self.modules():
        m.training = mode
    return self


def _fixed_mode_eval(self: nn.Module) -> nn.Module:
    return _fixed_mode_train(self, False)


def _load_torch_export(path: Path) -> tuple[nn.Module, tuple[int, ...] | None]:
    kind = _sniff(path)
    if kind != "torch_export":
        raise _wrong_claim(path, ("torch_export",), kind)
    try:
        with _quiet():
            program = torch.export.load(str(path))
            module = program.module()
    except Exception as exc:
        raise ModelError(
            f"{path} is a torch.export archive but cannot be loaded: {str(exc).splitlines()[0]}",
            hint="it may come from another PyTorch version; re-export it or use ONNX",
        ) from None
    # .module() refuses train()/eval(); callers (and nn.Module.eval of a parent) need them.
    module.train = types.MethodType(_fixed_mode_train, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(_fixed_mode_eval, module)  # type: ignore[method-assign]
    shape = None
    try:
        user = program.graph_signature.user_inputs
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user:
                val = node.meta.get("val")
                shape = tuple(d if isinstance(d, int) else -1 for d in val.shape)
                break
    except Exception:
        shape = None
    return module, shape


_ONNX2TORCH: Any = None


def _import_onnx2torch() -> Any:
    """Import onnx2torch; it imports torchvision at import time, which revise does not need."""
    global _ONNX2TORCH
    if _ONNX2TORCH is not None:
        return _ONNX2TORCH
    stubbed: list[str] = []
    if importlib.util.find_spec("torchvision") is None:

        def _needs_torchvision(*args: Any, **kwargs: Any) -> Any:
            raise ModelError(
                "this ONNX graph uses a torchvision operator (NMS / RoIAlign)",
                hint="install torchvision, or provide safetensors + --architecture",
            )

        tv = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        for name in ("roi_align", "nms", "box_convert", "batched_nms", "roi_pool"):
            setattr(ops, name, _needs_torchvision)
        tv.ops = ops  # type: ignore[attr-defined]
        for name, mod in (("torchvision", tv), ("torchvision.ops", ops)):
            sys.modules[name] = mod
            stubbed.append(name)
    try:
        with _quiet():
            import onnx2torch
    except ImportError as exc:
        raise ModelError(
            f"loading ONNX needs onnx2torch, which is not importable: {exc}",
            hint="pip install --no-deps onnx2torch, or provide safetensors + --architecture",
        ) from None
    finally:
        # The stub served onnx2torch's own imports; leave no fake torchvision behind for others.
        for name in stubbed:
            sys.modules.pop(name, None)
    _ONNX2TORCH = onnx2torch
    return onnx2torch


def _unsupported_onnx_ops(proto: Any) -> list[str]:
    """Node op types onnx2torch has no converter for (empty if its registry is not readable)."""
    try:
        from onnx2torch.node_converters import get_converter
    except ImportError:
        return []
    versions = {(o.domain or ""): o.version for o in proto.opset_import}
    missing: dict[str, None] = {}
    for node in proto.graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        try:
            get_converter(node.op_type, versions.get(domain, 1), domain)
        except NotImplementedError:
            label = f"{domain}::{node.op_type}" if domain else node.op_type
            missing[f"{label} (opset {versions.get(domain, '?')})"] = None
        except Exception:
            continue
    return list(missing)


def _onnx_input_shape(proto: Any) -> tuple[int, ...] | None:
    inits = {i.name for i in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    return None


def _load_onnx(path: Path) -> tuple[nn.Module, tuple[int, ...] | None]:
    import onnx

    kind = _sniff(path)
    if kind not in ("unknown", "text") or not _looks_like_onnx(path):
        raise _wrong_claim(path, ("onnx",), kind)
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ModelError(
            f"{path} is not a valid ONNX model: {str(exc).splitlines()[0]}",
            hint="re-export it, and keep any external data file (X.onnx.data) beside it",
        ) from None
    o2t = _import_onnx2torch()
    fix = "export with opset <= 16 (torch.onnx.export(..., dynamo=False, opset_version=16)) or "
    fix += "provide safetensors weights + --architecture"
    missing = _unsupported_onnx_ops(proto)
    if missing:
        raise ModelError(
            f"{path}: onnx2torch cannot convert operator(s) {', '.join(missing)}",
            hint=fix,
        )
    try:
        with _quiet():
            module = o2t.convert(proto)
    except Exception as exc:
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelError(
            f"{path}: onnx2torch cannot convert this graph: {message}", hint=fix
        ) from None
    return module, _onnx_input_shape(proto)


def _trial_classes(module: nn.Module, shape: tuple[int, int, int], path: Path) -> int:
    """Run a zero batch through ``module``; its output must be (N, num_classes) logits."""
    out: Any = None
    error: Exception | None = None
    for batch in (2, 1):
        try:
            with torch.no_grad(), _quiet():
                out = module(torch.zeros(batch, *shape))
            error = None
            break
        except Exception as exc:
            error = exc
    if error is not None:
        raise ModelError(
            f"{path}: the model fails on a zero input of shape (N, {', '.join(map(str, shape))}): "
            f"{' '.join(str(error).split())[:300]}",
            hint="check in_channels and input_size in the card (--card CARD.json)",
        )
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"{path}: the model returns {got}, not (N, num_classes) logits",
            hint="revise handles image classifiers whose output is one logits tensor",
        )
    return int(out.shape[1])


def _opaque_card(
    module: nn.Module,
    path: Path,
    kind: str,
    card: ModelCard | None,
    graph_shape: tuple[int, ...] | None,
    input_shape: tuple[int, int, int] | None,
    sha: str,
) -> ModelCard:
    """The card for a graph: the given one (checked by a trial run) or a minimal inferred one."""
    if card is not None:
        shape = (card.in_channels, *card.input_size)
        classes = _trial_classes(module, shape, path)
        if classes != card.num_classes:
            raise ModelError(
                f"{path} predicts {classes} classes but its card says {card.num_classes}",
                hint="fix num_classes / class_names in the card",
            )
        return _with_source(card, kind, sha, architecture=kind, arch_kwargs={})
    if input_shape is not None:
        shape = tuple(int(v) for v in input_shape)
    elif graph_shape is not None and len(graph_shape) == 4 and min(graph_shape[1:]) > 0:
        shape = tuple(int(v) for v in graph_shape[1:])
    else:
        raise ModelError(
            f"{path}: cannot tell the input channels and size of this {kind} model",
            hint="pass --card CARD.json (architecture, num_classes, in_channels, input_size, "
            "mean, std)",
        )
    if len(shape) != 3:
        raise ModelError(f"input shape must be (channels, height, width), got {shape}")
    classes = _trial_classes(module, shape, path)  # type: ignore[arg-type]
    log.warning(
        "no model card for %s: inferred in_channels=%d, input_size=%s, num_classes=%d; "
        "mean/std assumed 0/1 - pass --card if the model expects normalised input",
        path,
        shape[0],
        shape[1:],
        classes,
    )
    return ModelCard(
        architecture=kind,
        num_classes=classes,
        in_channels=shape[0],
        input_size=(shape[1], shape[2]),
        source_format=kind,
        source_sha256=sha,
        description="inferred by revise from the graph: check mean, std and pixel_range",
    )


def _load_graph(path: Path, kind: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    if kind == "torchscript":
        return _load_torchscript(path), None
    if kind == "torch_export":
        return _load_torch_export(path)
    if kind == "onnx":
        return _load_onnx(path)
    raise ModelError(f"{path}: unknown graph kind {kind!r}")


# --------------------------------------------------------------------------------------------
# folders


def _load_revise_folder(
    folder: Path, card: ModelCard | None, architecture: str | None
) -> tuple[nn.Module, ModelCard]:
    weights = folder / WEIGHTS_FILE
    card = card or ModelCard.load(folder / CARD_FILE)
    if architecture is not None and card.architecture not in OPAQUE_ARCHITECTURES:
        card = dataclasses.replace(card, architecture=architecture)
    state = _read_safetensors(weights)
    if card.architecture in OPAQUE_ARCHITECTURES:
        graph = folder / GRAPH_FILES[card.architecture]
        if not graph.is_file():
            raise ModelError(
                f"{folder}: the card names a {card.architecture} graph but {graph.name} is missing",
                hint="save the model again with revise (save_model copies the graph)",
            )
        module, _ = _load_graph(graph, card.architecture)
        _fit_state_dict(module, state, weights, f"the graph {graph.name}")
        _mark_graph(module, card.architecture, graph, sha256_file(graph))
    else:
        module = build(card)
        _fit_state_dict(module, state, weights, f"architecture {card.architecture!r}")
    if not card.source_sha256:
        card = dataclasses.replace(card, source_sha256=sha256_file(weights))
    return module, card


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _monai_card(folder: Path, architecture: str) -> ModelCard | None:
    """A best-effort card from a MONAI bundle's configs/metadata.json (None if not enough)."""
    try:
        meta = json.loads((folder / "configs" / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{folder}/configs/metadata.json is not readable JSON: {exc}",
            hint="fix the bundle or pass --card",
        ) from None
    fmt = meta.get("network_data_format") or {}
    inputs = list((fmt.get("inputs") or {}).values())
    outputs = list((fmt.get("outputs") or {}).values())
    if not inputs or not outputs:
        return None
    inp, out = inputs[0], outputs[0]
    in_channels = _int_or_none(inp.get("num_channels"))
    num_classes = _int_or_none(out.get("num_channels"))
    spatial = [_int_or_none(v) for v in inp.get("spatial_shape") or []]
    if in_channels is None or num_classes is None:
        return None
    names: list[str] = []
    channel_def = out.get("channel_def") or {}
    if isinstance(channel_def, dict) and len(channel_def) == num_classes:
        names = [str(channel_def[k]) for k in sorted(channel_def, key=lambda k: int(k))]
    kwargs: dict[str, Any] = {}
    if len(spatial) == 2 and all(spatial):
        kwargs["input_size"] = tuple(spatial)
    return ModelCard(
        architecture=architecture,
        num_classes=num_classes,
        in_channels=in_channels,
        class_names=names,
        description=str(meta.get("name") or meta.get("description") or "MONAI bundle"),
        **kwargs,
    )


def _load_monai_bundle(
    folder: Path,
    card: ModelCard | None,
    architecture: str | None,
    input_shape: tuple[int, int, int] | None,
) -> tuple[nn.Module, ModelCard, Path]:
    ts, pt = folder / "models" / "model.ts", folder / "models" / "model.pt"
    if ts.is_file():
        module = _load_torchscript(ts)
        sha = sha256_file(ts)
        card = card or _monai_card(folder, "torchscript")
        card = _opaque_card(module, ts, "torchscript", card, None, input_shape, sha)
        _mark_graph(module, "torchscript", ts, sha)
        return module, card, ts
    if pt.is_file():
        sha = sha256_file(pt)
        kind = _sniff(pt)
        if kind == "torchscript":
            module = _load_torchscript(pt)
            card = card or _monai_card(folder, "torchscript")
            card = _opaque_card(module, pt, "torchscript", card, None, input_shape, sha)
            _mark_graph(module, "torchscript", pt, sha)
            return module, card, pt
        if kind != "torch_save":
            raise _wrong_claim(pt, ("torch_save",), kind)
        state = _read_torch_save(pt)
        card = card or _monai_card(folder, architecture or "")
        if card is not None and not card.architecture and architecture is None:
            raise ModelError(
                f"{pt} holds weights only; revise needs to know the architecture",
                hint="pass --architecture or --card",
            )
        module, card = _weights_module(state, pt, card, architecture, "monai_bundle", sha)
        return module, card, pt
    raise ModelError(
        f"{folder} looks like a MONAI bundle but has neither models/model.ts nor models/model.pt",
        hint="point revise at the model file itself",
    )


# --------------------------------------------------------------------------------------------
# public API


def load_model(
    path: str | os.PathLike,
    *,
    card: ModelCard | str | os.PathLike | None = None,
    architecture: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> LoadedModel:
    """Load a model from a file or folder; see the module docstring for the formats.

    ``card`` (a ModelCard or a card JSON path) overrides any card found beside the file;
    ``architecture`` overrides the card's architecture for weights-only files. ``input_shape``
    ``(channels, height, width)`` lets a graph without a card be probed for its class count.
    """
    path = Path(path)
    given = _as_card(card)
    if not path.exists():
        raise ModelError(f"model {path} does not exist", hint="check the path")
    if path.is_dir():
        if (path / WEIGHTS_FILE).exists() or (path / CARD_FILE).exists():
            for needed in (WEIGHTS_FILE, CARD_FILE):
                if not (path / needed).is_file() and not (needed == CARD_FILE and given):
                    raise ModelError(
                        f"{path} is a revise model folder without {needed}",
                        hint="the save was interrupted: save the model again",
                    )
            module, out_card = _load_revise_folder(path, given, architecture)
            fmt = "revise_folder"
        elif (path / "configs" / "metadata.json").is_file():
            module, out_card, _ = _load_monai_bundle(path, given, architecture, input_shape)
            fmt = "monai_bundle"
        else:
            raise ModelError(
                f"{path} is a folder but neither a revise model folder ({WEIGHTS_FILE} + "
                f"{CARD_FILE}) nor a MONAI bundle (configs/metadata.json)",
                hint="point revise at the model file itself",
            )
        return _finish(module, out_card, path, fmt)

    suffix = path.suffix.lower()
    expected = _SUFFIX_KINDS.get(suffix)
    kind = _content_kind(path) if expected != ("onnx",) else "onnx"
    if expected is not None and kind not in expected:
        raise _wrong_claim(path, expected, kind)
    if kind not in _KIND_SUFFIX:
        raise ModelError(
            f"{path} is {_describe(path, kind)}, not a model revise can read",
            hint="supported: folder from revise, .safetensors, .pt/.pth state dict, "
            "TorchScript .ts, torch.export .pt2, .onnx",
        )
    sha = sha256_file(path)
    if kind in _WEIGHTS_ONLY_KINDS:
        state = _read_safetensors(path) if kind == "safetensors" else _read_torch_save(path)
        fmt = "safetensors" if kind == "safetensors" else "state_dict"
        module, out_card = _weights_module(state, path, given, architecture, fmt, sha)
        return _finish(module, out_card, path, fmt)

    module, graph_shape = _load_graph(path, kind)
    if architecture is not None:
        log.warning("%s is a %s graph; --architecture %s is ignored", path, kind, architecture)
    out_card = _opaque_card(
        module, path, kind, given or _card_beside(path), graph_shape, input_shape, sha
    )
    _mark_graph(module, kind, path, sha)
    return _finish(module, out_card, path, kind)


def _finish(module: nn.Module, card: ModelCard, path: Path, fmt: str) -> LoadedModel:
    module = module.to("cpu")
    module.eval()
    return LoadedModel(module=module, card=card, path=path, format=fmt)


def _graph_source(model: nn.Module, kind: str, graph: str | os.PathLike | None) -> Path | None:
    """The original graph file for an opaque model (None: re-serialise a ScriptModule)."""
    if graph is not None:
        src = Path(graph)
        if not src.is_file():
            raise ModelError(f"graph file {src} does not exist", hint="check the graph= path")
        return src
    entry = _graph_of(model)
    if entry is not None:
        src_kind, src, sha = entry
        src_path = Path(src)
        if src_kind == kind and src_path.is_file() and sha256_file(src_path) == sha:
            return src_path
    if kind == "torchscript" and isinstance(model, torch.jit.ScriptModule):
        return None
    raise ModelError(
        f"cannot find the original {kind} graph this model was loaded from",
        hint="pass graph=PATH to save_model (the file the model was first loaded from)",
    )


def _write_graph(model: nn.Module, kind: str, src: Path | None, target: Path) -> None:
    if src is not None and src.resolve() == target.resolve():
        return
    with atomic_path(target) as tmp:
        if src is None:
            with _quiet():
                torch.jit.save(model, str(tmp))  # type: ignore[arg-type]
        elif kind == "onnx":
            import onnx
            from onnx.external_data_helper import uses_external_data

            proto = onnx.load(str(src), load_external_data=False)
            if any(uses_external_data(t) for t in proto.graph.initializer):
                proto = onnx.load(str(src))  # pull the external data in: ship one file
                onnx.save_model(proto, str(tmp), save_as_external_data=False)
            else:
                shutil.copyfile(src, tmp)
        else:
            shutil.copyfile(src, tmp)


def save_model(
    model: nn.Module,
    card: ModelCard,
    folder: str | os.PathLike,
    *,
    graph: str | os.PathLike | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``card.json`` (and the graph for opaque models) to ``folder``.

    Each file is written atomically. ``card.source_sha256`` is kept as the digest of the file the
    model was first loaded from; use :func:`weights_digest` to identify the weights themselves.
    For TorchScript / ONNX / torch.export models the original graph file is copied beside the
    weights (found from the loaded module, or given as ``graph``) so that :func:`load_model`
    rebuilds the module from it and loads the new weights over it.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ModelError(f"{folder} exists and is not a folder", hint="choose another output path")
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"cannot save state entry {name!r}: it is not a tensor")
        tensors[name] = value.detach().to("cpu").contiguous().clone()  # clone: no shared storage
    try:
        kind = card.architecture if card.architecture in OPAQUE_ARCHITECTURES else None
        src = _graph_source(model, kind, graph) if kind else None
        folder.mkdir(parents=True, exist_ok=True)
        if kind:
            _write_graph(model, kind, src, folder / GRAPH_FILES[kind])
        for other, name in GRAPH_FILES.items():
            if other != kind and (folder / name).exists():
                (folder / name).unlink()  # a stale graph from an earlier save
        with atomic_path(folder / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        card.save(folder / CARD_FILE)
    except RevisionError:
        raise
    except OSError as exc:
        raise ModelError(f"cannot write the model to {folder}: {exc}") from exc
    return folder
