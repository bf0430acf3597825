"""Retrain from scratch on the retain set: the gold reference every unlearning method chases.

Exact unlearning by definition (e.g. Golatkar et al., CVPR 2020; Kurmanji et al., NeurIPS 2023;
the seed paper, Nahass et al., arXiv:2505.21872, "Retrain: same recipe on D_r only"): every
parameter and every BatchNorm statistic is re-initialised, so nothing of the deployed weights
survives, and the network is trained with the original recipe on D_r alone. The defaults are the
recipe that trains the deployed models here (``revise.unlearn.train.TrainConfig``: SGD lr 0.01,
momentum 0.9, weight decay 1e-4, batch 64, 15 epochs, cosine decay).

Re-initialisation calls each module's own ``reset_parameters()`` on a CPU copy under the run's
seed (inside a forked RNG, so the global random stream is untouched): the fresh weights depend on
the seed alone, not on the input model or the device.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field
from torch import nn

from revise.errors import UsageError
from revise.unlearn.base import UnlearnContext, register, seeded_global_rng
from revise.unlearn.finetune import finetune_on_retain, require_retain
from revise.unlearn.settings import settings


@settings
class RetrainConfig:
    """Defaults: the training recipe of the deployed models (revise.unlearn.train.TrainConfig)."""

    epochs: int = Field(15, ge=1)  # passes over the retain set (seed paper: 15)
    batch_size: int = Field(64, ge=1)  # the training recipe's batch size
    lr: float = Field(0.01, gt=0)  # the training recipe's rate (from scratch)
    momentum: float = Field(0.9, ge=0, lt=1)  # the training recipe's SGD momentum
    weight_decay: float = Field(1e-4, ge=0)  # the training recipe's weight decay
    cosine: bool = True  # cosine decay to 0 over the run, as the training recipe


def _resettable(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if callable(getattr(m, "reset_parameters", None))]


def reinitialise(model: nn.Module, seed: int) -> int:
    """Re-initialise every parameter and normalisation statistic of ``model`` in place.

    Each module's ``reset_parameters()`` runs on a CPU copy with the CPU generator seeded by
    ``seed`` (the global RNG state is restored afterwards); the values are then copied into
    ``model``, which keeps its device and memory format. Returns the number of modules reset.
    Raises UsageError when a parameter belongs to no module that can reset it (e.g. a graph
    loaded from TorchScript): a "retrain" that kept such weights would not be one.
    """
    covered = {id(p) for m in _resettable(model) for p in m.parameters(recurse=False)}
    missed = [name for name, p in model.named_parameters() if id(p) not in covered]
    if missed:
        shown = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
        raise UsageError(
            f"retrain cannot re-initialise {shown}: no reset_parameters() on their module",
            hint="retrain needs a built-in or plain PyTorch architecture",
        )
    fresh = copy.deepcopy(model).cpu()
    modules = _resettable(fresh)
    with seeded_global_rng(seed, torch.device("cpu")):
        for module in modules:
            module.reset_parameters()
    model.load_state_dict(fresh.state_dict())
    return len(modules)


@register("retrain", RetrainConfig, "re-initialise and train from scratch on D_r (gold reference)")
def retrain(ctx: UnlearnContext, config: RetrainConfig) -> dict[str, Any]:
    require_retain(ctx, "retrain")  # before the weights are gone
    reset = reinitialise(ctx.model, ctx.seed)

    def cosine(optimizer: torch.optim.Optimizer, steps: int) -> Any:
        return (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if config.cosine else None
        )

    facts = finetune_on_retain(ctx, config, "retrain", scheduler=cosine)
    return {**facts, "reinitialised_modules": reset}
