"""Random Labels: fine-tune on the forget images relabelled at random, together with D_r.

Golatkar, Achille and Soatto, "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep
Networks", CVPR 2020 (random-label baseline), in the form used as a baseline (RL) by Fan et al.,
"SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
Classification and Generation", ICLR 2024: each forget sample gets a wrong label and the model is
fine-tuned on the union of the relabelled D_f and the correctly labelled D_r.

Here a wrong label is drawn uniformly from the classes other than the true one (never the true
class, so every forget sample is pushed away from what it taught). Batches are drawn from the
union D_f + D_r, as one data set, without copying the images into a joint tensor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from revise.errors import UsageError
from revise.unlearn.base import (
    UnlearnContext,
    cosine_schedule,
    random_other_labels,
    register,
    run_steps,
    sgd,
    steps_per_pass,
)
from revise.unlearn.finetune import LABEL_STREAM
from revise.unlearn.settings import settings

UNION_STREAM = 1  # batch stream over D_f + D_r


@settings
class RandomLabelConfig:
    """Defaults: SalUn's RL baseline setting (10 epochs, lr in its 0.01-0.1 range, low end)."""

    epochs: int = Field(10, ge=1)  # passes over the union D_f + D_r (SalUn's RL: 10)
    batch_size: int = Field(64, ge=1)  # images per step, drawn from the union
    lr: float = Field(0.01, gt=0)  # low end of SalUn's RL range: wrong labels take fast
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD momentum of the training recipe
    weight_decay: float = Field(5e-4, ge=0)  # as the finetune baseline
    # Draw each forget sample's wrong label once (a relabelled D_f, as in SalUn); False redraws
    # it at every visit, which pushes the forget outputs toward uniform over the other classes.
    fixed_labels: bool = True
    # Keep BatchNorm statistics fixed during the update (the authors leave them in train mode).
    freeze_bn: bool = False
    # Cosine decay of lr to 0 over the run (off: the authors' constant rate); a run then ends
    # settled instead of wherever its last noisy step left it.
    cosine: bool = False


@register(
    "random_label",
    RandomLabelConfig,
    "fine-tune on D_f relabelled to random other classes plus D_r (RL; Golatkar 2020, SalUn)",
)
def random_label(ctx: UnlearnContext, config: RandomLabelConfig) -> dict[str, Any]:
    num_classes = int(ctx.card.num_classes)
    if num_classes < 2:
        raise UsageError("random_label needs at least 2 classes to pick a wrong label from")
    model, forget, retain = ctx.model, ctx.forget, ctx.retain
    n_f, n_r = len(forget), len(retain)
    optimizer = sgd(model, config.lr, config.momentum, config.weight_decay)
    steps = config.epochs * steps_per_pass(n_f + n_r, config.batch_size)
    labels = ctx.generator(LABEL_STREAM)
    fixed = random_other_labels(forget.y, num_classes, labels) if config.fixed_labels else None

    def loss_fn(step: int, _: Any) -> torch.Tensor:
        idx = ctx.batch(UNION_STREAM, n_f + n_r, config.batch_size)
        # Union index i < n_f is forget sample i, else retain sample i - n_f. Both gathers use
        # clamped indices and torch.where picks per sample: no host sync on the split.
        is_forget = idx < n_f
        i_f = idx.clamp(max=n_f - 1)
        if fixed is not None:
            wrong = fixed[i_f]
        else:
            global_n = ctx.batch_size(UNION_STREAM)
            wrong = random_other_labels(forget.y[i_f], num_classes, labels, global_n)
        if n_r == 0:
            ce = F.cross_entropy(model(forget.x[i_f]).float(), wrong)
            return ctx.global_mean(ce, UNION_STREAM)
        i_r = (idx - n_f).clamp(min=0)
        x = torch.where(is_forget.view(-1, 1, 1, 1), forget.x[i_f], retain.x[i_r])
        y = torch.where(is_forget, wrong, retain.y[i_r])
        return ctx.global_mean(F.cross_entropy(model(x).float(), y), UNION_STREAM)

    schedule = cosine_schedule(optimizer, steps) if config.cosine else None
    run_steps(ctx, optimizer, steps, loss_fn, freeze_bn=config.freeze_bn, scheduler=schedule)
    return {"steps": steps}
