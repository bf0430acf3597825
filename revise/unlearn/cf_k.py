"""Catastrophic Forgetting-k (CF-k): fine-tune only the last k blocks on the retain set.

Goel et al., "Towards Adversarial Evaluation of Inexact Machine Unlearning", arXiv:2201.06640
(2022; first titled "Evaluating Inexact Unlearning Requires Revisiting Forgetting"). The rest of
the network is frozen and relies on catastrophic forgetting of the forget set while the end of
the network is fine-tuned on D_r. EU-k (``eu_k``) is the same with the last k blocks
re-initialised first.

"The last k blocks" follows ``_structure``: the head plus the last k parameterised blocks before
it, found from the module tree. The frozen part's stateful layers are held in eval mode
throughout (BatchNorm statistics do not move), so its state dict stays bit-identical to the
original's; stateless layers such as dropout train as usual.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from revise.errors import UsageError
from revise.unlearn._structure import frozen_modules, hold_in_eval, last_blocks, train_only
from revise.unlearn.base import UnlearnContext, register, run_steps, steps_per_pass
from revise.unlearn.settings import settings

RETAIN_STREAM = 1  # batch stream of the retain images


@settings
class CFKConfig:
    """Fine-tune recipe of the seed paper's Fine-tune baseline (lr 0.04, 10 epochs, method.md),
    otherwise the project's training recipe (SGD momentum 0.9, batch 64, cosine decay)."""

    epochs: int = Field(10, ge=1)  # passes over the retain set (seed paper's FT: 10)
    batch_size: int = Field(64, ge=1)  # retain images per step (training recipe)
    lr: float = Field(0.04, gt=0)  # seed paper's fine-tune learning rate
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum of the training recipe
    weight_decay: float = Field(1e-4, ge=0)  # training recipe's, trained blocks only
    k: int = Field(1, ge=0)  # blocks before the head that are trained (0: head alone)
    cosine: bool = True  # cosine decay of lr to 0: a stable end point in few epochs


def fit_last_blocks(ctx: UnlearnContext, config: CFKConfig, names: list[str]) -> dict[str, Any]:
    """Train the named modules of ``ctx.model.net`` on the retain set; everything else frozen."""
    if len(ctx.retain) == 0:
        raise UsageError("the retain set is empty: there is nothing to fine-tune on")
    net = ctx.model.net
    frozen = frozen_modules(net, names)
    steps = config.epochs * steps_per_pass(len(ctx.retain), config.batch_size)
    with train_only(net, names) as params:
        optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if config.cosine else None
        )

        def loss_fn(step: int, batch: Any) -> torch.Tensor:
            hold_in_eval(frozen)  # run_steps put the whole model in train mode
            idx = ctx.batch(RETAIN_STREAM, len(ctx.retain), config.batch_size)
            ce = F.cross_entropy(ctx.model(ctx.retain.x[idx]).float(), ctx.retain.y[idx])
            return ctx.global_mean(ce, RETAIN_STREAM)

        run_steps(ctx, optimizer, steps, loss_fn, scheduler=scheduler)
        trained = sum(p.numel() for p in params)
    return {"steps": steps, "trained_modules": list(names), "trained_parameters": trained}


@register("cf_k", CFKConfig, "CF-k: fine-tune only the last k blocks on retain (Goel et al. 2022)")
def cf_k(ctx: UnlearnContext, config: CFKConfig) -> dict[str, Any]:
    names = last_blocks(ctx.model.net, config.k, ctx.card.num_classes)
    return fit_last_blocks(ctx, config, names)
