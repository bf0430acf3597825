"""The change-control summary of a revision (change_control.json, and the first section of
report.html), made by `revise validate` from what it has anyway: the validation report, the
acceptance criteria it judged, and the run record (run.json) of a revised model that is a run
folder or a bundle. The record and its parts are :mod:`revise.validate.change_control_record`.

    summary = change_control(report, run)    # report: ValidationReport; run: RunRecord | None

Nothing here reads patient data: the forget selection is the report's description of it
(patient values hidden), sets are counts and row digests, models the digests of their weights.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from revise._io.outputs import CHANGE_CONTROL, REPORT_JSON
from revise._run_record import RunRecord
from revise._validation_record import ValidationReport
from revise.export.manifest import AFTER_VALIDATION, SIGNATURE_FILES, SIGNATURE_NAME, SIGNING_RECORD
from revise.validate.change_control_record import (
    FRAMEWORK,
    SCHEMA,
    AccuracyChange,
    AutomaticChoice,
    BundleRef,
    ChangeControl,
    DataExcluded,
    DataManagement,
    DataUsed,
    Description,
    GateResult,
    ImpactAssessment,
    Method,
    ModelRef,
    ModificationProtocol,
    PerformanceEvaluation,
    SetRef,
    SignatureScheme,
    UpdateProcedure,
)

SET_ORDER = ("forget", "retain", "heldout_forget", "heldout_retain")
SCHEMES = (
    SignatureScheme(
        name="key",
        sign="revise sign BUNDLE --key revise-signing.key",
        verify="revise verify BUNDLE --pub revise-signing.pub",
    ),
    SignatureScheme(
        name="certificate",
        sign="revise sign BUNDLE --key signer.key --cert signer.pem --chain intermediate-ca.pem",
        verify="revise verify BUNDLE --ca root-ca.pem",
    ),
)
_GATE_FIELDS = tuple(GateResult.model_fields)


def change_control(report: ValidationReport, run: RunRecord | None = None) -> ChangeControl:
    """The change-control summary of the revision ``report`` validated; ``run``: the revised
    model's run record (None: a model without one, whose method is then not recorded)."""
    return ChangeControl(
        schema=SCHEMA,
        created_utc=report.created_utc,
        framework=FRAMEWORK,
        verdict=report.verdict,
        description_of_modification=_description(report, run),
        modification_protocol=ModificationProtocol(
            data_management=_data(report, run),
            method=_method(run),
            performance_evaluation=_evaluation(report),
            update_procedure=_update(report),
        ),
        impact_assessment=_impact(report, run),
    )


def report_digest(report: ValidationReport) -> str:
    """sha256 of the report's JSON, keys sorted: what bundle.json records of it."""
    text = json.dumps(report.to_json(), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _model(report: ValidationReport, role: str) -> ModelRef | None:
    entry = report.models.get(role)
    return ModelRef(sha256=entry.sha256, format=entry.format) if entry is not None else None


def _set(report: ValidationReport, name: str) -> SetRef | None:
    facts = report.sets.get(name)
    if facts is None:
        return None
    return SetRef(name=name, n=facts.n, digest=facts.digest, description=facts.description)


def _description(report: ValidationReport, run: RunRecord | None) -> Description:
    selection = report.forget_selection
    forget = _set(report, "forget")
    original, revised = _model(report, "original"), _model(report, "candidate")
    method = run.method if run is not None else None
    count = f"{forget.n} " if forget is not None and forget.n is not None else ""
    criteria = report.inputs.criteria.sha256 if report.inputs.criteria is not None else None
    summary = (
        f"Remove the influence of the {count}training images selected by {selection!r} "
        f"(the forget set) from the deployed model"
        + (f" (weights sha256 {original.sha256[:12]}...)" if original and original.sha256 else "")
        + (f" with the method {method}" if method else "")
        + (f"; judged against the criteria of sha256 {criteria[:12]}..." if criteria else "")
        + f": {report.verdict} ({report.summary})."
    )
    return Description(
        summary=summary,
        kind=run.target.kind if run is not None and run.target is not None else None,
        forget_selection=selection,
        forget_selection_sha256=(
            hashlib.sha256(selection.encode("utf-8")).hexdigest() if selection else None
        ),
        forget_set=forget,
        original_model=original,
        revised_model=revised,
        base_model_sha256=run.base_model_digest if run is not None else None,
        classes=list(report.class_names),
    )


def _data(report: ValidationReport, run: RunRecord | None) -> DataManagement:
    heldout = report.inputs.heldout
    source = None
    if heldout is not None and heldout.given():
        keep = ("kind", "digest", "rows", "unreadable", "fetched", "dropped_as_training_images")
        source = {k: v for k, v in heldout.to_json().items() if k in keep}
    calibration = run.calibration if run is not None else None
    training = {}
    if run is not None:
        given = {"forget": run.forget_samples, "retain": run.retain_samples}
        training = {name: n for name, n in given.items() if n is not None}
    forget = report.sets.get("forget")
    used = DataUsed(
        manifest_digest=report.inputs.data.digest if report.inputs.data is not None else None,
        training=training,
        validation_sets=[s for name in _set_names(report) if (s := _set(report, name))],
        calibration=calibration.to_json() if calibration is not None else None,
        heldout=source,
    )
    excluded = DataExcluded(
        forget_set=training.get("forget", forget.n if forget is not None else None),
        calibration_rows=sum(calibration.rows.values()) if calibration is not None else None,
        decode_failures=report.decode_failures,
        decode_left_out={
            name: entry.n for name, entry in report.decode_left_out.items() if entry.n is not None
        },
        run_decode_failures=run.decode_failures if run is not None else None,
        heldout_dropped_as_training_images=(source or {}).get("dropped_as_training_images"),
    )
    return DataManagement(used=used, excluded=excluded)


def _set_names(report: ValidationReport) -> list[str]:
    known = [s for s in SET_ORDER if s in report.sets]
    return known + [s for s in report.sets if s not in SET_ORDER]


def _method(run: RunRecord | None) -> Method:
    if run is None:
        return Method(
            name=None,
            seed=None,
            record=None,
            note="the revised model carries no run record (run.json): its method, settings and "
            "seed are not recorded; validate the run folder or a bundle exported from it",
        )
    choice = None
    if run.chosen is not None or run.candidates is not None:
        choice = AutomaticChoice(
            chosen=run.chosen,
            chosen_step=run.chosen_step,
            candidates=len(run.candidates) if run.candidates is not None else None,
            note=run.note,
        )
    return Method(
        name=run.method,
        settings=dict(run.hyperparameters),
        seed=run.seed,
        automatic_choice=choice,
        device=run.device,
        software=dict(run.versions),
        record="run.json",
    )


def _evaluation(report: ValidationReport) -> PerformanceEvaluation:
    criteria = report.inputs.criteria
    gates = []
    for gate in report.gates:
        given = {name: getattr(gate, name) for name in _GATE_FIELDS}
        gates.append(GateResult(**given))
    return PerformanceEvaluation(
        criteria=criteria.to_json() if criteria is not None else None,
        verdict=report.verdict,
        summary=report.summary,
        gates=gates,
        report={
            "file": REPORT_JSON,
            "sha256": report_digest(report),
            "software": dict(report.software),
        },
    )


def _update(report: ValidationReport) -> UpdateProcedure:
    bundle = report.inputs.bundle
    signature = {
        "tool": "OpenSSF model-signing (offline; no transparency log)",
        "file": SIGNATURE_NAME,
        "record": SIGNING_RECORD,
        "covers": f"every file of the bundle but {SIGNATURE_NAME}, {SIGNING_RECORD} included",
    }
    verify = "revise verify BUNDLE --pub revise-signing.pub (or --ca root-ca.pem)"
    sign = "revise sign BUNDLE --key ... (refuses a bundle whose validation failed)"
    if bundle is not None and bundle.given():
        written = [f for f in AFTER_VALIDATION if f not in SIGNATURE_FILES]
        if CHANGE_CONTROL not in written:
            written.append(CHANGE_CONTROL)
        return UpdateProcedure(
            deliverable="bundle",
            bundle=BundleRef(
                path=bundle.path,
                sha256=bundle.sha256,
                files=dict(bundle.files or {}),
                written_after_validation=written,
            ),
            signature=signature,
            schemes=list(SCHEMES),
            steps=[
                "this validation (revise validate BUNDLE ...) put the report files into the bundle",
                sign,
                verify,
                "install the bundle only where `revise verify` passes",
            ],
        )
    return UpdateProcedure(
        deliverable="model folder (not yet a bundle)",
        signature=signature,
        schemes=list(SCHEMES),
        steps=[
            "revise export MODEL -o BUNDLE --data MANIFEST",
            "revise validate BUNDLE ... (with these criteria: the verdict then covers the "
            "bundle's own files)",
            sign,
            verify,
            "install the bundle only where `revise verify` passes",
        ],
    )


def _impact(report: ValidationReport, run: RunRecord | None) -> ImpactAssessment:
    original = report.accuracy.get("original", {})
    revised = report.accuracy.get("candidate", {})
    changes = []
    for name in [s for s in _set_names(report) if s in revised]:
        after, before = revised[name], original.get(name)
        changes.append(_change(name, None, after.n, before and before.value, after.value))
        for column, groups in after.by.items():
            earlier = before.by.get(column, {}) if before is not None else {}
            for group, entry in groups.items():
                was = earlier.get(group)
                value = was.value if was is not None else None
                changes.append(_change(name, {column: group}, entry.n, value, entry.value))
    reference = report.reference.to_json() if report.reference is not None else None
    target = run.target if run is not None else None
    warnings = [] if run is not None else ["no run record: the run's own target check is absent"]
    if run is not None:
        warnings += [w for w in (run.warning, target and target.warning) if w]
        if target is not None and target.caveat:
            warnings.append(target.caveat)
    failed = [g.name or g.metric or "?" for g in report.gates if not g.passed]
    if failed:
        warnings.append("gates failed: " + ", ".join(str(f) for f in failed))
    warnings = list(dict.fromkeys(warnings))  # the run's warning is often its target's
    return ImpactAssessment(
        accuracy=changes,
        agreement={s: e.value for s, e in report.agreement.items() if e.value is not None},
        reference=reference or None,
        target=target.to_json() if target is not None else None,
        warnings=warnings,
    )


def _change(
    name: str, group: dict[str, str] | None, n: Any, before: Any, after: Any
) -> AccuracyChange:
    change = None
    if isinstance(before, int | float) and isinstance(after, int | float):
        change = round(after - before, 6)
    return AccuracyChange(set=name, group=group, n=n, original=before, revised=after, change=change)
