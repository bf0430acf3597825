"""NegGrad+: descend on the retain loss while ascending on the forget loss.

Kurmanji, Triantafillou, Hayes and Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023 (the SCRUB paper), baseline "NegGrad+": each step minimises

    alpha * CE(f(x_r), y_r) - (1 - alpha) * CE(f(x_f), y_f)

on a retain batch and a forget batch. Defaults are those of the seed paper's comparison
(Nahass et al., arXiv:2505.21872; method.md): alpha 0.9999, lr 0.01, 5 epochs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from revise.unlearn.base import UnlearnContext, register, run_steps, sgd, steps_per_pass
from revise.unlearn.finetune import FORGET_STREAM, RETAIN_STREAM, require_retain
from revise.unlearn.settings import settings


@settings
class NegGradPlusConfig:
    """Defaults: the seed paper's NegGrad+ baseline (method.md)."""

    epochs: int = Field(5, ge=1)  # passes over the retain set (seed paper: 5)
    batch_size: int = Field(64, ge=1)  # retain images per step; forget batches alike
    lr: float = Field(0.01, gt=0)  # seed paper's NegGrad+ learning rate
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum of the training recipe
    weight_decay: float = Field(5e-4, ge=0)  # as finetune: alpha = 1 reproduces it
    # Weight of the retain loss; 1 - alpha weighs the forget ascent. Small 1 - alpha keeps the
    # unbounded ascent term from blowing up the model. alpha = 1 is plain fine-tuning.
    alpha: float = Field(0.9999, ge=0, le=1)
    # Keep BatchNorm statistics fixed: forget-only forward passes otherwise pull the running
    # statistics toward D_f at every step (the authors leave BatchNorm in train mode).
    freeze_bn: bool = False


@register(
    "neggrad_plus",
    NegGradPlusConfig,
    "retain descent + weighted forget ascent (NegGrad+; Kurmanji et al. 2023)",
)
def neggrad_plus(ctx: UnlearnContext, config: NegGradPlusConfig) -> dict[str, Any]:
    require_retain(ctx, "neggrad_plus")
    model, retain, forget = ctx.model, ctx.retain, ctx.forget
    optimizer = sgd(model, config.lr, config.momentum, config.weight_decay)
    steps = config.epochs * steps_per_pass(len(retain), config.batch_size)
    # With alpha = 1 the forget term weighs nothing: skip its forward pass, which would still
    # move BatchNorm statistics, so that alpha = 1 is exactly finetune under the same seed.
    ascend = config.alpha < 1.0

    def loss_fn(step: int, _: Any) -> torch.Tensor:
        idx = ctx.batch(RETAIN_STREAM, len(retain), config.batch_size)
        retain_ce = F.cross_entropy(model(retain.x[idx]).float(), retain.y[idx])
        loss = config.alpha * ctx.global_mean(retain_ce, RETAIN_STREAM)
        if ascend:
            idx_f = ctx.batch(FORGET_STREAM, len(forget), config.batch_size)
            forget_ce = F.cross_entropy(model(forget.x[idx_f]).float(), forget.y[idx_f])
            loss = loss - (1.0 - config.alpha) * ctx.global_mean(forget_ce, FORGET_STREAM)
        return loss

    run_steps(ctx, optimizer, steps, loss_fn, freeze_bn=config.freeze_bn)
    return {"steps": steps}
