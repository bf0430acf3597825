"""Several processes (GPUs or nodes) through torch.distributed, launched by torchrun.

Each worker runs the same method on the same global batches (same seed, same index streams)
and takes its slice of every batch (``rank::world``); random draws that go with a batch (search
noise, random labels) are drawn for the whole global batch on every worker and sliced the same
way, so every worker's random streams stay identical and each sample gets the noise it gets in
one process. Every loss term, a mean over the worker's slice, is weighted by
``local_n * world / global_n`` (:func:`global_mean`) and the update's backward pass runs
through DistributedDataParallel, which averages the gradients across workers
(``revise.unlearn.distribution``), so the update equals the single-process update on the
global batch even when the slices differ in size or one is empty (exactly so with BatchNorm
statistics frozen; with them training, each worker normalises its own slice). Rank 0 writes
the outputs.

Launch: ``revise unlearn --nproc-per-node N ...`` starts N local workers with torch's own
launcher (``torch.distributed.run``, i.e. torchrun); for several nodes run
``torchrun --nnodes ... -m revise.cli unlearn ...`` on each node.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes; return this worker's device."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This worker's slice of a global batch (of indices, or of anything drawn per sample)."""
    rank, world = rank_and_world()
    return batch if world == 1 else batch[rank::world]


def shard_size(global_n: int) -> int:
    """How many of ``global_n`` rows :func:`shard` gives this worker (0 when it gets none)."""
    rank, world = rank_and_world()
    return len(range(rank, global_n, world))


def global_mean(loss: torch.Tensor, global_n: int) -> torch.Tensor:
    """Weight ``loss``, this worker's mean over its :func:`shard` of a global batch of
    ``global_n`` rows, so that the gradients DistributedDataParallel averages are those of the
    mean over the global batch: times ``local_n * world / global_n``. One process: ``loss``
    itself. A worker with an empty slice (its mean is NaN) gives a zero that keeps the graph of
    its (empty) forward pass, so its gradients are zeros for the same parameters as the other
    workers' and the all-reduce lines up."""
    world = rank_and_world()[1]
    if world == 1:
        return loss
    local_n = shard_size(global_n)
    if local_n == 0:
        return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0) * 0.0
    return loss * (local_n * world / global_n)


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of a (device) tensor over all workers (itself when alone)."""
    if rank_and_world()[1] > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def all_gather_objects(value: Any) -> list[Any]:
    """Every worker's ``value`` (picklable), in rank order (``[value]`` when alone). A host
    synchronisation: for checkpoints, not for the step loop."""
    world = rank_and_world()[1]
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def finish() -> None:
    """Leave the process group together: a worker that tears gloo down while rank 0 is still
    evaluating and writing can abort at exit ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def relaunch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``revise <argv>`` in ``nproc`` local workers via torch.distributed.run (torchrun)."""
    from torch.distributed.run import main as torchrun

    args = ["--standalone", f"--nproc-per-node={nproc}", "-m", "revise.cli", *argv]
    try:
        torchrun(args)
    except SystemExit as exc:  # torchrun exits through SystemExit on success too
        return int(exc.code or 0)
    except Exception as exc:  # ChildFailedError: a worker failed; it printed its own error
        print(f"error: a distributed worker failed: {type(exc).__name__}", file=sys.stderr)
        return 1
    return 0
