"""What every unlearning method shares: its data, the context it runs in, the loop and the
registry.

A method is a function ``method(ctx, config) -> dict`` registered with :func:`register`. It
updates ``ctx.model`` in place and returns method-specific facts for the run record (e.g. the
attack success ratio). The loop helpers keep the GPU path fast: data lives on the device,
batches are drawn by index tensors, and counters stay device tensors until the end (no host
synchronisation inside the step loop).

The :class:`UnlearnContext` is composed of one collaborator per reason to change: the run's
randomness (``randomness``), its running totals (``tallies``), where it computes
(``distribution``: device, autocast, workers), its checkpoints (``checkpoints``) and its timer
(``timer``). A run can be checkpointed and resumed with the same result, bit for bit on the CPU:
:func:`run_steps` saves their state between steps and restores it on resume.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from revise.data.sets import DecodedSet
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel
from revise.registry import Registry
from revise.unlearn.checkpoint import Checkpoint
from revise.unlearn.checkpointing import Checkpointing, RunState, Tallies
from revise.unlearn.distribution import Distribution
from revise.unlearn.randomness import GLOBAL_RNG_LOCK as GLOBAL_RNG_LOCK
from revise.unlearn.randomness import BatchStreams as BatchStreams
from revise.unlearn.randomness import Randomness
from revise.unlearn.randomness import pass_seed as pass_seed
from revise.unlearn.randomness import random_other_labels as random_other_labels
from revise.unlearn.randomness import seeded_global_rng as seeded_global_rng
from revise.unlearn.randomness import steps_per_pass as steps_per_pass
from revise.unlearn.timing import PhaseTimer
from revise.unlearn.timing import synchronize as synchronize


@dataclass
class Method:
    name: str
    run: Callable[..., dict[str, Any]]
    config_type: type
    summary: str


METHODS: Registry[Method] = Registry("unlearning method")


def register(name: str, config_type: type, summary: str) -> Callable[[Callable], Callable]:
    """Register ``fn(ctx, config)`` as method ``name`` with its hyperparameter dataclass."""

    def decorator(fn: Callable) -> Callable:
        METHODS.add(name, Method(name, fn, config_type, summary), summary)
        return fn

    return decorator


@dataclass
class UnlearnContext:
    """Everything a method may use. ``model`` is trained; ``original`` stays frozen.

    Randomness and running totals go through the context so that a checkpoint can capture
    them: batches through :meth:`batch`, random streams through :meth:`generator`, totals kept
    across steps through :meth:`tally`. Set-up done before :func:`run_steps` must be
    deterministic (it is simply redone on resume).
    """

    model: PixelSpaceModel
    original: PixelSpaceModel
    card: ModelCard
    forget: DecodedSet
    retain: DecodedSet
    device: torch.device
    seed: int
    timer: PhaseTimer
    progress: Callable[[int, int], None] = field(default=lambda done, total: None)
    checkpoints: Checkpointing = field(default_factory=Checkpointing)
    # Called with the model (in eval mode) and the global step every ``monitor_every`` steps,
    # between two steps; True ends the run there (later run_steps calls do nothing). Used by
    # the automatic revision to stop a candidate once it meets its target.
    monitor: Callable[[nn.Module, int], bool] | None = None
    monitor_every: int = 0
    stopped_at_step: int | None = field(default=None, init=False)
    randomness: Randomness = field(init=False, repr=False)
    tallies: Tallies = field(init=False, repr=False)
    distribution: Distribution = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.randomness = Randomness(self.seed, self.device)
        self.tallies = Tallies(self.device)
        self.distribution = Distribution(self.device)

    def batch(self, stream: int, n: int, batch_size: int) -> torch.Tensor:
        """The next batch of indices into ``n`` items from batch stream ``stream`` (see
        :class:`BatchStreams`); methods that share a stream number draw the same batches."""
        return self.randomness.batch(stream, n, batch_size)

    def batch_size(self, stream: int) -> int:
        """The global size of the batches of batch stream ``stream`` (its last :meth:`batch`);
        this worker's batch is its slice of that many (``distributed.shard``)."""
        return self.randomness.batch_size(stream)

    def global_mean(self, loss: torch.Tensor, stream: int) -> torch.Tensor:
        """``loss``, a mean over this worker's slice of the last batch of ``stream``, weighted so
        that the update is that of the mean over the global batch (``distributed.global_mean``;
        ``loss`` itself in one process). Every per-batch loss term goes through this."""
        return self.distribution.global_mean(loss, self.randomness.batch_size(stream))

    def generator(self, stream: int) -> torch.Generator:
        """An independent, seeded random stream (noise, labels, ...) on the device; its state
        is checkpointed. Ask once per stream and keep the generator. Under torch.distributed,
        draw for the global batch and take this worker's slice (``distributed.shard``), so that
        every worker's generator goes through the same states (rank 0's is the one saved)."""
        return self.randomness.generator(stream)

    def tally(self, name: str, value: torch.Tensor | int | float) -> torch.Tensor:
        """Add ``value`` to the running total ``name`` (a device tensor, checkpointed; no host
        synchronisation) and return the total. Under torch.distributed each worker keeps its
        own part; sum them with ``all_sum`` at the end."""
        return self.tallies.add(name, value)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (fp32 master weights); plain fp32 on CPU."""
        return self.distribution.autocast()

    @property
    def global_step(self) -> int:
        """Steps done over all run_steps calls (a resumed run counts those it resumes from)."""
        return self.checkpoints.global_step

    @property
    def resume_from(self) -> Checkpoint | None:
        """The checkpoint to resume from, until the run_steps call it belongs to takes it."""
        return self.checkpoints.resume_from

    @property
    def resumed_from_step(self) -> int | None:
        return self.checkpoints.resumed_from_step

    def run_state(self, optimizer: Any, scheduler: Any) -> RunState:
        """What a checkpoint of the loop that steps ``optimizer`` captures."""
        return RunState(self.model, optimizer, scheduler, self.randomness, self.tallies, self.timer)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def run_steps(
    ctx: UnlearnContext,
    optimizer: torch.optim.Optimizer,
    steps: int,
    loss_fn: Callable[[int, Any], torch.Tensor],
    *,
    prepare: Callable[[int], Any] | None = None,
    prepare_phase: str = "attack",
    scheduler: Any = None,
    freeze_bn: bool = False,
) -> None:
    """The optimisation loop every method shares.

    Each step: ``batch = prepare(step)`` (timed as ``prepare_phase``, e.g. psg's boundary
    search), then ``loss_fn(step, batch)``, backward and optimizer step (timed as ``update``).
    Both run under the device's autocast; nothing here synchronises with the host. Under
    torch.distributed, the forwards of ``loss_fn`` go through DistributedDataParallel (see
    :class:`~revise.unlearn.distribution.DataParallel`), those of ``prepare`` do not.

    Checkpoints (``ctx.checkpoints``): every ``every`` steps (counted over all calls of the
    run), between two steps, the model, optimizer, scheduler, batch counters, generators,
    tallies and timer totals go to its ``folder``. Resuming (``resume_from``), a method redoes
    its set-up as usual; calls of run_steps before the checkpoint's are skipped, the
    checkpoint's call restores that state and continues from its step, later calls run as
    usual. Code between two calls must therefore not depend on what the first one did other
    than through the model, the optimizer and the context.
    """
    run = ctx.run_state(optimizer, scheduler)
    call, first = ctx.checkpoints.enter_loop(run, steps)
    if first:  # resumed from a checkpoint within this call
        ctx.progress(first, steps)
    if first is None or ctx.stopped_at_step is not None:
        return
    train_mode(ctx.model, freeze_bn=freeze_bn)
    with ctx.distribution.data_parallel(ctx.model) as parallel:
        for step in range(first, steps):
            batch = None
            if prepare is not None:
                with ctx.timer.phase(prepare_phase), ctx.autocast():
                    batch = prepare(step)
            with ctx.timer.phase("update"):
                with parallel.forwards(), ctx.autocast():
                    loss = loss_fn(step, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # under torch.distributed: gradients averaged over workers
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            ctx.progress(step + 1, steps)
            ctx.checkpoints.step_done(call, step + 1, run)
            if _monitor_says_stop(ctx, freeze_bn):
                break
    ctx.model.eval()


def _monitor_says_stop(ctx: UnlearnContext, freeze_bn: bool) -> bool:
    """Ask ``ctx.monitor`` (when one is due) whether to end the run after this step."""
    every = ctx.monitor_every
    if ctx.monitor is None or not every or ctx.global_step % every:
        return False
    ctx.model.eval()
    stop = ctx.monitor(ctx.model, ctx.global_step)
    train_mode(ctx.model, freeze_bn=freeze_bn)
    if stop:
        ctx.stopped_at_step = ctx.global_step
    return bool(stop)


def train_mode(model: nn.Module, *, freeze_bn: bool = False) -> None:
    """Training mode; with ``freeze_bn`` the BatchNorm layers keep their running statistics."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int) -> Any:
    """The learning rate decayed to 0 along a half cosine over ``steps`` steps."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
