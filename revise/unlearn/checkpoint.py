"""Checkpoints of an unlearning run: one safetensors file, written atomically.

The file ``<folder>/checkpoint.safetensors`` holds every tensor (model state, optimizer
buffers, generator states, tallies) and, in its header metadata under ``revise.checkpoint``,
a JSON document with everything else (step, stream counters, optimizer hyperparameters,
scheduler state, timer totals and the run's identity). One file replaced with ``os.replace``
is either the old checkpoint or the new one, never a mixture; the header is readable without
loading the tensors (:func:`peek`).

The run's identity (``identity`` below) is what must match for a resume to give the
uninterrupted run's result: method, hyperparameters, seed, model (weights and card), data
(the forget and retain tensors), world size, device type and the revise and torch versions.
Its digest is the ``run_key``.

Nested state (``optimizer.state_dict()``, ``scheduler.state_dict()``) is split by
:func:`split` into JSON with tensor placeholders plus a flat tensor dict, and put back
together by :func:`join`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from revise._io.atomic import atomic_path

FILE = "checkpoint.safetensors"
FORMAT = 1
_META_KEY = "revise.checkpoint"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its JSON ``state`` and its (CPU) ``tensors``."""

    path: Path
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def call(self) -> int:
        """Which ``run_steps`` call of the method was running (0-based)."""
        return int(self.state["call"])

    @property
    def step(self) -> int:
        """Steps done within that call."""
        return int(self.state["step"])

    @property
    def global_step(self) -> int:
        """Steps done over the whole run."""
        return int(self.state["global_step"])


def run_key(identity: Mapping[str, Any]) -> str:
    """The digest of a run's identity (a JSON-able mapping)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two identities, one phrase per part ("seed differs: 0 != 1")."""
    current = json.loads(json.dumps(current, default=str))  # compare as stored
    out = []
    for part in sorted(set(saved) | set(current)):
        old, new = saved.get(part), current.get(part)
        if old == new:
            continue
        verb = "differ" if part.endswith("s") else "differs"
        if isinstance(old, dict) and isinstance(new, dict):
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            details = ", ".join(f"{k} {old.get(k)!r} != {new.get(k)!r}" for k in changed)
            out.append(f"{part} {verb}: {details}")
        elif isinstance(old, (str, int, float, type(None))) and len(str(old)) <= 32:
            out.append(f"{part} {verb}: {old!r} != {new!r}")
        else:
            out.append(f"{part} {verb}")
    return out


def tensors_digest(*tensors: torch.Tensor) -> str:
    """sha256 over the dtypes, shapes and bytes of ``tensors``, in order."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for ``obj`` with every tensor moved into ``tensors`` (under ``prefix/...``) and
    replaced by a placeholder; dicts with non-string keys and tuples keep their types."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = cpu_copy(obj)
        return {"__tensor__": prefix}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: split(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        return {"__items__": [[k, split(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [split(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [split(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint {prefix}: a {type(obj).__name__}")


def join(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: join(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(join(v, tensors) for v in obj["__tuple__"])
        return {k: join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join(v, tensors) for v in obj]
    return obj


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy sharing no storage (safetensors refuses shared storage)."""
    return t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def write(
    folder: str | os.PathLike, state: Mapping[str, Any], tensors: dict[str, torch.Tensor]
) -> Path:
    """Write (or replace) the checkpoint in ``folder`` atomically; return its path."""
    from safetensors.torch import save_file

    path = Path(folder) / FILE
    meta = {_META_KEY: json.dumps({"format": FORMAT, **state}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def peek(folder: str | os.PathLike | None) -> dict[str, Any] | None:
    """The JSON state of the checkpoint in ``folder`` (tensors not read), or None if absent."""
    if folder is None or not (Path(folder) / FILE).is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(Path(folder) / FILE), framework="pt") as f:
        return _state(f.metadata(), Path(folder) / FILE)


def load(folder: str | os.PathLike | None) -> Checkpoint | None:
    """The checkpoint in ``folder`` (tensors on the CPU), or None if there is none."""
    if folder is None or not (Path(folder) / FILE).is_file():
        return None
    from safetensors import safe_open

    path = Path(folder) / FILE
    with safe_open(str(path), framework="pt") as f:
        state = _state(f.metadata(), path)
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    return Checkpoint(path, state, tensors)


def _state(meta: Mapping[str, str] | None, path: Path) -> dict[str, Any]:
    from revise.errors import UsageError

    state = json.loads((meta or {}).get(_META_KEY, "null") or "null")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(
            f"{path} is not a revise checkpoint of this version",
            hint="start fresh without --resume",
        )
    return state
