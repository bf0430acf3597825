"""Validate a revised model against acceptance criteria: every metric of the report, the gate
verdicts, and the report files.

    result = validate(models, data, criteria)   # models: candidate, original[, reference]
    write_report(result, out)   # revision_report.json, change_control.json, report.html

The report is a typed record (:class:`revise._validation_record.ValidationReport`), measured in
:mod:`revise.validate.measure`, judged in :mod:`revise.validate.verdicts`, its provenance from
:mod:`revise.validate.provenance`; the page is drawn by :mod:`revise.validate.report_html`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from torch import nn

from revise._io.outputs import CHANGE_CONTROL, REPORT_HTML, REPORT_JSON
from revise._run_record import RunRecord
from revise._schema import problems, refusal
from revise._validation_record import (
    SCHEMA,
    CriteriaFile,
    Inputs,
    ModelFile,
    Proportion,
    SetFacts,
    ValidationReport,
)
from revise.data.calibration import run_record
from revise.data.select import describe
from revise.data.sets import DecodedSets
from revise.errors import DataError, UsageError
from revise.models.card import ModelCard
from revise.models.io import LoadedModel
from revise.validate import measure
from revise.validate import metrics as m
from revise.validate.change_control import change_control
from revise.validate.change_control_record import ChangeControl
from revise.validate.criteria import Criteria
from revise.validate.gate_checks import check_models, check_sets
from revise.validate.gate_metrics import METRICS
from revise.validate.int8 import measure_int8
from revise.validate.provenance import bundle_files, digest, onnx_file, software
from revise.validate.verdicts import GateContext, Verdict

log = logging.getLogger(__name__)

MODEL_ORDER = ("original", "candidate", "reference")
SET_DESCRIPTIONS = {
    "forget": "training images inside the forget selection (the model saw them)",
    "retain": "training images outside the forget selection",
    "heldout_forget": "held-out images inside the forget selection (never trained on)",
    "heldout_retain": "held-out images outside the forget selection (the test set)",
}


@dataclass
class ValidationResult:
    """The report of one validation (``record``, what revision_report.json holds), the
    verdict of every gate, and the revised model's run record (``run``: None when it has
    none), from which with the report comes the change-control summary."""

    record: ValidationReport
    verdicts: list[Verdict] = field(default_factory=list)
    run: RunRecord | None = None

    @property
    def change_control(self) -> ChangeControl:
        """The change-control summary (change_control.json; made anew on each read)."""
        return change_control(self.record, self.run)

    @property
    def report(self) -> dict[str, Any]:
        """The report as the JSON object revision_report.json holds (made anew on each read:
        change the ``record``)."""
        return self.record.to_json()

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]


def validate(
    models: Mapping[str, LoadedModel | nn.Module],
    data: DecodedSets,
    criteria: Criteria,
    *,
    card: ModelCard | None = None,
    onnx_path: str | Path | None = None,
    int8_path: str | Path | None = None,
    by: Sequence[str] = ("device", "label"),
    device: str = "auto",
    seed: int = 0,
    inputs: Mapping[str, Any] | None = None,
    reuse: MutableMapping[Any, Any] | None = None,
) -> ValidationResult:
    """Measure ``models["candidate"]`` (and ``original``, optional ``reference``) on the four
    sets of ``data`` and judge every gate of ``criteria``.

    Models are loaded models (:func:`revise.models.io.load_model`) or modules with ``card``.
    ``inputs`` are descriptions of the data sources for the report (paths, digests). A
    candidate that is a bundle has the digest of each of its files recorded (``inputs.bundle``,
    see :func:`revise.export.bundle_validation.validated_files`): `revise sign` checks them.
    ``reuse``: a dict the caller keeps across calls that judge many candidates against the same
    baselines on the same data (a merge search); the original's and the reference's predictions
    and membership attacks are then computed once (keyed by model and data object).
    ``int8_path``: a bundle's model.int8.onnx, measured against ``onnx_path`` on the held-out
    sets (the report's ``int8``, the ``int8_*`` gates: :mod:`revise.validate.int8`)."""
    t_start = time.perf_counter()
    given = _given_inputs(inputs)  # a description the report cannot hold: before any work
    models = {name: _loaded(name, model, card) for name, model in models.items()}
    candidate = models["candidate"]
    card = candidate.card
    bundle = bundle_files(candidate)  # before measuring: the files the verdict is about
    if onnx_path is not None:
        check_onnx_matches(candidate, onnx_path)
    _check_int8(criteria, candidate, onnx_path, int8_path)
    for name, loaded in models.items():
        if loaded.card.num_classes != card.num_classes:
            raise DataError(
                f"the {name} model has {loaded.card.num_classes} classes, the candidate "
                f"{card.num_classes}",
                hint="validate models of the same task",
            )
    _check_decoded(criteria, data, class_names=card.class_names)
    sets = {name: s for name, s in data.sets.items() if len(s)}
    t0 = time.perf_counter()
    measured = {
        name: measure.measured(name, loaded, sets, data, seed, device, reuse)
        for name, loaded in models.items()
    }
    outputs = {name: got[0] for name, got in measured.items()}
    mia = {name: got[1] for name, got in measured.items() if got[1] is not None}
    histograms = {name: got[2] for name, got in measured.items() if got[2] is not None}
    t_measure = time.perf_counter() - t0
    class_names = list(card.class_names)
    accuracy = {
        name: measure.accuracy_tables(out, sets, by, class_names) for name, out in outputs.items()
    }
    agreement: dict[str, Proportion] = {}
    if "original" in outputs:
        for s in sets:
            same = outputs["candidate"].predicted(s) == outputs["original"].predicted(s)
            agreement[s] = measure.as_proportion(m.proportion(same))
    reference = measure.reference_summary(accuracy, mia) if "reference" in outputs else None
    parity = measure.parity(candidate, sets, onnx_path) if onnx_path else None
    int8 = measure_int8(onnx_path, int8_path, sets, card, by) if int8_path else None
    context = GateContext(outputs, sets, class_names, mia, reference, parity, int8 and int8[1])
    verdicts = [v for gate in criteria.gates for v in context.verdicts(gate)]
    passed = sum(v.passed for v in verdicts)
    given.criteria = CriteriaFile(path=criteria.source, sha256=criteria.sha256)
    given.onnx = onnx_file(onnx_path)
    if bundle:
        given.bundle = bundle
    report = ValidationReport(
        schema=SCHEMA,
        verdict="pass" if passed == len(verdicts) else "fail",
        summary=f"{passed} of {len(verdicts)} gates passed",
        created_utc=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # patient values hidden: the report travels with the bundle
        forget_selection=describe(data.forget_selection) if data.forget_selection else None,
        class_names=class_names,
        models={
            name: ModelFile(path=str(loaded.path), format=loaded.format, sha256=digest(loaded))
            for name, loaded in sorted(models.items(), key=lambda kv: MODEL_ORDER.index(kv[0]))
        },
        inputs=given,
        sets={
            name: SetFacts(
                n=len(data.sets[name]),
                digest=data.digests.get(name, ""),
                description=SET_DESCRIPTIONS[name],
            )
            for name in data.sets
        },
        gates=[v.as_dict() for v in verdicts],
        accuracy=accuracy,
        agreement=agreement,
        confusion=measure.confusion(outputs, sets, card.num_classes, class_names),
        mia=mia,
        loss_histograms=histograms,
        reference=reference,
        parity=parity,
        int8=int8[0] if int8 else None,
        definitions={name: spec.definition for name, spec in METRICS.items()},
        software=software(),
        timings_s={
            "decode": round(data.seconds, 3),
            "inference_and_mia": round(t_measure, 3),
            "total": round(data.seconds + time.perf_counter() - t_start, 3),
        },
        decode_failures=len(data.failures),
        decode_left_out=data.left_out_record(),
    )
    run = run_record(candidate.path) if Path(candidate.path).is_dir() else None
    return ValidationResult(report, verdicts, run)


def _check_int8(
    criteria: Criteria,
    candidate: LoadedModel,
    onnx_path: str | Path | None,
    int8_path: str | Path | None,
) -> None:
    """INT8 gates need the variant, and the variant the fp32 ONNX model it is judged against
    (both exported from the candidate's weights)."""
    if int8_path is None:
        check_models(criteria, ["original", "reference", "onnx"])  # refuses int8_* gates
        return
    if onnx_path is None:
        raise UsageError(
            f"the INT8 variant {int8_path} is judged against the fp32 ONNX model: give it too",
            hint="validate the bundle that ships both (model.onnx, model.int8.onnx)",
        )
    check_onnx_matches(candidate, int8_path)


def _given_inputs(inputs: Mapping[str, Any] | None) -> Inputs:
    """The caller's descriptions of the data sources, as the report holds them."""
    try:
        return Inputs.model_validate(dict(inputs or {}))
    except ValidationError as exc:
        message, hint = refusal("inputs cannot be recorded in the report", problems(exc, Inputs))
        raise UsageError(message, hint=hint) from None


def _check_decoded(criteria: Criteria, data: DecodedSets, *, class_names: Sequence[str]) -> None:
    """The gates' demands on the sets again, on what decoded: unreadable images can empty a set
    the manifest had filled."""
    try:
        check_sets(criteria, {n: s.rows for n, s in data.sets.items()}, class_names=class_names)
    except UsageError as exc:
        paths = list(dict.fromkeys(f.path for f in data.failures))  # one file, many frames
        examples = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        raise DataError(
            f"{exc} after decoding: {len(data.failures)} image(s) could not be read"
            + (f" (e.g. {examples})" if examples else ""),
            hint="fix or remove the unreadable images, or relax the gate",
        ) from None


def write_report(result: ValidationResult, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``out/revision_report.json``, ``out/change_control.json`` and ``out/report.html``
    (the change-control summary its first section), the folder atomically."""
    from revise._io.atomic import atomic_dir, write_json_atomic
    from revise.validate.report_html import write_html

    out = Path(out)
    summary = result.change_control
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / REPORT_JSON, result.record.to_json())
        write_json_atomic(tmp / CHANGE_CONTROL, summary.to_json())
        write_html(result.record, tmp / REPORT_HTML, change_control=summary)
    return out


def _loaded(name: str, model: LoadedModel | nn.Module, card: ModelCard | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if card is None:
        raise UsageError(f"the {name} model is a bare module: pass its card")
    return LoadedModel(model.eval(), card, Path(f"<{name} in memory>"), "module")


def check_onnx_matches(candidate: LoadedModel, onnx_path: str | Path) -> None:
    """Refuse an ONNX file that revise exported from other weights than the candidate's (its
    parity would only fail, without saying why). A file exported elsewhere carries no digest:
    parity alone judges it."""
    from revise.export.onnx_file import read_metadata
    from revise.export.onnx_metadata import read_prop

    exported_from = read_prop(read_metadata(onnx_path), "weights_sha256")
    mine = digest(candidate) if exported_from else ""
    if exported_from and exported_from != mine:
        raise UsageError(
            f"{onnx_path} was exported from other weights (sha256 {exported_from[:12]}...) than "
            f"the model validated, {candidate.path} ({mine[:12]}...)",
            hint="pass the model.onnx of this model's bundle (revise export)",
        )
