"""What a network's numbers say it returns, for :mod:`revise.models.outputs`: its outputs on a
few images in the card's pixel range (uniform noise and flat images), read as softmax,
log_softmax or sigmoid outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from revise.models.card import ModelCard

_PROBE_IMAGES = 8  # at most; fewer of large images (the load's trial run feeds 3)
_PROBE_VALUES = 2**24  # 64 MiB of float32 input
_SUM_TOLERANCE = 1e-3


def _probe_count(card: ModelCard) -> int:
    per_image = card.in_channels * card.input_size[0] * card.input_size[1]
    return max(3, min(_PROBE_IMAGES, _PROBE_VALUES // per_image))


def _probe_batch(card: ModelCard) -> torch.Tensor:
    """A few normalised images in the card's pixel range: uniform noise and flat images."""
    low, high = card.pixel_range
    shape = (card.in_channels, *card.input_size)
    gen = torch.Generator().manual_seed(0)
    x = low + (high - low) * torch.rand(_probe_count(card) - 2, *shape, generator=gen)
    flat = torch.tensor([low + 0.5 * (high - low), high]).view(2, 1, 1, 1).expand(2, *shape)
    x = torch.cat([x, flat])
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    return (x - mean) / std


def _probe_run(module: nn.Module, card: ModelCard) -> torch.Tensor | None:
    """The module's outputs on the probe images (eval mode), or None where it cannot run them."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(_probe_batch(card))
    except Exception:
        return None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or not out.is_floating_point():
        return None
    out = out.detach().float().cpu()
    return out if bool(torch.isfinite(out).all()) else None


def probe_outputs(module: nn.Module, card: ModelCard) -> str | None:
    """``"softmax"`` when the module's outputs on a few images in the card's pixel range are
    non-negative and sum to 1 per row, ``"log_softmax"`` when their exponentials do, else None
    (logits, or a model whose numbers say nothing, e.g. one class). Sigmoid outputs are not
    told from logits this way: values in [0, 1] can be either."""
    out = _probe_run(module, card)
    if out is None or out.shape[1] < 2:
        return None
    if bool((out >= 0).all()) and float((out.sum(1) - 1).abs().max()) < _SUM_TOLERANCE:
        return "softmax"
    if bool((out <= 0).all()) and float(out.logsumexp(1).abs().max()) < _SUM_TOLERANCE:
        return "log_softmax"
    return None


def _in_unit_interval(module: nn.Module, card: ModelCard) -> bool:
    out = _probe_run(module, card)
    return out is not None and bool(((out >= 0) & (out <= 1)).all())


def _probe_evidence(kind: str, card: ModelCard) -> str:
    n = _probe_count(card)
    return {
        "softmax": f"its outputs on {n} test images are non-negative and sum to 1 per row",
        "log_softmax": f"the exponentials of its outputs on {n} test images sum to 1 per row",
        "sigmoid": f"its outputs on {n} test images lie in [0, 1]",
    }[kind]
