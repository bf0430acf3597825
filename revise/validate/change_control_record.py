"""The change-control summary (change_control.json) as one typed record: the revision mapped
to the elements of a predetermined change control plan, so that a quality team can file it as
it is.

The parts follow the three components the FDA's guidance on predetermined change control plans
for AI-enabled device software functions names: the **description of the modification**, the
**modification protocol** (data management, the method of re-training, the performance
evaluation, the update procedure) and the **impact assessment**. revise fills them from what it
recorded anyway (:mod:`revise.validate.change_control`): the run record (run.json) of the
revised model, the validation report and the acceptance criteria.

The record names what was forgotten by the selection's description (patient values hidden, as
in the report) and by digests, never by patient values or sample keys; models by the digest of
their weights; counts only for the images used and left out. Like the run record and the
report, keys of other versions are kept as extra keys and :meth:`to_json` writes the keys that
were set; :func:`read_change_control` refuses a damaged file naming each wrong field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from revise._schema import read_record
from revise._validation_record import Group, Number, Numbers, ReportPart

__all__ = [
    "FRAMEWORK",
    "SCHEMA",
    "AccuracyChange",
    "AutomaticChoice",
    "BundleRef",
    "ChangeControl",
    "DataExcluded",
    "DataManagement",
    "DataUsed",
    "Description",
    "GateResult",
    "ImpactAssessment",
    "Method",
    "ModelRef",
    "ModificationProtocol",
    "PerformanceEvaluation",
    "SetRef",
    "SignatureScheme",
    "UpdateProcedure",
    "read_change_control",
]

SCHEMA = "revise.change_control/1"
FRAMEWORK = (
    "FDA guidance, Marketing Submission Recommendations for a Predetermined Change Control Plan "
    "for Artificial Intelligence-Enabled Device Software Functions: description of "
    "modifications; modification protocol (data management, re-training, performance "
    "evaluation, update procedures); impact assessment"
)


class ModelRef(ReportPart):
    """A model by the digest of its weights (whatever the file format)."""

    sha256: str | None = None
    format: str | None = None


class SetRef(ReportPart):
    """A set of images by count and the digest of its rows (no sample keys)."""

    name: str | None = None
    n: int | None = None
    digest: str | None = None
    description: str | None = None


class Description(ReportPart):
    """What is modified, and from what: the forgotten selection and the models."""

    summary: str | None = None
    kind: str | None = None  # class or subset forgetting, where the run says
    forget_selection: str | None = None  # the selection's text, patient values hidden
    forget_selection_sha256: str | None = None  # of that text
    forget_set: SetRef | None = None
    original_model: ModelRef | None = None  # the deployed model revised
    revised_model: ModelRef | None = None
    base_model_sha256: str | None = None  # the model the run started from, as it recorded
    classes: list[str] = Field(default_factory=list)


class DataUsed(ReportPart):
    """The images the revision and its validation used: counts and digests."""

    manifest_digest: str | None = None
    training: dict[str, int] = Field(default_factory=dict)  # forget, retain: what the run used
    validation_sets: list[SetRef] = Field(default_factory=list)
    calibration: dict[str, Any] | None = None  # an automatic revision's held-out slice
    heldout: dict[str, Any] | None = None  # where the held-out images came from (counts)


class DataExcluded(ReportPart):
    """What was kept out: the forget set itself, the calibration slice, unreadable images."""

    forget_set: int | None = None  # training images whose influence is removed
    calibration_rows: int | None = None  # held-out rows calibrated on: not judged
    decode_failures: int | None = None  # images validation could not read
    decode_left_out: dict[str, int] = Field(default_factory=dict)  # per set
    run_decode_failures: int | None = None  # images the run could not read
    heldout_dropped_as_training_images: int | None = None


class DataManagement(ReportPart):
    used: DataUsed = Field(default_factory=DataUsed)
    excluded: DataExcluded = Field(default_factory=DataExcluded)


class AutomaticChoice(ReportPart):
    """The automatic revision's choice among its candidates (`revise unlearn --method auto`)."""

    chosen: str | None = None
    chosen_step: int | None = None
    candidates: int | None = None
    note: str | None = None


class Method(ReportPart):
    """How the model was re-trained: method, settings, seed, software."""

    name: str | None = None  # a registered method, auto or merge; None: no run record
    settings: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    automatic_choice: AutomaticChoice | None = None
    device: str | None = None
    software: dict[str, str] = Field(default_factory=dict)  # the run's, else validation's
    record: str | None = None  # the run record the method is read from
    note: str | None = None


class GateResult(ReportPart):
    """One acceptance gate as judged: what, against which threshold, measured, the result."""

    name: str | None = None
    metric: str | None = None
    set: str | None = None
    group: Group = None
    rule: str | None = None
    threshold: Numbers | None = None
    value: Number | None = None
    interval: list[Number] | None = None
    judged_on: str | None = None
    judged_value: Numbers | None = None
    n: int | None = None
    passed: bool | None = None


class PerformanceEvaluation(ReportPart):
    """The acceptance criteria fixed before the run, each gate's result, the verdict."""

    criteria: dict[str, Any] | None = None  # path and sha256 of the criteria file
    verdict: Literal["pass", "fail"] | None = None
    summary: str | None = None
    gates: list[GateResult] = Field(default_factory=list)
    report: dict[str, Any] | None = None  # the validation report's file and digest


class BundleRef(ReportPart):
    """The bundle validated: every file the verdict covers, with its digest."""

    path: str | None = None
    sha256: str | None = None
    files: dict[str, str] = Field(default_factory=dict)
    written_after_validation: list[str] = Field(default_factory=list)


class SignatureScheme(ReportPart):
    name: str | None = None  # key or certificate
    sign: str | None = None  # the command
    verify: str | None = None


class UpdateProcedure(ReportPart):
    """How the update is delivered and checked: the bundle, its signature, the commands."""

    deliverable: str | None = None  # bundle, or the model folder still to be exported
    bundle: BundleRef | None = None
    signature: dict[str, Any] = Field(default_factory=dict)  # file, record, tool, covers
    schemes: list[SignatureScheme] = Field(default_factory=list)
    steps: list[str] = Field(default_factory=list)


class AccuracyChange(ReportPart):
    """Accuracy of the revised model against the original on one set (or one group of it)."""

    set: str | None = None
    group: Group = None
    n: int | None = None
    original: Number | None = None
    revised: Number | None = None
    change: Number | None = None


class ImpactAssessment(ReportPart):
    """What the modification does to the model's behaviour, and the run's own estimate."""

    accuracy: list[AccuracyChange] = Field(default_factory=list)
    agreement: dict[str, Number] = Field(default_factory=dict)  # set -> share agreeing
    reference: dict[str, Any] | None = None  # distance to a retrained reference, if given
    target: dict[str, Any] | None = None  # the run's check against what retraining would give
    warnings: list[str] = Field(default_factory=list)


class ModificationProtocol(ReportPart):
    data_management: DataManagement = Field(default_factory=DataManagement)
    method: Method = Field(default_factory=Method)
    performance_evaluation: PerformanceEvaluation = Field(default_factory=PerformanceEvaluation)
    update_procedure: UpdateProcedure = Field(default_factory=UpdateProcedure)


class ChangeControl(ReportPart):
    """change_control.json: the revision as the elements of a change control plan."""

    schema_name: str | None = Field(None, alias="schema")  # SCHEMA
    created_utc: str | None = None
    framework: str | None = None  # FRAMEWORK
    verdict: Literal["pass", "fail"] | None = None
    description_of_modification: Description = Field(default_factory=Description)
    modification_protocol: ModificationProtocol = Field(default_factory=ModificationProtocol)
    impact_assessment: ImpactAssessment = Field(default_factory=ImpactAssessment)


def read_change_control(path: str | Path, *, hint: str) -> ChangeControl:
    """The change-control summary in the file ``path``; a damaged one is a ModelError naming
    the file and each wrong field, with ``hint``."""
    path = Path(path)
    return read_record(ChangeControl, path, "change-control summary", hint=hint)
