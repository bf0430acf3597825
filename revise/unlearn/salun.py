"""SalUn: saliency unlearning (Fan et al., ICLR 2024).

Fan, Liu, Zhang, Wong, Wei and Liu, "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency in Both Image Classification and Generation", ICLR 2024 (arXiv:2310.12508).

1. Weight saliency: the gradient of the forgetting loss (cross-entropy on D_f) at the original
   weights, accumulated over the whole forget set; the mask keeps the ``mask_ratio`` fraction of
   weights with the largest |gradient|, thresholded over the whole model (not per layer).
2. Random-label unlearning restricted to the mask: batches drawn from D_f u D_r, forget images
   relabelled with a uniformly random *other* class (fresh at every step), retain images with
   their labels; after every optimizer step the weights outside the mask are put back to the
   original's (theta = m * theta + (1 - m) * theta_0, the paper's update), so they never move.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from revise.data.sets import DecodedSet
from revise.errors import UsageError
from revise.unlearn.base import (
    UnlearnContext,
    random_other_labels,
    register,
    run_steps,
    sgd,
    steps_per_pass,
)
from revise.unlearn.settings import settings

UNION_STREAM = 1  # batch stream over D_f + D_r
LABEL_STREAM = 2  # random stream of the forget images' random labels


@settings
class SalUnConfig:
    """Defaults from the authors' released CIFAR-10 runs (RL + mask at 50%, 10 epochs, lr 0.013)."""

    epochs: int = Field(10, ge=1)  # passes over D_f u D_r (authors: 10)
    batch_size: int = Field(256, ge=1)  # images per step, D_f and D_r mixed (256)
    lr: float = Field(0.013, gt=0)  # authors' SGD rate for the random-label stage
    momentum: float = Field(0.9, ge=0, lt=1)  # authors' SGD momentum
    weight_decay: float = Field(5e-4, ge=0)  # authors' (on the masked weights only)
    mask_ratio: float = Field(0.5, gt=0, le=1)  # fraction of weights that may change (0.5)
    # Keep BatchNorm statistics fixed (they are buffers, outside the mask). The authors train in
    # train mode, which lets the statistics move with the mixed batches.
    freeze_bn: bool = False


def forget_gradients(
    model: nn.Module, forget: DecodedSet, batch_size: int
) -> dict[str, torch.Tensor]:
    """|d CE(D_f) / d theta| per parameter, summed over the whole forget set, in eval mode.

    The loss is summed over images, so the result does not depend on ``batch_size`` beyond
    rounding. Parameters that do not require grad get no entry.
    """
    was_training = model.training
    model.eval()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for start in range(0, len(forget), batch_size):
        x, y = forget.x[start : start + batch_size], forget.y[start : start + batch_size]
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for name, g in zip(params, grads, strict=True):
            if g is not None:
                total[name] += g
    model.train(was_training)
    return {name: g.abs() for name, g in total.items()}


def saliency_mask(saliency: Mapping[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """Boolean masks keeping exactly round(ratio * total) entries with the largest saliency,
    ranked over all tensors together (ties broken arbitrarily, the count stays exact)."""
    names = list(saliency)
    flat = torch.cat([saliency[name].reshape(-1).float() for name in names])
    keep = round(ratio * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep:
        chosen[torch.topk(flat, keep, sorted=False).indices] = True
    masks, pos = {}, 0
    for name in names:
        n = saliency[name].numel()
        masks[name] = chosen[pos : pos + n].view_as(saliency[name])
        pos += n
    return masks


@register("salun", SalUnConfig, "SalUn: random labels on saliency-masked weights (Fan et al. 2024)")
def salun(ctx: UnlearnContext, config: SalUnConfig) -> dict[str, Any]:
    num_classes = ctx.card.num_classes
    if num_classes < 2:
        raise UsageError("salun needs at least 2 classes to draw a random other label")
    model, forget, retain = ctx.model, ctx.forget, ctx.retain
    with ctx.timer.phase("saliency"), ctx.autocast():
        masks = saliency_mask(forget_gradients(model, forget, config.batch_size), config.mask_ratio)
    params = dict(model.named_parameters())
    kept = [(params[name], mask, params[name].detach().clone()) for name, mask in masks.items()]

    optimizer = sgd(model, config.lr, config.momentum, config.weight_decay)

    @torch.no_grad()
    def project(*_: Any) -> None:  # weights outside the mask back to the original's
        for p, mask, p0 in kept:
            p.copy_(torch.where(mask, p, p0))

    hook = optimizer.register_step_post_hook(project)

    n_f, n_r = len(forget), len(retain)
    steps = config.epochs * steps_per_pass(n_f + n_r, config.batch_size)
    relabel = ctx.generator(LABEL_STREAM)

    def loss_fn(step: int, batch: Any) -> torch.Tensor:
        idx = ctx.batch(UNION_STREAM, n_f + n_r, config.batch_size)
        is_forget = idx < n_f
        f_idx = idx.clamp(max=n_f - 1)
        y_f = random_other_labels(
            forget.y[f_idx], num_classes, relabel, ctx.batch_size(UNION_STREAM)
        )
        if n_r:  # gather both ways and pick per row: no host sync on the batch composition
            r_idx = (idx - n_f).clamp(min=0, max=n_r - 1)
            pick = is_forget.view(-1, *([1] * (forget.x.ndim - 1)))
            x = torch.where(pick, forget.x[f_idx], retain.x[r_idx])
            y = torch.where(is_forget, y_f, retain.y[r_idx])
        else:
            x, y = forget.x[f_idx], y_f
        return ctx.global_mean(F.cross_entropy(model(x).float(), y), UNION_STREAM)

    try:
        run_steps(ctx, optimizer, steps, loss_fn, freeze_bn=config.freeze_bn)
    finally:
        hook.remove()
    return {
        "steps": steps,
        "masked_weights": sum(int(m.sum()) for m in masks.values()),
        "total_weights": sum(m.numel() for m in masks.values()),
    }
