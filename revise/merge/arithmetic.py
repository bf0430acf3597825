"""Task-vector strength merging: theta = theta_0 + sum_i s_i (theta_i - theta_0)."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence

import torch

from revise.errors import UsageError

Override = tuple[str, tuple[float, ...]]  # (fnmatch pattern, strength per run)


def parse_strengths(text: str, n_runs: int, what: str = "--strengths") -> tuple[float, ...]:
    """``"0.7,0.5"`` -> one strength per run; a single value is used for every run."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} {text!r}: not comma-separated numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{what} {text!r}: strengths must be finite numbers")
    if len(values) == 1:
        values = values * n_runs
    if len(values) != n_runs:
        raise UsageError(f"{what} {text!r} gives {len(values)} strengths for {n_runs} runs")
    return values


def parse_override(text: str, n_runs: int) -> Override:
    """``"fc.*=1.0"`` (every run) or ``"fc.*=1.0,0.0"`` (per run)."""
    pattern, sep, values = text.rpartition("=")
    if not sep or not pattern.strip():
        raise UsageError(f"--strength {text!r} is not PATTERN=S[,S...]", hint='e.g. "fc.*=1.0"')
    return pattern.strip(), parse_strengths(values, n_runs, f"--strength {pattern.strip()}")


def strengths_for(
    key: str, strengths: Sequence[float], overrides: Sequence[Override] = ()
) -> tuple[float, ...]:
    """The strengths used for ``key``: those of the first override matching it, else the
    global ones."""
    for pattern, values in overrides:
        if fnmatch.fnmatchcase(key, pattern):
            return tuple(values)
    return tuple(strengths)


def task_arithmetic(
    base: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    strengths: Sequence[float],
    overrides: Sequence[Override] = (),
) -> dict[str, torch.Tensor]:
    """theta_0 + sum_i s_i (theta_i - theta_0) for every floating-point tensor, computed in
    float64 and cast back; integer buffers (BatchNorm's num_batches_tracked) are the base's
    (re-estimate BatchNorm statistics afterwards: see :func:`reestimate_batchnorm`)."""
    if len(strengths) != len(states):
        raise UsageError(f"{len(strengths)} strengths for {len(states)} runs")
    for pattern, values in overrides:
        if len(values) != len(states):
            raise UsageError(f"--strength {pattern}: {len(values)} values for {len(states)} runs")
    merged: dict[str, torch.Tensor] = {}
    for key, theta0 in base.items():
        if not theta0.is_floating_point():
            merged[key] = theta0.detach().clone()
            continue
        s = strengths_for(key, strengths, overrides)
        acc = theta0.detach().double().clone()
        for weight, state in zip(s, states, strict=True):
            if weight:
                acc += weight * (state[key].detach().double() - theta0.detach().double())
        merged[key] = acc.to(theta0.dtype)
    return merged
