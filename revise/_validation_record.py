"""The validation report (revision_report.json) as one typed value, built and read in one place.

``revise validate`` (:func:`revise.validate.api.validate`) builds a :class:`ValidationReport`:
the verdict and each gate's, every measurement (accuracy per set and group, agreement,
confusion, membership inference, the distance to a retrained reference, ONNX parity), and what
was validated (the models' and input files' digests, the software). The report page reads it
(:mod:`revise.validate.report_sections`), and so may whatever attaches it to a bundle (export
sits below validation: the record lives beside :mod:`revise._run_record`, where both reach it).

Every key revise writes is a field here, read with attribute access (``report.accuracy[m][s].by``);
keys of other versions are kept as extra keys, so a report round-trips unchanged. Numbers keep
the kind they were written as (an integer stays an integer, a float a float), and nothing else
is taken for a number, a flag or a text: a field of the wrong type is refused, not converted.

On disk the report is the JSON object it always was: :meth:`ReportPart.to_json` gives the keys
that were set (a field never given is left out, not written as null).
:func:`read_validation_report` refuses a damaged file (not JSON, not an object, a field of the
wrong type) with a ModelError naming the file and each field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    model_validator,
)

from revise._run_record import RecordPart
from revise._schema import fail, read_record
from revise.errors import ModelError, RevisionError

__all__ = [
    "SCHEMA",
    "AccuracyTable",
    "BundleFiles",
    "Confusion",
    "CriteriaFile",
    "DataFile",
    "GateVerdict",
    "HeldoutSource",
    "Inputs",
    "Int8Check",
    "LeftOut",
    "LossHistogram",
    "LossMia",
    "Membership",
    "MiaEfficacy",
    "ModelFile",
    "OnnxFile",
    "Parity",
    "Proportion",
    "ReferenceDistance",
    "ReportPart",
    "SetFacts",
    "ValidationReport",
    "read_validation_report",
]

SCHEMA = "revise.validation_report/1"


def _number(value: Any) -> float:
    """A JSON number as it was written: an integer stays an integer (no ``1`` -> ``1.0``), and
    a flag or a text is refused rather than read as one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(f"must be a number, not {value!r}")
    return value


def _numbers(value: Any) -> float | list[float]:
    """A number, or a list of numbers (a ``between`` threshold, an interval judged)."""
    if isinstance(value, list):
        return [_number(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(f"must be a number or a list of numbers, not {value!r}")
    return value


def _group(value: Any) -> dict[str, str] | str | None:
    """The group a gate judged: ``{column: group}`` pairs (or a name, from other versions)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    raise fail(f"must be a mapping of columns to groups, not {value!r}")


Number = Annotated[float, PlainValidator(_number)]
Numbers = Annotated[float | list[float], PlainValidator(_numbers)]
Group = Annotated[dict[str, str] | str | None, PlainValidator(_group)]


class ReportPart(RecordPart):
    """A typed part of the report: unknown keys are kept, assignments are checked, nothing is
    converted (``strict``: a text is not a number, 1 is not ``true``), and :meth:`to_json`
    writes the keys that were set, its parts' the same way."""

    model_config = ConfigDict(strict=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this part: the fields given (or changed from their default), under
        the names the file uses, and the extra keys, as they were given."""
        fields = type(self).model_fields
        for name, info in fields.items():  # e.g. a default dict (or part) filled in place
            if name in self.model_fields_set:
                continue
            value = getattr(self, name)
            filled = isinstance(value, ReportPart) and value.given()  # even with a null
            if filled or value != info.get_default(call_default_factory=True):
                self.model_fields_set.add(name)
        out = {
            info.alias or name: _plain(getattr(self, name))
            for name, info in fields.items()
            if name in self.model_fields_set
        }
        out.update({key: _plain(value) for key, value in (self.model_extra or {}).items()})
        return out

    def given(self) -> bool:
        """Whether the file gave this part any key (``{}`` gives none)."""
        return bool(self.model_fields_set or self.model_extra)


def _plain(value: Any) -> Any:
    """``value`` as JSON values, its parts as their :meth:`ReportPart.to_json`."""
    if isinstance(value, ReportPart):
        return value.to_json()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value


# -- measurements --------------------------------------------------------------------------------


class Proportion(ReportPart):
    """A proportion (accuracy, agreement) on ``n`` images with its 95% bootstrap interval."""

    n: int | None = None
    value: Number | None = None
    ci95: list[Number] | None = None


class AccuracyTable(Proportion):
    """One model's accuracy on one set, and per group of each ``by`` column
    (``by[column][group]``)."""

    by: dict[str, dict[str, Proportion]] = Field(default_factory=dict)


class Confusion(ReportPart):
    """One model's confusion matrix: rows true classes, columns predicted."""

    set: str | None = None  # "heldout": both held-out sets
    labels: list[str] | None = None
    matrix: list[list[int]] | None = None


class LossMia(ReportPart):
    """loss-MIA of one model (or the ``error`` that kept it from being measured)."""

    mean: Number | None = None
    std: Number | None = None
    n_per_group: int | None = None
    n_splits: int | None = None
    members: str | None = None  # the set
    nonmembers: str | None = None  # the sets, joined by "+"
    error: str | None = None


class MiaEfficacy(ReportPart):
    """MIA-Efficacy of one model (or the ``error`` that kept it from being measured)."""

    value: Number | None = None
    n_shadow: int | None = None
    error: str | None = None


class Membership(ReportPart):
    """The membership inference attacks on one model."""

    loss_mia: LossMia | None = None
    mia_efficacy: MiaEfficacy | None = None


class LossHistogram(ReportPart):
    """Counts of the per-sample loss of members and non-members over shared bins."""

    edges: list[Number] | None = None
    members: list[int] | None = None
    nonmembers: list[int] | None = None
    members_label: str | None = None
    nonmembers_label: str | None = None


class ReferenceDistance(ReportPart):
    """Distance D and Avg. Gap to the retrained reference, of the candidate and the original."""

    distance: Number | None = None
    avg_gap: Number | None = None  # null: not finite
    original_distance: Number | None = None
    original_avg_gap: Number | None = None


class Parity(ReportPart):
    """The ONNX model in ONNX Runtime against the candidate in PyTorch, on held-out images."""

    n: int | None = None
    max_abs_diff: Number | None = None
    max_rel_diff: Number | None = None
    label_agreement: Number | None = None
    within_tolerance: bool | None = None


class GateVerdict(ReportPart):
    """One gate's verdict (on one group, for a gate judged per group)."""

    name: str | None = None
    metric: str | None = None
    set: str | None = None
    group: Group = None
    rule: str | None = None
    threshold: Numbers | None = None  # resolved: a number, or [low, high]
    value: Number | None = None
    interval: list[Number] | None = None
    judged_on: str | None = None  # estimate, lower_bound, upper_bound or interval
    judged_value: Numbers | None = None
    n: int | None = None
    passed: bool | None = None
    margin: Number | None = None
    message: str | None = None


# -- what was validated --------------------------------------------------------------------------


class ModelFile(ReportPart):
    """A model validated: where it was, its format and the digest of its weights."""

    path: str | None = None
    format: str | None = None
    sha256: str | None = None  # of the weights, whatever the file format


class DataFile(ReportPart):
    """``inputs.data``: the manifest."""

    path: str | None = None
    digest: str | None = None


class HeldoutSource(ReportPart):
    """``inputs.heldout``: where the held-out images came from."""

    source: str | None = None  # a DICOMweb URL without its credentials
    kind: str | None = None  # dicomweb, folder or manifest
    digest: str | None = None
    rows: int | None = None
    unreadable: int | None = None
    fetched: int | None = None
    dropped_as_training_images: int | None = None


class CriteriaFile(ReportPart):
    """``inputs.criteria``: the acceptance criteria judged."""

    path: str | None = None
    sha256: str | None = None


class OnnxFile(ReportPart):
    """``inputs.onnx``: the ONNX model the parity check ran on."""

    path: str | None = None
    sha256: str | None = None
    graph_sha256: str | None = None  # of the graph, without its metadata


class Int8Check(ReportPart):
    """The INT8 variant (``file``) against the fp32 ONNX model, both in ONNX Runtime, on each
    held-out set and per group (:mod:`revise.validate.int8`): how often they predict the same
    class, each one's accuracy (``accuracy["fp32"|"int8"][set]``), INT8 minus fp32 accuracy."""

    file: OnnxFile | None = None
    agreement: dict[str, AccuracyTable] = Field(default_factory=dict)
    accuracy: dict[str, dict[str, AccuracyTable]] = Field(default_factory=dict)
    change: dict[str, AccuracyTable] = Field(default_factory=dict)


class BundleFiles(ReportPart):
    """``inputs.bundle``: the files of the bundle validated, each with its digest."""

    path: str | None = None
    sha256: str | None = None
    files: dict[str, str] | None = None


class Inputs(ReportPart):
    """What the verdict is about besides the models: the data, the criteria, the ONNX model,
    the bundle; a caller's own descriptions are extra keys. The page lists them in the order
    given, which :meth:`to_json` keeps."""

    data: DataFile | None = None
    heldout: HeldoutSource | None = None
    criteria: CriteriaFile | None = None
    onnx: OnnxFile | None = None
    bundle: BundleFiles | None = None

    _order: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: Any) -> Inputs:
        inputs = handler(data)
        if isinstance(data, dict):
            inputs._order = tuple(data)
        return inputs

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        first = [key for key in self._order if key in out]
        return {key: out[key] for key in first + [k for k in out if k not in first]}


class SetFacts(ReportPart):
    """One of the four sets: its size, the digest of its rows, what it holds."""

    n: int | None = None
    digest: str | None = None
    description: str | None = None


class LeftOut(ReportPart):
    """The images of one set that could not be decoded: how many, and the first keys."""

    n: int | None = None
    sample_keys: list[str] | None = None


# -- the report ----------------------------------------------------------------------------------


class ValidationReport(ReportPart):
    """revision_report.json: the verdict, every measurement, and what was validated."""

    schema_name: str | None = Field(None, alias="schema")  # SCHEMA
    verdict: Literal["pass", "fail"] = Field(description="pass or fail: every gate passed")
    summary: str = Field(description="how many gates passed")
    created_utc: str | None = None
    forget_selection: str | None = None  # patient values hidden: the report travels
    class_names: list[str] = Field(default_factory=list)
    models: dict[str, ModelFile] = Field(default_factory=dict)  # original, candidate, reference
    inputs: Inputs = Field(default_factory=Inputs)
    sets: dict[str, SetFacts] = Field(default_factory=dict)
    gates: list[GateVerdict] = Field(default_factory=list)
    # model -> set -> table
    accuracy: dict[str, dict[str, AccuracyTable]] = Field(default_factory=dict)
    # set -> how often the candidate and the original agree
    agreement: dict[str, Proportion] = Field(default_factory=dict)
    confusion: dict[str, Confusion] = Field(default_factory=dict)  # model -> matrix
    mia: dict[str, Membership] = Field(default_factory=dict)  # model -> attacks
    loss_histograms: dict[str, LossHistogram] = Field(default_factory=dict)  # model -> histogram
    reference: ReferenceDistance | None = None
    parity: Parity | None = None
    int8: Int8Check | None = None  # when the bundle ships model.int8.onnx
    definitions: dict[str, str] = Field(default_factory=dict)  # metric -> what it measures
    software: dict[str, str] = Field(default_factory=dict)  # package -> version
    timings_s: dict[str, Number] = Field(default_factory=dict)
    decode_failures: int | None = None
    decode_left_out: dict[str, LeftOut] = Field(default_factory=dict)


def read_validation_report(
    path: str | Path, *, hint: str, kind: type[RevisionError] = ModelError
) -> ValidationReport:
    """The validation report in the file ``path``; a damaged one (not JSON, not an object, a
    field of the wrong type) is a ModelError naming the file and each wrong field, with
    ``hint``."""
    path = Path(path)
    return read_record(ValidationReport, path, "validation report", hint=hint, kind=kind)
