"""Wall-clock time of a run, per phase, without host synchronisation inside the step loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    """Wait for this thread's work on ``device`` (its current CUDA stream), not for other
    threads' streams: concurrent sweep runs each wait only for themselves."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


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
