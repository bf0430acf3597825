"""Pieces the Fashion-MNIST benchmark and the scenario suite share: where the IDX files are,
and how a run is compared with the retrained reference (shared/reference/metrics.md)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

# Fashion-MNIST's class names, in label order (its README).
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def idx_file(folder: Path, stem: str) -> Path:
    """``folder/stem`` or ``folder/stem.gz``; a clear exit naming the Debian package if absent."""
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    raise SystemExit(
        f"{folder / stem}[.gz] not found: install Debian's dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist) or pass --data FOLDER"
    )


def distance(m: dict[str, float], reference: dict[str, float]) -> float:
    """The seed paper's D = sqrt((RA - RA_retrain)^2 + (FA - FA_retrain)^2)."""
    return round(math.hypot(m["ra"] - reference["ra"], m["fa"] - reference["fa"]), 4)


def avg_gap(m: dict[str, float], reference: dict[str, float]) -> float:
    """SalUn's Avg. Gap: mean |difference| over UA (= 1 - FA), RA, TA, MIA-Efficacy, percent."""
    gap = [
        abs((1 - m["fa"]) - (1 - reference["fa"])),
        abs(m["ra"] - reference["ra"]),
        abs(m["ta"] - reference["ta"]),
        abs(m["mia_efficacy"] - reference["mia_efficacy"]),
    ]
    return round(100 * statistics.fmean(gap), 2)


def compare_to_retrain(
    m: dict[str, float], reference: dict[str, float], seconds: float | None, retrain_s: float
) -> None:
    """Add distance, Avg. Gap and time / retrain (when the run has a time) to ``m``."""
    m["distance"] = distance(m, reference)
    m["avg_gap"] = avg_gap(m, reference)
    if seconds is not None:
        m["time_vs_retrain"] = round(seconds / retrain_s, 4)
