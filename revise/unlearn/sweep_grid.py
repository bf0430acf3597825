"""A sweep's grid: its points, counted before they are built, and each point's config."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from revise.errors import UsageError
from revise.unlearn.api import make_config

# Each grid point is a whole unlearning run: a grid larger than this is a typo or a job for
# several sweeps, and is refused before anything is built or run.
MAX_GRID_POINTS = 4096


def grid_size(grid: Mapping[str, Sequence[Any]]) -> int:
    """The number of points of ``grid`` (the product of its value counts), without building it."""
    return math.prod(len(values) for values in grid.values())


def sweep_points(
    method: str, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The grid's points and each point's config, with every problem refused (UsageError)
    before any run: a grid of more than MAX_GRID_POINTS points (counted, not built), a setting
    given both in the grid and fixed, a value outside its bound."""
    size = grid_size(grid)
    if size > MAX_GRID_POINTS:
        counts = " x ".join(f"{len(values)} {name}" for name, values in grid.items())
        raise UsageError(
            f"the grid has {size} points ({counts}); a sweep runs at most {MAX_GRID_POINTS}",
            hint="give fewer values, or split the grid over several sweeps",
        )
    overlap = set(grid) & set(fixed or {})
    if overlap:
        raise UsageError(f"{', '.join(sorted(overlap))} given both as --grid and --set")
    points = expand_grid(grid)
    return points, [make_config(method, {**(fixed or {}), **point}) for point in points]


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order (first key varies slowest)."""
    if not grid:
        return [{}]
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]
