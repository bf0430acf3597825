"""The calibration slice: held-out rows the automatic revision may look at, which validation
then never judges.

A row is a calibration row when a hash of its patient pseudonym (its sample_key when the
patient is unknown) falls below the fraction: a pure function of the row, so that `revise
validate` finds the same rows from the run record alone, and a patient's images are never split
between the slice that tunes and the slice that judges.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from revise._io.outputs import RUN_RECORD
from revise._run_record import RunRecord, read_run_record

FRACTION = 0.3  # of the held-out rows; the rest stay for validation
MIN_PATIENTS = 10  # held-out patients needed to slice by patient rather than by row
RULE = (
    "sha256('revise.calibration/' + patient, or sample_key without one or with fewer than "
    "10 held-out patients) < fraction"
)
HELDOUT_SETS = ("heldout_forget", "heldout_retain")


def _unit(text: str) -> float:
    digest = hashlib.sha256(f"revise.calibration/{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def calibration_mask(rows: pd.DataFrame, fraction: float = FRACTION) -> pd.Series:
    """True for the rows of the calibration slice: whole patients where the rows hold at least
    MIN_PATIENTS of them (fewer could put every row on one side), else single rows."""
    if rows.empty:
        return pd.Series(False, index=rows.index)
    keys = rows["sample_key"].astype(str)
    if "patient" in rows.columns:
        patient = rows["patient"].astype("string").fillna("").str.strip()
        if patient[patient != ""].nunique() >= MIN_PATIENTS:
            keys = patient.where(patient != "", keys)
    return keys.map(lambda key: _unit(str(key)) < fraction).astype(bool)


def split_heldout(
    parts: Mapping[str, pd.DataFrame], fraction: float = FRACTION
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """(the sets without their calibration rows, the calibration rows of each held-out set)."""
    judged, calibration = dict(parts), {}
    for name in HELDOUT_SETS:
        if name not in parts:
            continue
        rows = parts[name]
        mask = calibration_mask(rows, fraction)
        judged[name] = rows[~mask].reset_index(drop=True)
        calibration[name] = rows[mask].reset_index(drop=True)
    return judged, calibration


def describe(fraction: float, calibration: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """The run record's account of the slice (counts, never keys)."""
    return {
        "fraction": fraction,
        "rule": RULE,
        "rows": {name: len(rows) for name, rows in calibration.items()},
    }


def without_calibration(
    parts: Mapping[str, pd.DataFrame], record: RunRecord | None
) -> dict[str, pd.DataFrame]:
    """``parts`` with the calibration rows of the run ``record`` removed (none: unchanged)."""
    block = record.calibration if record is not None else None
    if block is None:
        return dict(parts)
    return split_heldout(parts, block.fraction)[0]


def run_record(model: str | Path) -> RunRecord | None:
    """The run.json of a run folder or bundle (None when there is none). A damaged one is an
    error: its calibration rows would otherwise be judged as if they were unseen."""
    path = Path(model) / RUN_RECORD
    if not path.is_file():
        return None
    fix = "the run record is damaged: export or unlearn again (or restore it)"
    return read_run_record(path, hint=fix)
