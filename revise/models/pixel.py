"""Run a deployed model on pixel-space tensors.

Tensors inside revise are in the model's *pixel* space (``card.pixel_range``), because the
boundary attack must step and clip there. The deployed network consumes normalised inputs,
so this wrapper applies the card's normalisation in front of it. Exports use the bare network,
so the deployed input contract never changes.

Every consumer - the losses of each method, evaluation, the boundary attack - reads the output
as logits. A network that visibly ends in softmax or sigmoid is refused here rather than trained
on probabilities: :func:`revise.models.io.load_model` takes the activation off (and records it
in ``card.output``); :func:`revise.models.outputs.settle` does the same for a network built in
Python.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from revise.errors import ModelError
from revise.models._final_activation import final_activation
from revise.models.card import ModelCard


class PixelSpaceModel(nn.Module):
    """``net((x - mean) / std)`` with the card's mean/std; ``net`` is shared, not copied, and
    must return logits (log-probabilities will do: they differ by a constant per row)."""

    def __init__(self, net: nn.Module, card: ModelCard) -> None:
        super().__init__()
        _check_returns_logits(net)
        self.net = net
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(card.mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(card.std, dtype=torch.float32).view(shape))
        self.low, self.high = card.pixel_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _check_returns_logits(net: nn.Module) -> None:
    found = final_activation(net)
    if found is not None and found.kind in ("softmax", "sigmoid"):
        raise ModelError(
            f"the network returns {found.kind} probabilities ({found.where}); revise trains and "
            "evaluates on logits, and cross-entropy on probabilities trains something else",
            hint="load it with revise.models.io.load_model, or pass it through "
            "revise.models.outputs.settle(net, card, name): both take the activation off and "
            "set the card's output, and export puts it back",
        )


DEVICES = "auto, cpu, cuda, cuda:N or mps"
_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present. Anything else must be a device this machine has: an
    unknown name, or CUDA/MPS asked for where there is none, is a usage error (the CLI checks
    ``--device`` with this before any work)."""
    from revise.errors import OptionError

    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise OptionError(
                "device",
                "mps was asked for but no MPS (Apple GPU) device is available",
                hint="use {device} cpu or auto",
            )
        return torch.device("mps")
    match = _CUDA_INDEX.fullmatch(name)
    if name != "cuda" and match is None:
        raise OptionError("device", f"{name!r} is not a device", hint=f"use {DEVICES}")
    if not torch.cuda.is_available():
        raise OptionError(
            "device",
            f"{name} was asked for but no CUDA device is available",
            hint="use {device} cpu or auto",
        )
    count = torch.cuda.device_count()
    if match and int(match.group(1)) >= count:
        raise OptionError(
            "device",
            f"{name}: this machine has {count} CUDA device(s)",
            hint=f"use cuda:0 to cuda:{count - 1}",
        )
    return torch.device(name)


def normalize(x: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """Pixel-space tensors -> what the deployed network consumes (e.g. ONNX parity inputs)."""
    mean = torch.tensor(card.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(card.std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std
