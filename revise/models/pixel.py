"""Run a deployed model on pixel-space tensors.

Tensors inside revise are in the model's *pixel* space (``card.pixel_range``), because the
boundary attack must step and clip there. The deployed network consumes normalised inputs,
so this wrapper applies the card's normalisation in front of it. Exports use the bare network,
so the deployed input contract never changes.
"""

from __future__ import annotations

import torch
from torch import nn

from revise.models.card import ModelCard


class PixelSpaceModel(nn.Module):
    """``net((x - mean) / std)`` with the card's mean/std; ``net`` is shared, not copied."""

    def __init__(self, net: nn.Module, card: ModelCard) -> None:
        super().__init__()
        self.net = net
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(card.mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(card.std, dtype=torch.float32).view(shape))
        self.low, self.high = card.pixel_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from revise.errors import UsageError

        raise UsageError(
            "--device cuda was asked for but no CUDA device is available", hint="use --device cpu"
        )
    return torch.device(name)


def normalize(x: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """Pixel-space tensors -> what the deployed network consumes (e.g. ONNX parity inputs)."""
    mean = torch.tensor(card.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(card.std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std
