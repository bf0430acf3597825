"""A run's randomness, all of it a function of its seed: batch streams, random streams, and
torch's global generator.

Batches are drawn by stream number (:class:`BatchStreams`), other random draws (noise, labels)
from seeded generators by stream number (:meth:`Randomness.generator`); both are saved in a
checkpoint and restored on resume, with each worker's state of torch's global generator
(dropout), so that a resumed run draws what the uninterrupted run draws.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator, Mapping

import torch

from revise.distributed import all_gather_objects, rank_and_world, shard

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


class Randomness:
    """Every random draw of a run: its batch streams, its seeded random streams (generators on
    the device) and, for checkpoints, torch's global generator of every worker."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed, self.device = seed, device
        self.streams = BatchStreams(seed, device)
        self.generators: dict[int, torch.Generator] = {}

    def batch(self, stream: int, n: int, batch_size: int) -> torch.Tensor:
        return self.streams.next(stream, n, batch_size)

    def batch_size(self, stream: int) -> int:
        return self.streams.size(stream)

    def generator(self, stream: int) -> torch.Generator:
        """A new generator for random stream ``stream``, seeded from the run's seed; one per
        stream (a second ask is an error: keep the first)."""
        if stream in self.generators:
            raise ValueError(f"random stream {stream} is already in use; keep its generator")
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1000 + stream)
        self.generators[stream] = g
        return g

    # -- checkpoints ------------------------------------------------------------------------

    def global_states(self) -> dict[str, torch.Tensor]:
        """torch's global CPU (and CUDA) generator states of every worker, for rank 0 to save:
        rank 0's as ``rng/cpu`` (``rng/cuda``), rank r's as ``rng/cpu/rank<r>``. Every worker
        must call this (it gathers)."""
        mine = {"rng/cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        states = all_gather_objects(mine)
        out = dict(states[0])
        for rank, theirs in enumerate(states[1:], start=1):
            out.update({f"{key}/rank{rank}": value for key, value in theirs.items()})
        return out

    def generator_states(self) -> dict[str, torch.Tensor]:
        return {f"generator/{stream}": g.get_state() for stream, g in self.generators.items()}

    def restore(self, tensors: Mapping[str, torch.Tensor], streams: dict[str, int]) -> None:
        """Take back the generators (asked for again by the method's set-up), this worker's
        global generator and the batch counters from a checkpoint's tensors and ``streams``."""
        for key, value in tensors.items():
            if key.startswith("generator/"):
                stream = int(key.removeprefix("generator/"))
                if stream not in self.generators:
                    raise RuntimeError(f"random stream {stream} is not set up before the loop")
                self.generators[stream].set_state(value)
        # torch's global streams (dropout) advance with each worker's own slice: each worker
        # takes back its own (rank 0's under the plain names, others' under "/rank<r>").
        rank = rank_and_world()[0]
        suffix = f"/rank{rank}" if rank else ""
        torch.set_rng_state(tensors["rng/cpu" + suffix])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda" + suffix], self.device)
        self.streams.load(streams)


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
