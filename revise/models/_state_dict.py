"""Weights-only models (safetensors, torch.save state dicts): reading the tensors safely, and
loading them into the registered architecture their card names, explaining any misfit.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revise.errors import ModelError
from revise.models._cards import _card_beside, _infer_card_from_state, _with_source
from revise.models._sniff import _sniff, _wrong_claim
from revise.models.architectures import OPAQUE_ARCHITECTURES, build
from revise.models.card import ModelCard


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
                hint="save model.state_dict() (or safetensors) and pass {arch} or {card}, "
                "or export TorchScript / torch.export / ONNX",
                options=("arch", "card"),
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
            "(or pass {arch})",
            options=("arch",),
        )
    full = dict(state)
    for k, v in expected.items():
        full.setdefault(k, v)  # only num_batches_tracked can be absent here
    module.load_state_dict(full, strict=True)


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
                hint=f"pass {{card}} CARD.json, put {path.stem}.card.json beside it, or pass "
                "{arch}",
                options=("card", "arch"),
            )
        card = _infer_card_from_state(state, architecture)
    if architecture is not None:
        card = dataclasses.replace(card, architecture=architecture)
    if card.architecture in OPAQUE_ARCHITECTURES:
        raise ModelError(
            f"{path} holds weights only, but its card names a {card.architecture} graph",
            hint="pass {arch} with a registered architecture",
            options=("arch",),
        )
    card = _with_source(card, source_format, sha)
    module = build(card)
    _fit_state_dict(module, state, path, f"architecture {card.architecture!r}")
    return module, card
