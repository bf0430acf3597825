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

import dataclasses
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from revise._io.atomic import atomic_path
from revise._io.digests import sha256_file
from revise._io.temporaries import check_finished
from revise.errors import ModelError, RevisionError
from revise.models._cards import CARD_FILE, _as_card, _card_beside, _monai_card
from revise.models._graphs import (
    _graph_source,
    _load_torch_export,
    _load_torchscript,
    _mark_graph,
    _opaque_card,
    _write_graph,
)
from revise.models._onnx_import import _load_onnx
from revise.models._output_wrappers import LogitsOf
from revise.models._sniff import (
    _KIND_SUFFIX,
    _SUFFIX_KINDS,
    _WEIGHTS_ONLY_KINDS,
    _content_kind,
    _describe,
    _sniff,
    _wrong_claim,
)
from revise.models._state_dict import (
    _fit_state_dict,
    _read_safetensors,
    _read_torch_save,
    _weights_module,
)
from revise.models.architectures import OPAQUE_ARCHITECTURES, build
from revise.models.card import ModelCard
from revise.models.outputs import settle

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
GRAPH_FILES = {"torchscript": "graph.ts", "onnx": "graph.onnx", "torch_export": "graph.pt2"}


@dataclass
class LoadedModel:
    """A model ready for inference: ``module`` is in eval mode on the CPU, and returns logits.

    ``card.output`` says what the network in the file returns; where that is softmax or
    sigmoid, ``module`` is the network with its final activation taken off (or inverted), see
    :mod:`revise.models.outputs`, and export puts it back.
    """

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
# dispatch


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
                hint="pass {arch} or {card}",
                options=("arch", "card"),
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
    check_finished(path, "model")  # never an interrupted write's temporary
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
        log.warning(
            "%s is a %s graph; the architecture %s given is ignored", path, kind, architecture
        )
    out_card = _opaque_card(
        module, path, kind, given or _card_beside(path), graph_shape, input_shape, sha
    )
    _mark_graph(module, kind, path, sha)
    return _finish(module, out_card, path, kind)


def _finish(module: nn.Module, card: ModelCard, path: Path, fmt: str) -> LoadedModel:
    module = module.to("cpu")
    module.eval()
    opaque = card.architecture in OPAQUE_ARCHITECTURES
    module, card = settle(module, card, str(path), opaque=opaque)
    return LoadedModel(module=module, card=card, path=path, format=fmt)


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

    if isinstance(model, LogitsOf):
        model = model.net  # the same state dict, key for key; the graph is the network's
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
