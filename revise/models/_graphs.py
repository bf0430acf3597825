"""Opaque graphs (TorchScript, torch.export): loading them, remembering the file a module came
from so that save_model can ship it again, and checking (or inferring) their card by a trial run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revise._io.atomic import atomic_path
from revise._io.digests import sha256_file
from revise.errors import ModelError
from revise.models._cards import _with_source
from revise.models._output_wrappers import LogitsOf
from revise.models._pt2 import load_program
from revise.models._sniff import _sniff, _wrong_claim
from revise.models.card import ModelCard

# Log under the public module's name: users see revise.models.io, not this private module.
log = logging.getLogger("revise.models.io")


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
    if isinstance(module, LogitsOf):
        module = module.net
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
    program = load_program(path)  # reads only what runs no code from the file
    try:
        with _quiet():
            module = program.module()
    except Exception as exc:
        raise ModelError(
            f"{path} is a torch.export archive but cannot be loaded: {str(exc).splitlines()[0]}",
            hint="it may come from another PyTorch version; re-export it or use ONNX",
        ) from None
    # .module() refuses the train/eval mode switches, which callers (and a parent module) need.
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


def _trial_run(module: nn.Module, batch: int, shape: tuple[int, ...]) -> Any:
    """``module``'s output on a zero batch, or the exception it raised."""
    try:
        with torch.no_grad(), _quiet():
            return module(torch.zeros(batch, *shape))
    except Exception as exc:
        return exc


def _trial_classes(module: nn.Module, shape: tuple[int, int, int], path: Path) -> int:
    """Run zero batches of 2 and 3 images through ``module``: its output must be
    (N, num_classes) logits for any N, since revise feeds batches of any size."""
    out = _trial_run(module, 2, shape)
    if isinstance(out, Exception):
        if not isinstance(_trial_run(module, 1, shape), Exception):
            raise _fixed_batch(path, 1, 2)
        raise ModelError(
            f"{path}: the model fails on a zero input of shape (N, {', '.join(map(str, shape))}): "
            f"{' '.join(str(out).split())[:300]}",
            hint="check in_channels and input_size in the card ({card} CARD.json)",
            options=("card",),
        )
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"{path}: the model returns {got}, not (N, num_classes) logits",
            hint="revise handles image classifiers whose output is one logits tensor",
        )
    more = _trial_run(module, 3, shape)
    if out.shape[0] != 2 or not isinstance(more, torch.Tensor) or more.shape != (3, out.shape[1]):
        raise _fixed_batch(path, 2, 3)
    return int(out.shape[1])


def _fixed_batch(path: Path, runs: int, fails: int) -> ModelError:
    return ModelError(
        f"{path}: the model takes a batch of {runs} image(s) but not of {fails}: it was exported "
        "with a fixed batch size, and revise feeds batches of any size",
        hint="export it again with a dynamic batch dimension (torch.export: dynamic_shapes="
        "{0: Dim('batch')}; torch.onnx: dynamic_axes)",
    )


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
            hint="pass {card} CARD.json (architecture, num_classes, in_channels, input_size, "
            "mean, std)",
            options=("card",),
        )
    if len(shape) != 3:
        raise ModelError(f"input shape must be (channels, height, width), got {shape}")
    classes = _trial_classes(module, shape, path)  # type: ignore[arg-type]
    log.warning(
        "no model card for %s: inferred in_channels=%d, input_size=%s, num_classes=%d; "
        "mean/std assumed 0/1 - give a model card if the model expects normalised input",
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


# --------------------------------------------------------------------------------------------
# shipping the original graph again (save_model)


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
