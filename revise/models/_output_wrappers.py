"""Wrappers around a classifier network for :mod:`revise.models.outputs`: :class:`LogitsOf`
computes logits from the probabilities a network returns, :class:`WithActivation` puts a final
activation back. Either one's state dict is the network's own, key for key.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_OP_NAMES = {"softmax": "Softmax", "log_softmax": "LogSoftmax", "sigmoid": "Sigmoid"}
# Probabilities are clamped away from 0 (and 1) before the log: an underflowed probability
# gives a large negative logit and no gradient, where log(0) would give -inf and NaN.
_TINY = torch.finfo(torch.float32).tiny


def _drop_prefix(module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
    inner = f"{prefix}net."
    for key in [k for k in state if k.startswith(inner)]:
        state[prefix + key[len(inner) :]] = state.pop(key)


def _add_prefix(
    module: nn.Module, state: dict, prefix: str, local_metadata: Any, *args: Any
) -> None:
    # every key under the wrapper is the network's (its own state dict never says "net.")
    for key in [k for k in state if k.startswith(prefix)]:
        state[f"{prefix}net.{key[len(prefix) :]}"] = state.pop(key)


class _Around(nn.Module):
    """``net`` with something after it. Its state dict is ``net``'s, key for key: saved
    weights, digests and checkpoints are those of the network itself."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        if kind not in _OP_NAMES:
            raise ValueError(f"kind must be one of {', '.join(_OP_NAMES)}, not {kind!r}")
        self.net = net
        self.kind = kind
        self.training = net.training  # a fresh module would say train mode whatever net is in
        self.register_state_dict_post_hook(_drop_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)


class LogitsOf(_Around):
    """The logits of a network whose outputs are ``kind`` (softmax or sigmoid) and whose final
    activation cannot be taken off: ``log p`` (softmax) or ``log(p / (1 - p))`` (sigmoid),
    with ``p`` kept away from 0 and 1 so that neither the value nor its gradient is infinite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.net(x)
        if self.kind == "softmax":
            return p.float().clamp_min(_TINY).log()
        if self.kind == "sigmoid":
            p = p.float().clamp(_TINY, 1.0 - torch.finfo(torch.float32).eps)
            return torch.log(p) - torch.log1p(-p)
        return p  # log-probabilities are logits


class WithActivation(_Around):
    """``net`` (which returns logits) with its final activation put back: what the deployed
    network returned."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        if self.kind == "softmax":
            return torch.softmax(z, dim=1)
        if self.kind == "log_softmax":
            return torch.log_softmax(z, dim=1)
        return torch.sigmoid(z)
