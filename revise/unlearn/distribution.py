"""Where a run computes: this worker's device and the precision of its steps, and under
torch.distributed its place among the workers (see :mod:`revise.distributed`)."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from revise.distributed import global_mean, rank_and_world


class Distribution:
    """This worker's view of the run's computation: its device, its autocast, its rank among
    ``world`` workers, the weighting of its loss terms and the data-parallel wrapper of the
    loop (one process: rank 0 of 1, loss terms as they are, nothing wrapped)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def rank(self) -> int:
        return rank_and_world()[0]

    @property
    def world(self) -> int:
        return rank_and_world()[1]

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (fp32 master weights); plain fp32 on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def global_mean(self, loss: torch.Tensor, global_n: int) -> torch.Tensor:
        """``loss``, a mean over this worker's slice of a global batch of ``global_n`` rows,
        weighted so that the averaged update is that of the mean over the global batch."""
        return global_mean(loss, global_n)

    @contextlib.contextmanager
    def data_parallel(self, model: nn.Module) -> Iterator[DataParallel]:
        """``model`` made ready for an optimisation loop over the workers (see
        :class:`DataParallel`); nothing to do in one process."""
        parallel = DataParallel(model, self.device, self.world)
        try:
            yield parallel
        finally:
            parallel.close()


class _Bare(nn.Module):
    """``model``'s own forward, for DistributedDataParallel to wrap while ``model.forward``
    points at the wrapper."""

    def __init__(self, model: nn.Module, forward: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward(*args, **kwargs)


@functools.cache
def _rank_local_buffers() -> dict[str, bool]:
    """The DDP option that leaves each worker its own BatchNorm statistics during the loop
    (``broadcast_buffers`` until torch 2.13 renamed it)."""
    names = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in names:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class DataParallel:
    """Under torch.distributed, ``model`` wrapped in DistributedDataParallel for the update
    forwards: inside :meth:`forwards`, calling ``model`` (the method's losses do) runs through
    the wrapper, so the backward pass all-reduces the gradients as their buckets fill and every
    worker steps with their average. Each loss term is a :func:`global_mean` of its slice, so
    that average is the one-process gradient of the global batch.

    The model itself stays bare (its state dict, checkpoints and hooks unchanged: hooks on it
    fire once, around the wrapper); forwards outside :meth:`forwards` - psg's boundary search
    and its input gradients, a monitor's evaluation, salun's saliency before the loop - never
    touch the wrapper and all-reduce nothing. BatchNorm statistics stay each worker's own
    (buffers are not broadcast at every forward; the wrapper's construction makes every worker
    start the loop from rank 0's, which all workers hold anyway). Every trainable parameter
    must be reached by every update forward (``find_unused_parameters`` off; a worker with an
    empty slice reaches them through :func:`global_mean`'s zero): the loss terms of every method
    run the whole trained model.
    """

    def __init__(self, model: nn.Module, device: torch.device, world: int) -> None:
        self.model = model
        self.ddp: DistributedDataParallel | None = None
        if world > 1 and any(p.requires_grad for p in model.parameters()):
            self.ddp = DistributedDataParallel(
                _Bare(model, model.forward),
                device_ids=[device] if device.type == "cuda" else None,
                find_unused_parameters=False,
                **_rank_local_buffers(),
            )

    @contextlib.contextmanager
    def forwards(self) -> Iterator[None]:
        """Calls of the model inside go through the DistributedDataParallel wrapper."""
        if self.ddp is None:
            yield
            return
        model, ddp = self.model, self.ddp
        own = model.__dict__.get("forward")  # an instance's own forward, if it has one
        model.forward = lambda *args, **kwargs: ddp(*args, **kwargs)
        try:
            yield
        finally:
            if own is None:
                del model.forward
            else:
                model.forward = own

    def close(self) -> None:
        """Drop the wrapper (and its gradient hooks on the parameters)."""
        self.ddp = None
