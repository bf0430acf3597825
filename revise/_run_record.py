"""The run record (run.json of a run folder) as one typed value, built and read in one place.

A run of ``revise unlearn`` (a method, or the automatic revision), ``revise merge`` and the best
run of ``revise sweep`` each write a :class:`RunRecord`: :func:`revise.unlearn.api.unlearn` (or
``auto_revise``, ``merge_runs``) starts it, the pipeline adds the data's and the evaluation's
part, the stage the base model it was made from. Every key a part of revise writes is a field
here; a method's own facts (``shadow_class``, ``trained_modules``, ...) and keys of versions to
come are kept as extra keys, so a record round-trips unchanged.

On disk the record is the JSON object it always was: :meth:`RunRecord.to_json` gives the keys
that were set (a field never given is left out, not written as null), so existing run folders
and new ones have the same shape. :func:`read_run_record` refuses a damaged file (not JSON, not
an object, a field of the wrong type) with a ModelError naming the file and each field; a
record of an older version, lacking the newer optional fields, loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from revise._schema import read_record

__all__ = [
    "BaseModelRef",
    "Calibration",
    "RecordPart",
    "RunRecord",
    "TargetCheck",
    "read_run_record",
]


class RecordPart(BaseModel):
    """A typed part of the run record: unknown keys are kept (records of other versions),
    assignments are checked, and :meth:`to_json` writes the keys that were set."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this part: the fields given (or changed from their default) and
        the extra keys, as they were given."""
        defaults = {
            name: info.get_default(call_default_factory=True)
            for name, info in type(self).model_fields.items()
        }
        for name, default in defaults.items():  # e.g. a default dict filled in place
            if name not in self.model_fields_set and getattr(self, name) != default:
                self.model_fields_set.add(name)
        return self.model_dump(exclude_unset=True)


class TargetCheck(RecordPart):
    """``target``: how close the revision is estimated to come to what retraining would give
    (:func:`revise.unlearn.target.check_against_target`, or the automatic revision's aim)."""

    kind: str | None = None  # class or subset forgetting
    forget: float | None = None
    forget_half_width: float | None = None
    retain: float | None = None
    heldout_retain: float | None = None
    heldout_retain_half_width: float | None = None
    heldout_forget_source: str | None = None
    estimated_distance: float | None = None
    estimated_distance_interval: list[float] | None = None
    met: bool | None = None
    warning: str | None = None
    original: dict[str, float | None] | None = None  # auto: the original's reading
    reached: dict[str, float | None] | None = None  # auto: the chosen state's reading
    caveat: str | None = None  # auto, subset forgetting
    distinct_group_auc: float | None = None  # auto: the forget set is a distinct group
    ceiling_source: str | None = None  # auto: the site's ceiling on the group's accuracy
    retention_slack: float | None = None  # auto: the retention the same criteria let it lose


class Calibration(RecordPart):
    """``calibration``: the held-out rows an automatic revision calibrated on (counts, never
    keys); validation leaves them out (:func:`revise.data.calibration.without_calibration`)."""

    fraction: float
    rule: str | None = None
    rows: dict[str, int] = {}


class BaseModelRef(RecordPart):
    """``base_model``: the model the run revised, found again by ``revise merge``."""

    path: str | None = None
    format: str | None = None
    sha256: str | None = None


class RunRecord(RecordPart):
    """run.json: what a run did, on what, with which settings, and how the result reads."""

    method: str  # a registered method, "auto" or "merge"
    hyperparameters: dict[str, Any] = {}
    seed: int | None = None
    device: str | None = None
    world_size: int | None = None
    forget_samples: int | None = None
    retain_samples: int | None = None
    resumed_from_step: int | None = None
    stopped_at_step: int | None = None
    compiled: bool | None = None
    wall_clock_s: dict[str, float] = {}  # seconds per phase (setup, unlearn, data, evaluation)
    versions: dict[str, str] = {}
    # a method's facts (the others are extra keys)
    steps: int | None = None
    attack_success_ratio: float | None = None
    # the automatic revision
    chosen: str | None = None
    chosen_step: int | None = None
    candidates: list[dict[str, Any]] | None = None
    budget_image_passes: dict[str, int] | None = None
    note: str | None = None
    calibration: Calibration | None = None
    # the pipeline: the data and the evaluation
    target: TargetCheck | None = None
    warning: str | None = None
    forget_selection: str | None = None
    selection_digests: dict[str, str] | None = None
    base_model_digest: str | None = None
    decode_failures: int | None = None
    decode_left_out: Any = None
    metrics: dict[str, dict[str, Any]] = {}  # per set: n, accuracy, ...
    # the stage: the model revised
    base_model: BaseModelRef | None = None
    # revise merge, revise sweep
    merge: dict[str, Any] | None = None
    sweep: dict[str, Any] | None = None
    error: str | None = None  # a sweep's run that diverged (never saved)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        for name in ("target", "calibration", "base_model"):
            part = getattr(self, name)
            if name in out and part is not None:
                out[name] = part.to_json()
        return out


def read_run_record(path: str | Path, *, hint: str) -> RunRecord:
    """The run record in the file ``path``; a damaged one (not JSON, not an object, a field of
    the wrong type) is a ModelError naming the file and each wrong field, with ``hint``."""
    path = Path(path)
    return read_record(RunRecord, path, "run record", hint=hint)
