"""What every unlearning method shares: its data, loop helpers, timing and the registry.

A method is a function ``method(ctx, config) -> dict`` registered with :func:`register`. It
updates ``ctx.model`` in place and returns method-specific facts for the run record (e.g. the
attack success ratio). The loop helpers keep the GPU path fast: data lives on the device,
batches are drawn by index tensors, and counters stay device tensors until the end (no host
synchronisation inside the step loop).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from revise.distributed import average_gradients, shard
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel
from revise.registry import Registry


@dataclass
class LabelledTensors:
    """Images in pixel space (N, C, H, W) and their integer labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device) -> LabelledTensors:
        x = self.x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return LabelledTensors(x, self.y.to(device, non_blocking=True))


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


class PhaseTimer:
    """Wall-clock per phase. On CUDA, events are recorded and read once at the end (no sync
    inside the loop); on CPU, perf_counter is exact."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._cpu: dict[str, float] = {}
        self._events: dict[str, list[tuple[Any, Any]]] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.setdefault(name, []).append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._cpu[name] = self._cpu.get(name, 0.0) + time.perf_counter() - t0

    def seconds(self) -> dict[str, float]:
        out = dict(self._cpu)
        if self._events:
            torch.cuda.synchronize()
            for name, pairs in self._events.items():
                out[name] = out.get(name, 0.0) + sum(s.elapsed_time(e) for s, e in pairs) / 1e3
        return {k: round(v, 4) for k, v in out.items()}


@dataclass
class UnlearnContext:
    """Everything a method may use. ``model`` is trained; ``original`` stays frozen."""

    model: PixelSpaceModel
    original: PixelSpaceModel
    card: ModelCard
    forget: LabelledTensors
    retain: LabelledTensors
    device: torch.device
    seed: int
    timer: PhaseTimer
    progress: Callable[[int, int], None] = field(default=lambda done, total: None)

    def generator(self, stream: int) -> torch.Generator:
        """An independent, seeded random stream (data order, noise, ...) on the device."""
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1000 + stream)
        return g

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (fp32 master weights); plain fp32 on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def batch_indices(
    n: int, batch_size: int, steps: int, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """``steps`` batches of indices into ``n`` items, reshuffled at every pass (cycled).

    Under torch.distributed every worker draws the same global batches and yields its slice.
    """
    if n == 0:
        raise ValueError("cannot draw batches from an empty set")
    batch_size = min(batch_size, n)
    perm = torch.randperm(n, generator=generator, device=device)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm = torch.randperm(n, generator=generator, device=device)
            pos = 0
        yield shard(perm[pos : pos + batch_size])
        pos += batch_size


def steps_per_pass(n: int, batch_size: int) -> int:
    return max(1, -(-n // max(1, batch_size)))


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
    Both run under the device's autocast; nothing here synchronises with the host.
    """
    train_mode(ctx.model, freeze_bn=freeze_bn)
    for step in range(steps):
        batch = None
        if prepare is not None:
            with ctx.timer.phase(prepare_phase), ctx.autocast():
                batch = prepare(step)
        with ctx.timer.phase("update"):
            with ctx.autocast():
                loss = loss_fn(step, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(ctx.model.parameters())
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        ctx.progress(step + 1, steps)
    ctx.model.eval()


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
