"""SCRUB: teacher-student unlearning (Kurmanji et al., NeurIPS 2023).

Kurmanji, Triantafillou, Hayes and Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023 (arXiv:2302.09880). The student (``ctx.model``) starts as the original and the
teacher is the frozen original. Training alternates

* max-steps, one pass over D_f per epoch for the first ``msteps`` epochs: maximise
  KL(teacher || student) on forget images (the student moves away from the teacher there);
* min-steps, one pass over D_r every epoch: minimise alpha * KL(teacher || student) +
  gamma * CE(student, y) on retain images (the student stays close to the teacher there).

KL is taken between temperature-softened distributions and scaled by T^2 (Hinton et al. 2015),
averaged over the batch. One SGD optimizer serves both kinds of step, as in the paper.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from revise.errors import UsageError
from revise.unlearn.base import UnlearnContext, register, run_steps, sgd, steps_per_pass
from revise.unlearn.settings import settings

FORGET_STREAM = 1  # batch stream of the max-steps
RETAIN_STREAM = 2  # batch stream of the min-steps


@settings
class SCRUBConfig:
    """Defaults from the authors' released CIFAR settings (SGD, lr 5e-4, T=4, alpha 1e-3,
    gamma 0.99, msteps 2, 3 epochs, batches 128 retain / 32 forget)."""

    epochs: int = Field(3, ge=1)  # each: an optional max pass, then a min pass (3)
    msteps: int = Field(2, ge=0)  # the first msteps epochs take a max pass over D_f
    batch_size: int = Field(128, ge=1)  # retain images per min-step (authors: 128)
    forget_batch_size: int = Field(32, ge=1)  # forget images per max-step (32)
    lr: float = Field(5e-4, gt=0)  # authors': small, the student starts at the teacher
    momentum: float = Field(0.9, ge=0, lt=1)  # authors' SGD momentum
    weight_decay: float = Field(5e-4, ge=0)  # authors' weight decay
    temperature: float = Field(4.0, gt=0)  # KL temperature T: whole distributions
    alpha: float = Field(1e-3, ge=0)  # weight of KL(teacher || student) in min-steps
    gamma: float = Field(0.99, ge=0)  # weight of the retain cross-entropy in min-steps
    # Keep BatchNorm statistics fixed. The authors train in plain train mode (the default);
    # forget-only max batches then drag the statistics toward D_f.
    freeze_bn: bool = False


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the T-softened distributions, batch mean, times T^2."""
    log_s = F.log_softmax(student.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def schedule(config: SCRUBConfig, n_forget: int, n_retain: int) -> list[bool]:
    """Per step: True for a max-step (forget), False for a min-step (retain)."""
    max_pass = [True] * steps_per_pass(n_forget, config.forget_batch_size)
    min_pass = [False] * steps_per_pass(n_retain, config.batch_size)
    plan: list[bool] = []
    for epoch in range(config.epochs):
        plan += (max_pass if epoch < config.msteps else []) + min_pass
    return plan


@register("scrub", SCRUBConfig, "SCRUB: teacher-student KL max on forget, min on retain (2023)")
def scrub(ctx: UnlearnContext, config: SCRUBConfig) -> dict[str, Any]:
    if len(ctx.retain) == 0:
        raise UsageError("scrub needs a non-empty retain set for its min-steps")
    student, teacher = ctx.model, ctx.original
    plan = schedule(config, len(ctx.forget), len(ctx.retain))
    n_max = sum(plan)
    optimizer = sgd(student, config.lr, config.momentum, config.weight_decay)
    T = config.temperature

    def loss_fn(step: int, batch: Any) -> torch.Tensor:
        if plan[step]:
            x = ctx.forget.x[ctx.batch(FORGET_STREAM, len(ctx.forget), config.forget_batch_size)]
            with torch.no_grad():
                target = teacher(x)
            return -ctx.global_mean(distill_kl(student(x), target, T), FORGET_STREAM)
        idx = ctx.batch(RETAIN_STREAM, len(ctx.retain), config.batch_size)
        x, y = ctx.retain.x[idx], ctx.retain.y[idx]
        with torch.no_grad():
            target = teacher(x)
        logits = student(x)
        ce = F.cross_entropy(logits.float(), y)
        loss = config.alpha * distill_kl(logits, target, T) + config.gamma * ce
        return ctx.global_mean(loss, RETAIN_STREAM)  # both terms are means over this batch

    run_steps(ctx, optimizer, len(plan), loss_fn, freeze_bn=config.freeze_bn)
    return {"steps": len(plan), "max_steps": n_max, "min_steps": len(plan) - n_max}
