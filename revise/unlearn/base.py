"""What every unlearning method shares: its data, loop helpers, timing and the registry.

A method is a function ``method(ctx, config) -> dict`` registered with :func:`register`. It
updates ``ctx.model`` in place and returns method-specific facts for the run record (e.g. the
attack success ratio). The loop helpers keep the GPU path fast: data lives on the device,
batches are drawn by index tensors, and counters stay device tensors until the end (no host
synchronisation inside the step loop).

A run can be checkpointed and resumed with the same result, bit for bit on the CPU: batches,
random streams and running totals all live in the :class:`UnlearnContext`, whose state
:func:`run_steps` saves between steps and restores on resume (see ``checkpoint``).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revise.distributed import (
    all_gather_objects,
    all_sum,
    average_gradients,
    global_mean,
    is_main_process,
    rank_and_world,
    shard,
)
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel
from revise.registry import Registry
from revise.unlearn import checkpoint
from revise.unlearn.checkpoint import Checkpoint

# torch's global generator is shared by all threads: the few places that seed and draw from it
# (re-initialising layers, the run's global seed) hold this lock, so that runs of a concurrent
# sweep stay deterministic.
GLOBAL_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generator seeded with ``seed`` inside, restored after; one thread at a
    time. On CPU only the CPU generator is touched."""
    cuda = device.type == "cuda"
    with GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[device] if cuda else []):
        if cuda:
            torch.manual_seed(seed)
        else:
            torch.random.default_generator.manual_seed(seed)
        yield


def synchronize(device: torch.device) -> None:
    """Wait for this thread's work on ``device`` (its current CUDA stream), not for other
    threads' streams: concurrent sweep runs each wait only for themselves."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


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
    inside the loop); on CPU, perf_counter is exact. ``elapsed()`` is the run's clock; a resumed
    run carries the totals of the checkpoint it resumes from (``restore``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._cpu: dict[str, float] = {}
        self._events: dict[str, list[tuple[Any, Any]]] = {}
        self._carried = 0.0
        self._t0 = time.perf_counter()

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

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far (synchronises with the GPU on CUDA)."""
        out = dict(self._cpu)
        if self._events:
            synchronize(self.device)
            for name, pairs in self._events.items():
                out[name] = out.get(name, 0.0) + sum(s.elapsed_time(e) for s, e in pairs) / 1e3
        return out

    def seconds(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.totals().items()}

    def start_clock(self) -> None:
        """Start the run's clock now (``elapsed()`` counts from here)."""
        self._t0 = time.perf_counter()

    def elapsed(self) -> float:
        return self._carried + time.perf_counter() - self._t0

    def state(self) -> dict[str, Any]:
        return {"phases": self.totals(), "elapsed": self.elapsed()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's totals; time spent since the clock started (the set-up
        redone on resume) is dropped, so the totals are those of one uninterrupted run."""
        self._cpu = {k: float(v) for k, v in state["phases"].items()}
        self._events = {}
        self._carried = float(state["elapsed"])
        self._t0 = time.perf_counter()


def steps_per_pass(n: int, batch_size: int) -> int:
    """Batches in one pass over ``n`` items (the last one full, see :class:`BatchStreams`)."""
    return max(1, -(-n // max(1, batch_size)))


def pass_seed(seed: int, stream: int, pass_index: int) -> int:
    """The seed of the permutation of pass ``pass_index`` of batch stream ``stream``."""
    digest = hashlib.sha256(f"revise.batch/{seed}/{stream}/{pass_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class BatchStreams:
    """Batches of indices by stream number, each a pure function of (seed, stream, counter).

    A stream over ``n`` items in batches of ``bs = min(batch_size, n)`` makes passes of
    ``steps_per_pass(n, bs)`` batches. Pass ``p`` is a permutation of the ``n`` items seeded by
    (seed, stream, p) alone, cut into consecutive batches; the last batch of a pass is the last
    ``bs`` items of the permutation, so every item is seen in every pass and every batch is full
    (it overlaps the batch before when ``bs`` does not divide ``n``). A stream's whole state is
    its counter: restoring the counters restores the batches. Under torch.distributed every
    worker draws the same global batch and takes its slice.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed, self.device = seed, device
        self._counters: dict[int, int] = {}
        self._shapes: dict[int, tuple[int, int]] = {}
        self._perms: dict[int, tuple[int, torch.Tensor]] = {}  # the current pass, per stream

    def next(self, stream: int, n: int, batch_size: int) -> torch.Tensor:
        """The next batch of indices into ``n`` items from ``stream``."""
        if n <= 0:
            raise ValueError("cannot draw batches from an empty set")
        bs = min(batch_size, n)
        shape = self._shapes.setdefault(stream, (n, bs))
        if shape != (n, bs):
            raise ValueError(
                f"batch stream {stream} draws {shape[1]} of {shape[0]}: not {bs} of {n}"
            )
        k = self._counters.get(stream, 0)
        self._counters[stream] = k + 1
        p, j = divmod(k, steps_per_pass(n, bs))
        cached = self._perms.get(stream)
        if cached is None or cached[0] != p:
            g = torch.Generator(device=self.device)
            g.manual_seed(pass_seed(self.seed, stream, p))
            cached = (p, torch.randperm(n, generator=g, device=self.device))
            self._perms[stream] = cached
        start = min(j * bs, n - bs)
        return shard(cached[1][start : start + bs])

    def size(self, stream: int) -> int:
        """The global size of ``stream``'s batches (all workers' slices together)."""
        if stream not in self._shapes:
            raise ValueError(f"no batch drawn from stream {stream} yet")
        return self._shapes[stream][1]

    def state(self) -> dict[str, int]:
        return {str(stream): k for stream, k in sorted(self._counters.items())}

    def load(self, state: dict[str, int]) -> None:
        self._counters = {int(stream): int(k) for stream, k in state.items()}
        self._perms.clear()


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
    forget: LabelledTensors
    retain: LabelledTensors
    device: torch.device
    seed: int
    timer: PhaseTimer
    progress: Callable[[int, int], None] = field(default=lambda done, total: None)
    checkpoint_dir: Path | None = None  # where run_steps writes checkpoints
    checkpoint_every: int = 0  # steps between checkpoints (0: none)
    identity: dict[str, Any] = field(default_factory=dict)  # what the run_key digests
    resume_from: Checkpoint | None = None  # consumed by the run_steps call it belongs to
    # Called with the model (in eval mode) and the global step every ``monitor_every`` steps,
    # between two steps; True ends the run there (later run_steps calls do nothing). Used by
    # the automatic revision to stop a candidate once it meets its target.
    monitor: Callable[[nn.Module, int], bool] | None = None
    monitor_every: int = 0
    stopped_at_step: int | None = field(default=None, init=False)
    resumed_from_step: int | None = field(default=None, init=False)
    global_step: int = field(default=0, init=False)  # steps done over all run_steps calls
    tallies: dict[str, torch.Tensor] = field(default_factory=dict, init=False)
    _streams: BatchStreams = field(init=False, repr=False)
    _generators: dict[int, torch.Generator] = field(default_factory=dict, init=False, repr=False)
    _calls: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._streams = BatchStreams(self.seed, self.device)

    def batch(self, stream: int, n: int, batch_size: int) -> torch.Tensor:
        """The next batch of indices into ``n`` items from batch stream ``stream`` (see
        :class:`BatchStreams`); methods that share a stream number draw the same batches."""
        return self._streams.next(stream, n, batch_size)

    def batch_size(self, stream: int) -> int:
        """The global size of the batches of batch stream ``stream`` (its last :meth:`batch`);
        this worker's batch is its slice of that many (``distributed.shard``)."""
        return self._streams.size(stream)

    def global_mean(self, loss: torch.Tensor, stream: int) -> torch.Tensor:
        """``loss``, a mean over this worker's slice of the last batch of ``stream``, weighted so
        that the update is that of the mean over the global batch (``distributed.global_mean``;
        ``loss`` itself in one process). Every per-batch loss term goes through this."""
        return global_mean(loss, self._streams.size(stream))

    def generator(self, stream: int) -> torch.Generator:
        """An independent, seeded random stream (noise, labels, ...) on the device; its state
        is checkpointed. Ask once per stream and keep the generator. Under torch.distributed,
        draw for the global batch and take this worker's slice (``distributed.shard``), so that
        every worker's generator goes through the same states (rank 0's is the one saved)."""
        if stream in self._generators:
            raise ValueError(f"random stream {stream} is already in use; keep its generator")
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1000 + stream)
        self._generators[stream] = g
        return g

    def tally(self, name: str, value: torch.Tensor | int | float) -> torch.Tensor:
        """Add ``value`` to the running total ``name`` (a device tensor, checkpointed; no host
        synchronisation) and return the total. Under torch.distributed each worker keeps its
        own part; sum them with ``all_sum`` at the end."""
        if not isinstance(value, torch.Tensor):
            dtype = torch.long if isinstance(value, int) else torch.float32
            value = torch.full((), value, dtype=dtype, device=self.device)
        total = self.tallies.get(name)
        self.tallies[name] = value.detach() if total is None else total + value.detach()
        return self.tallies[name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (fp32 master weights); plain fp32 on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- checkpoints: used by run_steps -----------------------------------------------------

    def _enter_loop(self, optimizer: Any, scheduler: Any, steps: int) -> tuple[int, int | None]:
        """(index of this run_steps call, first step to run; None: skip the call)."""
        call = self._calls
        self._calls += 1
        ck = self.resume_from
        if ck is None:
            return call, 0
        if call < ck.call:
            return call, None  # finished before the checkpoint was written
        if call > ck.call or ck.step > steps:
            raise RuntimeError(f"checkpoint {ck.path} does not fit this run's loop")
        self._restore(ck, optimizer, scheduler)
        self.resume_from = None
        self.progress(ck.step, steps)
        return call, ck.step

    def _step_done(self, call: int, step: int, optimizer: Any, scheduler: Any) -> None:
        self.global_step += 1
        every = self.checkpoint_every
        if every and self.checkpoint_dir is not None and self.global_step % every == 0:
            self.save_checkpoint(call, step, optimizer, scheduler)

    def save_checkpoint(self, call: int, step: int, optimizer: Any, scheduler: Any) -> None:
        """Write the state after ``step`` steps of run_steps call ``call`` (rank 0 writes; every
        worker must call this, the tallies are summed over workers)."""
        tallies = {name: all_sum(t) for name, t in self.tallies.items()}
        rng = self._rng_states()
        if not is_main_process() or self.checkpoint_dir is None:
            return
        tensors: dict[str, torch.Tensor] = {}
        for name, value in self.model.state_dict().items():
            tensors[f"model/{name}"] = checkpoint.cpu_copy(value)
        for stream, g in self._generators.items():
            tensors[f"generator/{stream}"] = g.get_state()
        tensors.update(rng)
        for name, value in tallies.items():
            tensors[f"tally/{name}"] = checkpoint.cpu_copy(value)
        state = {
            "run_key": checkpoint.run_key(self.identity),
            "identity": self.identity,
            "call": call,
            "step": step,
            "global_step": self.global_step,
            "streams": self._streams.state(),
            "optimizer": checkpoint.split(optimizer.state_dict(), "optimizer", tensors),
            "scheduler": (
                None
                if scheduler is None
                else checkpoint.split(scheduler.state_dict(), "scheduler", tensors)
            ),
            "timer": self.timer.state(),
            "cpu_threads": torch.get_num_threads(),
        }
        checkpoint.write(self.checkpoint_dir, state, tensors)

    def _rng_states(self) -> dict[str, torch.Tensor]:
        """torch's global CPU (and CUDA) generator states of every worker, for rank 0 to save:
        rank 0's as ``rng/cpu`` (``rng/cuda``), rank r's as ``rng/cpu/rank<r>``."""
        mine = {"rng/cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        states = all_gather_objects(mine)
        out = dict(states[0])
        for rank, theirs in enumerate(states[1:], start=1):
            out.update({f"{key}/rank{rank}": value for key, value in theirs.items()})
        return out

    def _restore(self, ck: Checkpoint, optimizer: Any, scheduler: Any) -> None:
        t = ck.tensors
        model = {k.removeprefix("model/"): v for k, v in t.items() if k.startswith("model/")}
        self.model.load_state_dict(model)
        optimizer.load_state_dict(checkpoint.join(ck.state["optimizer"], t))
        if (scheduler is None) != (ck.state["scheduler"] is None):
            raise RuntimeError(f"checkpoint {ck.path} does not fit this run's scheduler")
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint.join(ck.state["scheduler"], t))
        for key, value in t.items():
            if key.startswith("generator/"):
                stream = int(key.removeprefix("generator/"))
                if stream not in self._generators:
                    raise RuntimeError(f"random stream {stream} is not set up before the loop")
                self._generators[stream].set_state(value)
        # torch's global streams (dropout) advance with each worker's own slice: each worker
        # takes back its own (rank 0's under the plain names, others' under "/rank<r>").
        rank = rank_and_world()[0]
        suffix = f"/rank{rank}" if rank else ""
        torch.set_rng_state(t["rng/cpu" + suffix])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(t["rng/cuda" + suffix], self.device)
        mine = is_main_process()  # the saved totals are over all workers: rank 0 carries them
        self.tallies = {
            k.removeprefix("tally/"): (v if mine else torch.zeros_like(v)).to(self.device)
            for k, v in t.items()
            if k.startswith("tally/")
        }
        self._streams.load(ck.state["streams"])
        self.timer.restore(ck.state["timer"])
        self.global_step = ck.global_step
        self.resumed_from_step = ck.global_step


def random_other_labels(
    y: torch.Tensor, num_classes: int, generator: torch.Generator, global_n: int | None = None
) -> torch.Tensor:
    """For every label, a class drawn uniformly from the ``num_classes - 1`` other classes
    (on ``y``'s device); used by random_label and salun.

    ``global_n``: ``y`` (1-D) is this worker's slice (``distributed.shard``) of a global batch
    of that many labels; the offsets are drawn for the whole global batch, then sliced, so that
    every worker's generator goes through the same states and each sample gets the label it
    gets in one process."""
    if global_n is None:
        offset = torch.randint(1, num_classes, y.shape, generator=generator, device=y.device)
    else:
        drawn = torch.randint(1, num_classes, (global_n,), generator=generator, device=y.device)
        offset = shard(drawn)
        if offset.shape != y.shape:
            raise ValueError(f"{len(y)} labels are not this worker's slice of {global_n}")
    return (y + offset) % num_classes


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

    Checkpoints: every ``ctx.checkpoint_every`` steps (counted over all calls of the run),
    between two steps, the model, optimizer, scheduler, batch counters, generators, tallies and
    timer totals go to ``ctx.checkpoint_dir``. Resuming (``ctx.resume_from``), a method redoes
    its set-up as usual; calls of run_steps before the checkpoint's are skipped, the
    checkpoint's call restores that state and continues from its step, later calls run as
    usual. Code between two calls must therefore not depend on what the first one did other
    than through the model, the optimizer and the context.
    """
    call, first = ctx._enter_loop(optimizer, scheduler, steps)
    if first is None or ctx.stopped_at_step is not None:
        return
    train_mode(ctx.model, freeze_bn=freeze_bn)
    for step in range(first, steps):
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
        ctx._step_done(call, step + 1, optimizer, scheduler)
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
