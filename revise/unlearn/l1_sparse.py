"""l1-sparse unlearning: fine-tune on D_r with a decaying l1 penalty on the weights.

Jia, Liu, Ram, Yao, Liu, Liu, Sharma and Liu, "Model Sparsity Can Simplify Machine Unlearning",
NeurIPS 2023 ("sparsity-aware unlearning", l1-sparse MU): minimise

    CE(f(x_r), y_r) + gamma_t * ||theta||_1

over retain batches. The paper finds a linearly decreasing gamma_t works best: strong sparsity
pressure early (which drives the model toward a sparse solution that forgets more), none at the
end (so the last steps recover retain accuracy). Defaults follow the paper's CIFAR-10 setting:
10 epochs, lr 0.01, gamma 5e-4.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from revise.unlearn.base import UnlearnContext, register
from revise.unlearn.finetune import finetune_on_retain
from revise.unlearn.settings import settings


@settings
class L1SparseConfig:
    """Defaults: the paper's l1-sparse MU setting (10 epochs, lr 0.01, gamma 5e-4)."""

    epochs: int = Field(10, ge=1)  # passes over the retain set (paper: 10, as FT)
    batch_size: int = Field(64, ge=1)  # retain images per step (training recipe's)
    lr: float = Field(0.01, gt=0)  # paper's unlearning rate for l1-sparse
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum of the training recipe
    weight_decay: float = Field(5e-4, ge=0)  # as finetune: gamma = 0 reproduces it
    gamma: float = Field(5e-4, ge=0)  # l1 strength at step 0; linearly to 0 at the end


def l1_strength(gamma: float, step: int, steps: int) -> float:
    """gamma_t: ``gamma`` at step 0, falling linearly to 0 at step ``steps`` (the run's end)."""
    return gamma * max(0.0, 1.0 - step / max(1, steps))


def l1_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Sum of absolute values of all ``params`` (a device scalar)."""
    return torch.stack([p.abs().sum() for p in params]).sum()


@register(
    "l1_sparse",
    L1SparseConfig,
    "fine-tune on D_r with a linearly decaying l1 penalty (Jia et al. 2023)",
)
def l1_sparse(ctx: UnlearnContext, config: L1SparseConfig) -> dict[str, Any]:
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    penalty = None
    if config.gamma > 0:

        def penalty(step: int, steps: int) -> torch.Tensor:
            return l1_strength(config.gamma, step, steps) * l1_norm(params)

    facts = finetune_on_retain(ctx, config, "l1_sparse", penalty=penalty)
    with torch.no_grad():
        facts["weight_l1"] = round(l1_norm(params).item(), 4)  # once, after the loop
    return facts
