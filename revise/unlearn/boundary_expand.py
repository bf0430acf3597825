"""Boundary Expanding (Chen et al., CVPR 2023, "Boundary Unlearning").

Chen, Gao, Yang, Wang and Chen, "Boundary Unlearning: Rapid Forgetting of Deep Networks via
Shifting the Decision Space", CVPR 2023. The classifier head gets one extra "shadow" output;
the whole expanded network is fine-tuned to put every forget image in the shadow class, which
spreads the forget set's features away from its old decision region; then the shadow output is
pruned, so the revised network has exactly the original architecture and state-dict shapes.

The head is found with ``head_module_name`` (a Linear or 1x1 Conv2d). During training it is
swapped, inside ``ctx.model.net``, for a widened copy (the first K outputs are the original's,
the shadow output is freshly initialised like a new layer of the same fan-in); afterwards the
first K outputs are copied back into the original head module, which is put back in place.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from revise.errors import ModelError
from revise.models.architectures import head_module_name
from revise.unlearn.base import UnlearnContext, register, run_steps, sgd, steps_per_pass
from revise.unlearn.settings import settings

FORGET_STREAM = 1  # batch stream of the forget images
SHADOW_STREAM = 3  # random stream that initialises the shadow output


@settings
class BoundaryExpandConfig:
    """Defaults from the authors' setting, shared with Boundary Shrink (SGD lr 1e-5, 10 epochs)."""

    epochs: int = Field(10, ge=1)  # passes over the forget set (authors: 10)
    batch_size: int = Field(64, ge=1)  # forget images per step (authors: 64)
    lr: float = Field(1e-5, gt=0)  # authors' SGD learning rate for a converged model
    momentum: float = Field(0.9, ge=0, lt=1)  # authors' SGD momentum
    weight_decay: float = Field(0.0, ge=0)  # none: it would pull retained knowledge too
    # Keep BatchNorm statistics fixed. The authors train in train mode (the default); with
    # forget-only batches the statistics then drift toward D_f.
    freeze_bn: bool = False


def widen(head: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """A copy of ``head`` (Linear or 1x1 Conv2d) with one more output, the last one fresh.

    The shadow row is drawn like PyTorch's default layer initialisation: uniform in
    +-1/sqrt(fan_in) for the weight and the bias.
    """
    weight = head.weight
    if isinstance(head, nn.Linear):
        wide: nn.Module = nn.Linear(
            head.in_features, head.out_features + 1, bias=head.bias is not None
        )
    elif isinstance(head, nn.Conv2d) and tuple(head.kernel_size) == (1, 1) and head.groups == 1:
        wide = nn.Conv2d(
            head.in_channels,
            head.out_channels + 1,
            1,
            stride=head.stride,
            padding=head.padding,
            dilation=head.dilation,
            bias=head.bias is not None,
            padding_mode=head.padding_mode,
        )
    else:
        raise ModelError(
            f"boundary_expand cannot widen a {type(head).__name__} head",
            hint="it needs an nn.Linear or an ungrouped 1x1 nn.Conv2d classifier layer",
        )
    wide = wide.to(device=weight.device, dtype=weight.dtype)
    k = weight.shape[0]
    bound = 1.0 / math.sqrt(weight[0].numel())
    with torch.no_grad():
        wide.weight[:k].copy_(weight)
        wide.weight[k:].uniform_(-bound, bound, generator=generator)
        if head.bias is not None:
            wide.bias[:k].copy_(head.bias)
            wide.bias[k:].uniform_(-bound, bound, generator=generator)
    wide.train(head.training)
    return wide


def _swap(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def expand_head(
    net: nn.Module, num_classes: int | None = None, generator: torch.Generator | None = None
) -> nn.Module:
    """A deep copy of ``net`` whose head has one more output (the last: the shadow class)."""
    name = head_module_name(net, num_classes)
    wide = copy.deepcopy(net)
    _swap(wide, name, widen(net.get_submodule(name), generator))
    return wide


def prune_into(head: nn.Module, wide: nn.Module) -> None:
    """Copy the first outputs of the widened head back into the original ``head``, in place."""
    k = head.weight.shape[0]
    with torch.no_grad():
        head.weight.copy_(wide.weight[:k])
        if head.bias is not None:
            head.bias.copy_(wide.bias[:k])


@register(
    "boundary_expand",
    BoundaryExpandConfig,
    "Boundary Expanding (Chen et al. 2023): shadow class on forget, then pruned",
)
def boundary_expand(ctx: UnlearnContext, config: BoundaryExpandConfig) -> dict[str, Any]:
    net, forget = ctx.model.net, ctx.forget
    shadow = ctx.card.num_classes
    name = head_module_name(net, shadow)
    head = net.get_submodule(name)
    wide = widen(head, ctx.generator(SHADOW_STREAM))
    wide.weight.requires_grad_(head.weight.requires_grad)
    if wide.bias is not None:
        wide.bias.requires_grad_(head.bias.requires_grad)
    _swap(net, name, wide)
    try:
        optimizer = sgd(ctx.model, config.lr, config.momentum, config.weight_decay)
        steps = config.epochs * steps_per_pass(len(forget), config.batch_size)

        def loss_fn(step: int, batch: Any) -> torch.Tensor:
            x = forget.x[ctx.batch(FORGET_STREAM, len(forget), config.batch_size)]
            target = torch.full((len(x),), shadow, dtype=torch.long, device=x.device)
            return ctx.global_mean(F.cross_entropy(ctx.model(x).float(), target), FORGET_STREAM)

        run_steps(ctx, optimizer, steps, loss_fn, freeze_bn=config.freeze_bn)
        prune_into(head, wide)
    finally:
        _swap(net, name, head)
    return {"steps": steps, "shadow_class": shadow}
