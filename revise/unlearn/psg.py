"""Perturbed sign gradient boundary unlearning (psg) and its special case, Boundary Shrink.

Nahass et al., "Targeted Unlearning Using Perturbed Sign Gradient Methods With Applications On
Medical Images", arXiv:2505.21872 (TMLR 2025), Algorithms 1-3. Boundary Shrink: Chen et al.,
"Boundary Unlearning", CVPR 2023 (psg with gamma = lambda = phi = 0).

Each step: (1) search, with the frozen original model, the nearest point of another class in an
L-inf ball around every forget image (perturbed sign gradient, in pixel space); (2) fine-tune
the model to predict that "nearest-but-incorrect" label (or the original model's soft
prediction there) on the forget image, optionally plus phi times a retain loss.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from revise._schema import Hint
from revise.distributed import all_sum, is_main_process, shard, shard_size
from revise.errors import UsageError
from revise.models.pixel import PixelSpaceModel
from revise.unlearn.base import (
    UnlearnContext,
    cosine_schedule,
    register,
    run_steps,
    sgd,
    steps_per_pass,
)
from revise.unlearn.batchnorm import reestimate_batchnorm
from revise.unlearn.settings import settings

FORGET_STREAM = 1  # batch stream of the forget images
RETAIN_STREAM = 2  # batch stream of the retain images (phi > 0)
NOISE_STREAM = 3  # random stream of the search noise

Noise = Literal["gaussian", "laplace", "cauchy", "uniform"]
LambdaSchedule = Literal["constant", "inverse", "exponential", "linear"]
ForgetTarget = Literal["hard", "soft", "topk"]
RetainLoss = Literal["ce", "distill"]

log = logging.getLogger(__name__)


@settings
class PSGConfig:
    """Defaults follow the authors' released runs (method.md)."""

    epochs: int = Field(10, ge=1)  # passes over the forget set (authors: 10)
    batch_size: int = Field(64, ge=1)  # forget images per step; retain batches alike
    lr: float = Field(1e-5, gt=0)  # authors' SGD learning rate for a converged model
    momentum: float = Field(0.9, ge=0, lt=1)  # authors' SGD momentum
    weight_decay: float = Field(0.0, ge=0)  # none: decay would also pull retained knowledge
    # eps, eta, gamma and lam are in [0, 1] pixel units: fractions of the card's pixel range
    # (eps = 0.1 is 25.5 grey levels on a (0, 255) card), so a setting means the same whatever
    # range the model consumes.
    eps: float = Field(0.1, ge=0, le=1)  # L-inf radius of the boundary search
    eta: float = Field(0.1, ge=0, le=1)  # step of the sign-gradient search (eta = eps: one step)
    steps: int = Field(1, ge=1)  # inner search steps T (authors: 1)
    gamma: float = Field(1e-4, ge=0)  # noise scale: more exploration of other classes
    # Closeness pull toward x: more retention, less forgetting. It acts from the second inner
    # step on (at t = 0 the search point is x itself), so it needs steps >= 2: with the
    # default steps = 1 it changes nothing (a warning says so).
    lam: float = Field(0.0, ge=0)
    lam_schedule: LambdaSchedule = "constant"  # how lam changes over steps
    noise: Noise = "gaussian"  # distribution of the perturbation z
    early_stop: bool = False  # freeze a sample once the original model's label flips
    phi: float = Field(0.0, ge=0)  # weight of the retain loss (0: forget-only)
    # "ce" on retain labels, or "distill" to the original's outputs
    retain_loss: RetainLoss = "ce"
    # forget target: hard nearest label, soft probabilities, or top-k soft
    target: ForgetTarget = "hard"
    topk: int = Field(3, ge=1)  # classes kept for target="topk"
    # Take the nearest *other* class as the target even where the search did not cross the
    # boundary; otherwise (the authors' rule) such an image is trained on its own label, which
    # holds class forgetting back. Off by default: for scattered samples the own label can be
    # the right answer (a retrained model still gets most of them right).
    exclude_label: bool = False
    # Keep BatchNorm statistics fixed during the update. The authors leave them in train mode
    # (the default here); when the forget set is a whole device, forget-only batches drag the
    # statistics toward it and retention collapses (demo: retain 0.66 vs 0.96 frozen).
    # Frozen statistics stop following the weights, though: with phi = 0 the forget loss is
    # cheapest to lower by shifting every channel's mean, which the fixed statistics pass on
    # to every image (demo site, lr 1e-5, 6 passes: retain 0.96 -> 0.45; issue 14). Use
    # phi > 0 or reestimate_bn.
    freeze_bn: bool = False
    # Cosine decay of lr to 0 over the run (off: the authors' constant rate); a run then ends
    # settled instead of wherever its last noisy step left it.
    cosine: bool = False
    # After the update, recompute the BatchNorm statistics on the retain set, as a model
    # retrained without the forget set would have them (that run: retain 0.95).
    reestimate_bn: bool = False


def lambda_at(lam: float, schedule: str, t: int) -> float:
    """The closeness weight at inner step t (0-based)."""
    if schedule == "constant":
        return lam
    if schedule == "inverse":
        return lam / (t + 1)
    if schedule == "exponential":
        return lam * math.exp(-0.01 * t)
    return lam * max(0.0, 1.0 - t / 100.0)  # linear decay to 0 over 100 steps


def sample_noise(kind: str, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    if kind == "uniform":
        return 2 * u - 1
    if kind == "laplace":
        centred = u - 0.5
        return -torch.sign(centred) * torch.log1p(-2 * centred.abs().clamp(max=0.4999999))
    return torch.tan(math.pi * (u - 0.5))  # cauchy


def boundary_search(
    labeler: PixelSpaceModel,
    x: torch.Tensor,
    y: torch.Tensor,
    config: PSGConfig,
    generator: torch.Generator | None,
    global_n: int | None = None,
) -> torch.Tensor:
    """Algorithm 1: the perturbed point x~ for every image, within the eps ball and pixel range.

    The loss is summed, not averaged, so each image's gradient is its own (gamma then means the
    same at any batch size). ``labeler`` must be frozen and in eval mode.

    The search runs in [0, 1] pixel units, fractions of the card's pixel range (low, high):
    with s = high - low, the radius and step are s * eps and s * eta, and the direction is
    that of the gradient with respect to (x - low) / s plus noise and closeness (s * grad +
    gamma * z - lam * (x_t - x) / s), so a model consuming 0..255 gets the same search as the
    same model consuming 0..1 (identical, bit for bit, for a (0, 1) card).

    ``global_n``: ``x`` is this worker's slice (``distributed.shard``) of a global batch of
    that many images; the noise is drawn for the global batch and sliced likewise, so that
    every worker's generator stays in step and each image gets its single-process noise.
    """
    if config.eps == 0:  # the ball is the image itself: nothing to search
        return x.detach()
    low, high = labeler.low, labeler.high
    scale = high - low
    eps, eta = config.eps * scale, config.eta * scale
    lower, upper = (x - eps).clamp(min=low), (x + eps).clamp(max=high)
    rows = len(x) if global_n is None else global_n
    if global_n is not None and shard_size(global_n) != len(x):
        raise ValueError(f"{len(x)} images are not this worker's slice of {global_n}")
    x_t = x.detach().clone()
    active = None  # with early stop: the images whose label has not flipped yet
    for t in range(config.steps):
        x_t.requires_grad_(True)
        logits = labeler(x_t)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), x_t)
        x_t = x_t.detach()
        direction = grad * scale
        lam_t = lambda_at(config.lam, config.lam_schedule, t)
        if lam_t:
            direction = direction - lam_t * ((x_t - x) / scale)
        if config.gamma and generator is not None:
            like = grad if rows == len(grad) else grad.new_empty((rows, *grad.shape[1:]))
            z = sample_noise(config.noise, like, generator)
            direction = direction + config.gamma * (z if global_n is None else shard(z))
        stepped = torch.minimum(torch.maximum(x_t + eta * direction.sign(), lower), upper)
        x_t = stepped if active is None else torch.where(active, stepped, x_t)
        if config.early_stop and t + 1 < config.steps:
            with torch.no_grad():
                still = (labeler(x_t).argmax(1) == y).view(-1, 1, 1, 1)
            active = still if active is None else active & still
    return x_t.detach()


def forget_targets(logits_adv: torch.Tensor, y: torch.Tensor, config: PSGConfig) -> torch.Tensor:
    """Hard labels (N,) or soft probability targets (N, K) from the original's logits at x~."""
    if config.exclude_label:
        logits_adv = logits_adv.scatter(1, y.view(-1, 1), float("-inf"))
    if config.target == "hard":
        return logits_adv.argmax(1)
    if config.target == "topk":
        k = min(config.topk, logits_adv.shape[1])
        kth = logits_adv.topk(k, dim=1).values[:, -1:]
        logits_adv = logits_adv.masked_fill(logits_adv < kth, float("-inf"))
    return logits_adv.float().softmax(1)


def run_psg(ctx: UnlearnContext, config: PSGConfig) -> dict[str, Any]:
    """Algorithms 2-3: relabel each forget batch by boundary search, then one SGD step."""
    model, labeler = ctx.model, ctx.original
    optimizer = sgd(model, config.lr, config.momentum, config.weight_decay)
    steps = config.epochs * steps_per_pass(len(ctx.forget), config.batch_size)
    use_retain = config.phi > 0 and len(ctx.retain) > 0
    noise = ctx.generator(NOISE_STREAM) if config.gamma else None
    if config.lam > 0 and config.steps == 1 and is_main_process():
        log.warning(
            "psg: lam=%g has no effect with steps=1: the closeness pull starts at the second "
            "inner step; set steps >= 2 for lam to act",
            config.lam,
        )
    check_batchnorm_settings(ctx, config)

    def relabel(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = ctx.batch(FORGET_STREAM, len(ctx.forget), config.batch_size)
        x, y = ctx.forget.x[idx], ctx.forget.y[idx]
        x_adv = boundary_search(labeler, x, y, config, noise, ctx.batch_size(FORGET_STREAM))
        with torch.no_grad():
            logits_adv = labeler(x_adv)
        ctx.tally("flipped", (logits_adv.argmax(1) != y).sum())  # stays on the device
        ctx.tally("seen", len(y))
        return x, forget_targets(logits_adv, y, config)

    def loss_fn(step: int, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, target = batch
        loss = ctx.global_mean(F.cross_entropy(model(x).float(), target), FORGET_STREAM)
        if use_retain:
            idx = ctx.batch(RETAIN_STREAM, len(ctx.retain), config.batch_size)
            retain = ctx.global_mean(retain_term(ctx, config, idx), RETAIN_STREAM)
            loss = loss + config.phi * retain
        return loss

    schedule = cosine_schedule(optimizer, steps) if config.cosine else None
    run_steps(
        ctx,
        optimizer,
        steps,
        loss_fn,
        prepare=relabel,
        freeze_bn=config.freeze_bn,
        scheduler=schedule,
    )
    if config.reestimate_bn:
        reestimate_bn(ctx)
    counts = all_sum(torch.stack([ctx.tallies["flipped"], ctx.tallies["seen"]]))
    return {
        "steps": steps,
        "attack_success_ratio": round(counts[0].item() / max(1, counts[1].item()), 4),
    }


def check_batchnorm_settings(ctx: UnlearnContext, config: PSGConfig) -> None:
    """Refuse reestimate_bn without retain images; warn where frozen statistics and no retain
    term let the update shift every image (issue 14)."""
    if config.reestimate_bn and len(ctx.retain) == 0:
        raise UsageError(
            "psg.reestimate_bn recomputes BatchNorm statistics on the retain set, and it is empty",
            hint="set reestimate_bn=false, or select some retained data",
        )
    if config.freeze_bn and config.phi == 0 and not config.reestimate_bn and is_main_process():
        log.warning(
            "psg: freeze_bn with phi=0: nothing holds the retained images, and the forget loss "
            "is cheapest to lower by shifting every channel's mean, which the frozen BatchNorm "
            "statistics pass on to every image (retained ones too); set phi > 0 or "
            "reestimate_bn=true"
        )


def reestimate_bn(ctx: UnlearnContext) -> None:
    """BatchNorm statistics of the updated model recomputed on the retain set (every worker
    alike: each holds the whole retain set), as a model retrained on it would have them."""
    with ctx.timer.phase("reestimate_bn"):
        reestimate_batchnorm(ctx.model.net, ctx.card, ctx.retain, device=str(ctx.device))


def retain_term(ctx: UnlearnContext, config: PSGConfig, idx: torch.Tensor) -> torch.Tensor:
    x_r = ctx.retain.x[idx]
    logits = ctx.model(x_r).float()
    if config.retain_loss == "ce":
        return F.cross_entropy(logits, ctx.retain.y[idx])
    with torch.no_grad():
        teacher = ctx.original(x_r).float().softmax(1)
    return F.kl_div(logits.log_softmax(1), teacher, reduction="batchmean")


@register("psg", PSGConfig, "perturbed sign gradient boundary unlearning (Nahass et al. 2025)")
def psg(ctx: UnlearnContext, config: PSGConfig) -> dict[str, Any]:
    return run_psg(ctx, config)


_SHRINK_FIXES = "boundary_shrink fixes gamma = lam = phi = 0; use psg to change them"


@settings
class BoundaryShrinkConfig(PSGConfig):
    """psg with no noise, no closeness pull and no retain term (Chen et al. 2023)."""

    gamma: Annotated[float, Hint(_SHRINK_FIXES)] = Field(0.0, ge=0, le=0)  # no noise
    lam: Annotated[float, Hint(_SHRINK_FIXES)] = Field(0.0, ge=0, le=0)  # no closeness term
    phi: Annotated[float, Hint(_SHRINK_FIXES)] = Field(0.0, ge=0, le=0)  # forget loss only


@register(
    "boundary_shrink",
    BoundaryShrinkConfig,
    "Boundary Shrink (Chen et al. 2023) = psg with gamma=lam=phi=0",
)
def boundary_shrink(ctx: UnlearnContext, config: BoundaryShrinkConfig) -> dict[str, Any]:
    return run_psg(ctx, config)
