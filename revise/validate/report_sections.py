"""The report page, section by section: what each shows of the typed report
(:class:`revise._validation_record.ValidationReport`), as the flat views of
:mod:`revise.validate.report_view`, with its figures drawn (:mod:`revise.validate.figures`).
A section the report has nothing for says so; an optional one (the reference, parity,
definitions) is left out."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from revise._validation_record import (
    AccuracyTable,
    GateVerdict,
    LossMia,
    Proportion,
    ReportPart,
    ValidationReport,
)
from revise.validate import figures
from revise.validate.change_control_record import ChangeControl
from revise.validate.change_control_view import change_control_section
from revise.validate.report_format import (
    JUDGED_ON,
    SET_ORDER,
    SET_TITLES,
    colour,
    is_number,
    model_title,
    models_in,
    num,
    set_title,
)
from revise.validate.report_int8 import int8_section
from revise.validate.report_view import (
    AccuracyRow,
    AccuracySet,
    AccuracyView,
    Chart,
    DistanceRow,
    Estimate,
    FileRow,
    GateRow,
    GatesView,
    Header,
    InputsView,
    LossMiaView,
    MiaRow,
    MiaView,
    Model,
    Page,
    ParityView,
    Section,
    SetEstimate,
    SetRow,
    SoftwareView,
)


def _given(part: ReportPart | None) -> bool:
    """Whether the report gives ``part`` with any key (``{}`` is as good as absent)."""
    return part is not None and part.given()


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _header(report: ValidationReport) -> Header:
    candidate = report.models.get("candidate")
    return Header(
        state="pass" if report.verdict == "pass" else "fail",
        created=_or(report.created_utc, "—"),
        schema=_or(report.schema_name, "—"),
        summary=report.summary,
        selection=report.forget_selection or None,
        candidate_path=_or(candidate.path, "—") if _given(candidate) else None,
    )


def _threshold(gate: GateVerdict) -> str | None:
    """The threshold a rule resolved to, when the rule does not state it (a rule relative to
    the original or the reference: ``at_least original - 0.02``)."""
    threshold = gate.threshold
    values = threshold if isinstance(threshold, (list, tuple)) else [threshold]
    if not all(is_number(v) for v in values):
        return None
    stated = [float(x) for x in re.findall(r"-?\d+(?:\.\d*)?(?:e-?\d+)?", str(gate.rule))]
    if all(any(math.isclose(v, x, rel_tol=1e-9, abs_tol=1e-12) for x in stated) for v in values):
        return None
    return num(threshold)


def _group_lines(group: object) -> list[str]:
    if not group:
        return []
    if isinstance(group, Mapping):
        return [f"{k} = {v}" for k, v in group.items()]
    return [str(group)]


def _gates(report: ValidationReport) -> Section:
    if not report.gates:
        return Section("gates", "Gates")
    rows = [
        GateRow(
            state="pass" if gate.passed else "fail",
            name=_or(gate.name, ""),
            metric=_or(gate.metric, ""),
            set=set_title(gate.set) if gate.set else None,
            group=_group_lines(gate.group),
            rule=_or(gate.rule, ""),
            threshold=_threshold(gate),
            value=gate.value,
            interval=gate.interval,
            judged_value=gate.judged_value,
            judged_on=JUDGED_ON.get(str(gate.judged_on), _or(gate.judged_on, "")),
            n=gate.n,
            margin=gate.margin,
            message=gate.message or None,
        )
        for gate in report.gates
    ]
    return Section("gates", "Gates", GatesView(rows, sum(r.state == "fail" for r in rows)))


def _set_order(report: ValidationReport, per_model: Mapping[str, Mapping[str, Any]]) -> list[str]:
    seen: list[str] = [s for s in SET_ORDER if s in report.sets]
    for entry in per_model.values():
        for s in entry:
            if s not in seen:
                seen.append(s)
    order = {s: i for i, s in enumerate(SET_ORDER)}
    return sorted(seen, key=lambda s: order.get(s, len(order)))


def _group_order(column: str, tables: Sequence[Mapping[str, Any]], classes: list[str]) -> list:
    """Groups of one column in first-seen order; label groups in class order."""
    groups: list[str] = []
    for table in tables:
        for g in table:
            if g not in groups:
                groups.append(g)
    if column == "label" and classes:
        rank = {c: i for i, c in enumerate(classes)}
        groups.sort(key=lambda g: rank.get(g, len(rank)))
    return groups


def _bar(entry: Proportion | None) -> figures.Bar | None:
    if entry is None or not is_number(entry.value):
        return None
    ci95 = entry.ci95
    interval = (float(ci95[0]), float(ci95[1])) if ci95 is not None and len(ci95) == 2 else None
    return figures.Bar(float(entry.value), interval, entry.n)


def _accuracy_charts(
    tables: list[AccuracyTable | None], models: list[str], s: str, classes: list[str]
) -> tuple[bool, list[Chart]]:
    """The per-group bar charts of set ``s`` (``tables``: each model's): one per ``by``
    column; False: no column."""
    columns: list[str] = []
    for table in tables:
        for column in table.by if table is not None else ():
            if column not in columns:
                columns.append(column)
    charts = []
    for column in columns:
        by_group = [(table.by.get(column) if table else None) or {} for table in tables]
        groups = _group_order(column, by_group, classes)
        if not groups:
            continue
        series = [
            (model_title(m), [_bar(table.get(g)) for g in groups])
            for m, table in zip(models, by_group, strict=True)
        ]
        svg = figures.grouped_hbar(
            [str(g) for g in groups],
            series,
            title=f"Accuracy on the {set_title(s)} by {column}",
            colours=[colour(m, i) for i, m in enumerate(models)],
        )
        plural = "s" if len(groups) != 1 else ""
        charts.append(Chart(svg, "by", code=str(column), note=f"({len(groups)} group{plural})"))
    return bool(columns), charts


def _accuracy(report: ValidationReport) -> Section:
    accuracy = report.accuracy
    models = models_in(accuracy)
    if not models:
        return Section("accuracy", "Accuracy")
    sets = _set_order(report, accuracy)
    classes = [str(c) for c in report.class_names]
    rows = []
    for s in sets:
        tables = [accuracy[m].get(s) for m in models]
        n = next((table.n for table in tables if _given(table)), None)
        rows.append(AccuracyRow(set_title(s), n, [Estimate.of(table) for table in tables]))
    per_set = []
    for s in sets:
        info = report.sets.get(s)
        tables = [accuracy[m].get(s) for m in models]
        has_groups, charts = _accuracy_charts(tables, models, s, classes)
        n, description = (info.n, info.description) if info is not None else (None, None)
        per_set.append(AccuracySet(set_title(s), n, description, has_groups, charts))
    legend = [Model(model_title(m), colour(m, i)) for i, m in enumerate(models)]
    return Section("accuracy", "Accuracy", AccuracyView(legend, rows, per_set))


def _agreement(report: ValidationReport) -> Section:
    if not report.agreement:
        return Section("agreement", "Agreement with the original")
    order = {s: i for i, s in enumerate(SET_ORDER)}
    rows = [
        SetEstimate(set_title(s), Estimate.of(e) or Estimate(None))
        for s, e in sorted(report.agreement.items(), key=lambda kv: order.get(kv[0], len(order)))
    ]
    return Section("agreement", "Agreement with the original", rows)


def _confusion(report: ValidationReport) -> Section:
    models = models_in(report.confusion)
    if not models:
        return Section("confusion", "Confusion matrices")
    classes = [str(c) for c in report.class_names]
    charts = []
    for m in models:
        entry = report.confusion[m]
        matrix = entry.matrix or []
        if not matrix:
            continue
        labels = [str(c) for c in entry.labels or classes]
        n = sum(sum(row) for row in matrix)
        where = set_title(_or(entry.set, "heldout"))
        svg = figures.confusion_heatmap(matrix, labels, title=f"Confusion matrix of the {m} model")
        charts.append(Chart(svg, model_title(m), note=f"{where}, n = {num(n)}"))
    return Section("confusion", "Confusion matrices", charts)


def _loss_mia(loss: LossMia) -> LossMiaView:
    return LossMiaView(
        mean=loss.mean,
        std=loss.std,
        n_per_group=loss.n_per_group,
        n_splits=loss.n_splits,
        members=set_title(_or(loss.members, "")),
        nonmembers=[set_title(s) for s in _or(loss.nonmembers, "").split("+")],
    )


def _mia(report: ValidationReport) -> Section:
    mia, histograms = report.mia, report.loss_histograms
    models = models_in({**mia, **histograms})
    if not models:
        return Section("mia", "Membership inference")
    rows = []
    for m in models:
        attacks = mia.get(m)
        loss = attacks.loss_mia if attacks is not None else None
        eff = attacks.mia_efficacy if attacks is not None else None
        rows.append(
            MiaRow(
                model=model_title(m),
                loss=_loss_mia(loss) if _given(loss) and loss.error is None else None,
                loss_error=loss.error if loss is not None else None,
                efficacy=eff.value if eff is not None else None,
                efficacy_error=eff.error if eff is not None else None,
                efficacy_measured=_given(eff),
                n_shadow=eff.n_shadow if eff is not None else None,
            )
        )
    charts = []
    for m in models:
        h = histograms.get(m)
        if h is None or not h.edges:
            continue
        svg = figures.overlaid_histogram(
            h.edges,
            h.members or [],
            h.nonmembers or [],
            first_label=_or(h.members_label, "members"),
            second_label=_or(h.nonmembers_label, "non-members"),
            title=f"Per-sample loss of the {m} model, members vs non-members",
        )
        charts.append(Chart(svg, model_title(m)))
    return Section("mia", "Membership inference", MiaView(rows, charts))


def _reference(report: ValidationReport) -> Section | None:
    ref = report.reference
    if ref is None or not ref.given():
        return None
    given = ref.model_fields_set
    rows = [
        DistanceRow(
            model_title(who), getattr(ref, f"{prefix}distance"), getattr(ref, f"{prefix}avg_gap")
        )
        for who, prefix in (("candidate", ""), ("original", "original_"))
        if f"{prefix}distance" in given or f"{prefix}avg_gap" in given
    ]
    return Section("reference", "Distance to the retrained reference", rows)


def _parity(report: ValidationReport) -> Section | None:
    parity = report.parity
    if parity is None or not parity.given():
        return None
    judged = "within_tolerance" in parity.model_fields_set
    view = ParityView(
        n=parity.n,
        max_abs_diff=parity.max_abs_diff,
        max_rel_diff=parity.max_rel_diff,
        label_agreement=parity.label_agreement,
        within_tolerance=bool(parity.within_tolerance) if judged else None,
    )
    return Section("parity", "ONNX parity", view)


def _inputs(report: ValidationReport) -> Section:
    model_rows = []
    for m in models_in(report.models):
        entry = report.models[m]
        path, kind = _or(entry.path, "—"), _or(entry.format, "—")
        model_rows.append(FileRow(model_title(m), path, kind, entry.sha256))
    input_rows = []
    # each input as the file gives it (a caller's own descriptions among them), in its order
    for name, entry in report.inputs.to_json().items():
        if not entry:
            continue
        entry = entry if isinstance(entry, Mapping) else {"path": entry}
        where = entry.get("path", entry.get("source", ""))
        digest = entry.get("sha256", entry.get("digest"))
        input_rows.append(FileRow(name, where, entry.get("kind", ""), digest))
    set_rows = [
        SetRow(set_title(s), e.n, e.description or "", e.digest) for s, e in report.sets.items()
    ]
    return Section("inputs", "Inputs and digests", InputsView(model_rows, input_rows, set_rows))


def _definitions(report: ValidationReport) -> Section | None:
    if not report.definitions:
        return None
    return Section("definitions", "Definitions", list(report.definitions.items()))


def _software(report: ValidationReport) -> Section:
    left_out = ", ".join(
        f"{SET_TITLES.get(name, name)} {entry.n}" for name, entry in report.decode_left_out.items()
    )
    view = SoftwareView(
        packages=list(report.software.items()),
        timings=list(report.timings_s.items()),
        decode_failures=report.decode_failures,
        left_out=left_out,
    )
    return Section("software", "Software and timings", view)


def page_view(report: ValidationReport, change_control: ChangeControl | None = None) -> Page:
    """What the page shows, section by section, the change-control summary first; absent
    optional sections are left out (and so is their link in the contents line)."""
    sections = [
        change_control_section(report, change_control),
        _gates(report),
        _accuracy(report),
        _agreement(report),
        _confusion(report),
        _mia(report),
        _reference(report),
        _parity(report),
        int8_section(report),
        _inputs(report),
        _definitions(report),
        _software(report),
    ]
    header = _header(report)
    verdict = header.state.upper()
    return Page(verdict, header, [s for s in sections if s is not None])
