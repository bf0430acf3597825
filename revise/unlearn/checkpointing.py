"""When a run saves its state and how it takes it back: the checkpoints of :func:`run_steps`.

The file itself (one safetensors file, its identity and format) is :mod:`checkpoint`'s; this
module decides what goes in it - the model, optimizer and scheduler, the run's randomness
(:class:`~revise.unlearn.randomness.Randomness`), its running totals (:class:`Tallies`) and
its timer - and when: every ``every`` steps counted over all ``run_steps`` calls, between two
steps. Resuming, the calls before the checkpoint's are skipped and the checkpoint's call
continues from its step, so the run ends as the uninterrupted run does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revise.distributed import all_sum, is_main_process
from revise.unlearn import checkpoint
from revise.unlearn.checkpoint import Checkpoint
from revise.unlearn.randomness import Randomness
from revise.unlearn.timing import PhaseTimer


class Tallies:
    """Running totals kept across steps, as device tensors (no host synchronisation). Under
    torch.distributed each worker keeps its own part: sum them with ``all_sum`` at the end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._totals: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor | int | float) -> torch.Tensor:
        """Add ``value`` to the total ``name`` and return the total."""
        if not isinstance(value, torch.Tensor):
            dtype = torch.long if isinstance(value, int) else torch.float32
            value = torch.full((), value, dtype=dtype, device=self.device)
        total = self._totals.get(name)
        self._totals[name] = value.detach() if total is None else total + value.detach()
        return self._totals[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._totals[name]

    def __contains__(self, name: object) -> bool:
        return name in self._totals

    def summed(self) -> dict[str, torch.Tensor]:
        """Every total summed over the workers (every worker must call this)."""
        return {name: all_sum(t) for name, t in self._totals.items()}

    def restore(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Take back the totals of a checkpoint (``tally/<name>``). They are sums over all
        workers: rank 0 carries them, the others start again from zero."""
        mine = is_main_process()
        self._totals = {
            k.removeprefix("tally/"): (v if mine else torch.zeros_like(v)).to(self.device)
            for k, v in tensors.items()
            if k.startswith("tally/")
        }


@dataclass
class RunState:
    """What a checkpoint captures, besides the step counters."""

    model: nn.Module
    optimizer: Any
    scheduler: Any
    randomness: Randomness
    tallies: Tallies
    timer: PhaseTimer


@dataclass
class Checkpointing:
    """A run's checkpoints: written to ``folder`` every ``every`` steps (0: never), the run
    identified by ``identity`` (what its ``run_key`` digests); ``resume_from`` is consumed by
    the ``run_steps`` call it belongs to."""

    folder: Path | None = None
    every: int = 0
    identity: dict[str, Any] = field(default_factory=dict)
    resume_from: Checkpoint | None = None
    global_step: int = field(default=0, init=False)  # steps done over all run_steps calls
    resumed_from_step: int | None = field(default=None, init=False)
    _calls: int = field(default=0, init=False, repr=False)

    def enter_loop(self, run: RunState, steps: int) -> tuple[int, int | None]:
        """(index of this run_steps call, first step to run; None: skip the call). The call
        a resume belongs to gets the checkpoint's state back here."""
        call = self._calls
        self._calls += 1
        ck = self.resume_from
        if ck is None:
            return call, 0
        if call < ck.call:
            return call, None  # finished before the checkpoint was written
        if call > ck.call or ck.step > steps:
            raise RuntimeError(f"checkpoint {ck.path} does not fit this run's loop")
        self.restore(ck, run)
        self.resume_from = None
        return call, ck.step

    def step_done(self, call: int, step: int, run: RunState) -> None:
        """Count a step done (``step`` within call ``call``); save when one is due."""
        self.global_step += 1
        if self.every and self.folder is not None and self.global_step % self.every == 0:
            self.save(call, step, run)

    def save(self, call: int, step: int, run: RunState) -> None:
        """Write the state after ``step`` steps of run_steps call ``call`` (rank 0 writes; every
        worker must call this, the tallies are summed over workers)."""
        tallies = run.tallies.summed()
        rng = run.randomness.global_states()
        if not is_main_process() or self.folder is None:
            return
        tensors: dict[str, torch.Tensor] = {}
        for name, value in run.model.state_dict().items():
            tensors[f"model/{name}"] = checkpoint.cpu_copy(value)
        tensors.update(run.randomness.generator_states())
        tensors.update(rng)
        for name, value in tallies.items():
            tensors[f"tally/{name}"] = checkpoint.cpu_copy(value)
        state = {
            "run_key": checkpoint.run_key(self.identity),
            "identity": self.identity,
            "call": call,
            "step": step,
            "global_step": self.global_step,
            "streams": run.randomness.streams.state(),
            "optimizer": checkpoint.split(run.optimizer.state_dict(), "optimizer", tensors),
            "scheduler": (
                None
                if run.scheduler is None
                else checkpoint.split(run.scheduler.state_dict(), "scheduler", tensors)
            ),
            "timer": run.timer.state(),
            "cpu_threads": torch.get_num_threads(),
        }
        checkpoint.write(self.folder, state, tensors)

    def restore(self, ck: Checkpoint, run: RunState) -> None:
        t = ck.tensors
        model = {k.removeprefix("model/"): v for k, v in t.items() if k.startswith("model/")}
        run.model.load_state_dict(model)
        run.optimizer.load_state_dict(checkpoint.join(ck.state["optimizer"], t))
        if (run.scheduler is None) != (ck.state["scheduler"] is None):
            raise RuntimeError(f"checkpoint {ck.path} does not fit this run's scheduler")
        if run.scheduler is not None:
            run.scheduler.load_state_dict(checkpoint.join(ck.state["scheduler"], t))
        run.randomness.restore(t, ck.state["streams"])
        run.tallies.restore(t)
        run.timer.restore(ck.state["timer"])
        self.global_step = ck.global_step
        self.resumed_from_step = ck.global_step
