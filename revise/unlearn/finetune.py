"""Fine-tuning on the retain set only ("FT"), the simplest unlearning baseline.

Golatkar, Achille and Soatto, "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep
Networks", CVPR 2020 (the "Fine-tune" baseline): keep training the deployed model on D_r alone
and rely on catastrophic forgetting to wash out what only D_f taught it. The recipe is the one the
seed paper compares against (Nahass et al., arXiv:2505.21872; method.md): SGD, lr 0.04, 10 epochs.

The retain-set loop here is shared with ``l1_sparse`` (which adds a penalty to the same loss), so
that the two draw identical batches under the same seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from revise.errors import UsageError
from revise.unlearn.base import UnlearnContext, register, run_steps, sgd, steps_per_pass
from revise.unlearn.settings import settings

# Stream numbers of ctx.batch (batches) and ctx.generator (random labels), fixed per role so
# that methods sharing a role (the retain batches of finetune, l1_sparse, neggrad_plus and
# retrain) draw the same batches under the same seed.
RETAIN_STREAM = 1
FORGET_STREAM = 2
LABEL_STREAM = 3


@settings
class FinetuneConfig:
    """Defaults: the seed paper's FT baseline (method.md); optimizer as in the training recipe."""

    epochs: int = Field(10, ge=1)  # passes over the retain set (seed paper: 10)
    batch_size: int = Field(64, ge=1)  # retain images per step (training recipe's)
    lr: float = Field(0.04, gt=0)  # seed paper's FT rate: D_r overwrites D_f's traces
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum of the training recipe
    # the usual FT choice (Golatkar et al.); decays weights D_r leaves idle
    weight_decay: float = Field(5e-4, ge=0)


def require_retain(ctx: UnlearnContext, method: str) -> None:
    if len(ctx.retain) == 0:
        raise UsageError(
            f"{method} trains on the retain set, and it is empty",
            hint="select some retained data, or use a forget-only method such as psg",
        )


def finetune_on_retain(
    ctx: UnlearnContext,
    config: Any,
    method: str,
    penalty: Callable[[int, int], torch.Tensor] | None = None,
    scheduler: Callable[[torch.optim.Optimizer, int], Any] | None = None,
) -> dict[str, Any]:
    """SGD on cross-entropy over retain batches, plus ``penalty(step, steps)`` when given.

    ``config`` needs epochs, batch_size, lr, momentum, weight_decay; ``scheduler(optimizer,
    steps)`` may build a per-step learning-rate schedule.
    """
    require_retain(ctx, method)
    model, retain = ctx.model, ctx.retain
    optimizer = sgd(model, config.lr, config.momentum, config.weight_decay)
    steps = config.epochs * steps_per_pass(len(retain), config.batch_size)

    def loss_fn(step: int, _: Any) -> torch.Tensor:
        idx = ctx.batch(RETAIN_STREAM, len(retain), config.batch_size)
        ce = F.cross_entropy(model(retain.x[idx]).float(), retain.y[idx])
        loss = ctx.global_mean(ce, RETAIN_STREAM)
        if penalty is not None:  # the same on every worker: not a per-batch mean
            loss = loss + penalty(step, steps)
        return loss

    schedule = scheduler(optimizer, steps) if scheduler is not None else None
    run_steps(ctx, optimizer, steps, loss_fn, scheduler=schedule)
    return {"steps": steps}


@register("finetune", FinetuneConfig, "fine-tune on the retain set only (FT; Golatkar et al. 2020)")
def finetune(ctx: UnlearnContext, config: FinetuneConfig) -> dict[str, Any]:
    return finetune_on_retain(ctx, config, "finetune")
