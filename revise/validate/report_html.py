"""The validation report as one self-contained HTML file (``report.html``).

It is read by a clinical ML engineer and by a regulatory reviewer, possibly offline and years
later, so it fetches nothing: inline CSS, inline SVG figures (matplotlib, ``figures``), and one
small inline script that records in the DOM how many figures rendered (for automated checks).

The page is a Jinja2 template (``templates/report.html.j2``, one partial per section under
``templates/sections/``) with autoescaping on: every string from the report (group names,
paths, messages) is user data and is escaped by the template engine, not by hand. The only
markup marked safe is the figures' SVG, which ``figures`` generates from numbers and escaped
text. This module turns the report dict into a flat view of what each section shows (the
``*View`` dataclasses below), so the templates hold no digging through nested dicts.

    html = render_html(report)          # report: the revision_report.json dict
    write_html(report, out / "report.html")
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from revise.validate import figures

MODEL_ORDER = ("original", "candidate", "reference")
SET_ORDER = ("forget", "retain", "heldout_forget", "heldout_retain")
SET_TITLES = {
    "forget": "forget set",
    "retain": "retain set",
    "heldout_forget": "held-out, forget selection",
    "heldout_retain": "held-out, retained",
    "heldout": "held-out images",
}
MODEL_TITLES = {
    "original": "original (deployed)",
    "candidate": "candidate (revised)",
    "reference": "reference (retrained)",
}
JUDGED_ON = {
    "estimate": "estimate",
    "lower_bound": "lower bound",
    "upper_bound": "upper bound",
    "interval": "interval",
}
# Model colours stay fixed across every figure, whichever models are present.
MODEL_COLOURS = dict(zip(MODEL_ORDER, figures.SERIES_COLOURS, strict=False))
DIGEST_CHARS = 12


# -- formatting (the templates' filters) --------------------------------------------------------


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def num(x: object, digits: int = 3, *, signed: bool = False) -> str:
    """A number for a table: ``digits`` decimals, tiny values (parity diffs) in e-notation,
    integers with thousands separators, a list as ``[a, b]``; missing values as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(num(v, digits, signed=signed) for v in x) + "]"
    if isinstance(x, int):
        return f"{x:+,}" if signed else f"{x:,}"
    if not isinstance(x, float):
        return str(x)
    if not math.isfinite(x):
        return "n/a"
    sign = "+" if signed else ""
    if x != 0 and abs(x) < 0.5 * 10**-digits:
        return f"{x:{sign}.2g}"
    return f"{x:{sign}.{digits}f}"


def ci(interval: object, digits: int = 3) -> str:
    """A 95% interval as ``lo – hi``; anything else as an em dash."""
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return f"{num(interval[0], digits)} – {num(interval[1], digits)}"
    return "—"


def short_digest(value: object) -> str:
    """A digest shortened for reading (the template keeps the full value in the tooltip)."""
    text = str(value)
    return text if len(text) <= DIGEST_CHARS + 2 else text[:DIGEST_CHARS] + "…"


def _set_title(name: str) -> str:
    return SET_TITLES.get(name, name.replace("_", " "))


def _model_title(name: str) -> str:
    return MODEL_TITLES.get(name, name)


def _models_in(mapping: Mapping[str, Any]) -> list[str]:
    """Model names in report order: original, candidate, reference, then any others."""
    known = [m for m in MODEL_ORDER if m in mapping]
    return known + [m for m in mapping if m not in MODEL_ORDER]


def _colour(name: str, fallback_index: int) -> str:
    colours = figures.SERIES_COLOURS
    return MODEL_COLOURS.get(name, colours[fallback_index % len(colours)])


def _get(value: object, *keys: str) -> Any:
    """``value[k1][k2]...``, or None where a level is missing, empty or not a mapping."""
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# -- the view: what each section shows ----------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A proportion with its 95% interval and the number of images."""

    value: Any
    ci95: Any = None
    n: Any = None

    @classmethod
    def of(cls, entry: object) -> Estimate | None:
        if not isinstance(entry, Mapping):
            return None
        return cls(entry.get("value"), entry.get("ci95"), entry.get("n"))


@dataclass(frozen=True)
class Chart:
    svg: Markup  # generated by ``figures``: numbers and escaped text only
    caption: str
    code: str | None = None  # a name shown as code before the caption (the ``by`` column)
    note: str | None = None  # muted text after it


@dataclass(frozen=True)
class Header:
    state: str  # "pass" or "fail"
    created: Any
    schema: Any
    summary: Any
    selection: Any
    candidate_path: Any  # None: no candidate model in the report


@dataclass(frozen=True)
class GateRow:
    state: str
    name: Any
    metric: Any
    set: str | None
    group: list[str]  # "column = value" lines; empty: all images
    rule: Any
    threshold: str | None  # the resolved threshold, where the rule does not state it
    value: Any
    interval: Any
    judged_value: Any
    judged_on: str
    n: Any
    margin: Any
    message: Any


@dataclass(frozen=True)
class GatesView:
    rows: list[GateRow]
    failed: int


@dataclass(frozen=True)
class AccuracyRow:
    set: str
    n: Any
    cells: list[Estimate | None]  # one per model


@dataclass(frozen=True)
class AccuracySet:
    title: str
    n: Any
    description: Any
    has_groups: bool
    figures: list[Chart]


@dataclass(frozen=True)
class Model:
    title: str
    colour: str


@dataclass(frozen=True)
class AccuracyView:
    models: list[Model]
    rows: list[AccuracyRow]
    sets: list[AccuracySet]


@dataclass(frozen=True)
class SetEstimate:
    set: str
    estimate: Estimate


@dataclass(frozen=True)
class LossMia:
    mean: Any
    std: Any
    n_per_group: Any
    n_splits: Any
    members: str
    nonmembers: list[str]


@dataclass(frozen=True)
class MiaRow:
    model: str
    loss: LossMia | None
    loss_error: Any  # the reason loss-MIA was not measured, when the report gives one
    efficacy: Any
    efficacy_error: Any
    efficacy_measured: bool
    n_shadow: Any


@dataclass(frozen=True)
class MiaView:
    rows: list[MiaRow]
    figures: list[Chart]
    member_colour: str = figures.MEMBER_COLOUR
    nonmember_colour: str = figures.NONMEMBER_COLOUR


@dataclass(frozen=True)
class DistanceRow:
    model: str
    distance: Any
    avg_gap: Any


@dataclass(frozen=True)
class ParityView:
    n: Any
    max_abs_diff: Any
    max_rel_diff: Any
    label_agreement: Any
    within_tolerance: bool | None  # None: not judged


@dataclass(frozen=True)
class FileRow:
    name: str
    path: Any
    kind: Any
    digest: Any


@dataclass(frozen=True)
class SetRow:
    title: str
    n: Any
    description: Any
    digest: Any


@dataclass(frozen=True)
class InputsView:
    models: list[FileRow]
    inputs: list[FileRow]
    sets: list[SetRow]


@dataclass(frozen=True)
class SoftwareView:
    packages: list[tuple[Any, Any]]
    timings: list[tuple[Any, Any]]
    decode_failures: Any  # None: not recorded
    left_out: str  # "forget set 2, retain set 1"


@dataclass(frozen=True)
class Section:
    anchor: str  # the id, the link in the contents line and templates/sections/<anchor>.html.j2
    title: str
    view: Any = None  # None: the section says what is missing


@dataclass(frozen=True)
class Page:
    verdict: str  # "PASS" or "FAIL"
    header: Header
    sections: list[Section]  # the optional ones only where the report has them


def _header(report: Mapping[str, Any]) -> Header:
    state = "pass" if str(report.get("verdict", "")).lower() == "pass" else "fail"
    candidate = _get(report, "models", "candidate")
    return Header(
        state=state,
        created=report.get("created_utc", "—"),
        schema=report.get("schema", "—"),
        summary=report.get("summary", ""),
        selection=report.get("forget_selection") or None,
        candidate_path=candidate.get("path", "—") if candidate else None,
    )


def _threshold(gate: Mapping[str, Any]) -> str | None:
    """The threshold a rule resolved to, when the rule does not state it (a rule relative to
    the original or the reference: ``at_least original - 0.02``)."""
    threshold = gate.get("threshold")
    values = threshold if isinstance(threshold, (list, tuple)) else [threshold]
    if not all(_is_number(v) for v in values):
        return None
    stated = [float(x) for x in re.findall(r"-?\d+(?:\.\d*)?(?:e-?\d+)?", str(gate.get("rule")))]
    if all(any(math.isclose(v, x, rel_tol=1e-9, abs_tol=1e-12) for x in stated) for v in values):
        return None
    return num(threshold)


def _group_lines(group: object) -> list[str]:
    if not group:
        return []
    if isinstance(group, Mapping):
        return [f"{k} = {v}" for k, v in group.items()]
    return [str(group)]


def _gates(report: Mapping[str, Any]) -> Section:
    gates = [g for g in report.get("gates") or [] if isinstance(g, Mapping)]
    if not gates:
        return Section("gates", "Gates")
    rows = [
        GateRow(
            state="pass" if gate.get("passed") else "fail",
            name=gate.get("name", ""),
            metric=gate.get("metric", ""),
            set=_set_title(str(gate["set"])) if gate.get("set") else None,
            group=_group_lines(gate.get("group")),
            rule=gate.get("rule", ""),
            threshold=_threshold(gate),
            value=gate.get("value"),
            interval=gate.get("interval"),
            judged_value=gate.get("judged_value"),
            judged_on=JUDGED_ON.get(str(gate.get("judged_on")), str(gate.get("judged_on", ""))),
            n=gate.get("n"),
            margin=gate.get("margin"),
            message=gate.get("message") or None,
        )
        for gate in gates
    ]
    return Section("gates", "Gates", GatesView(rows, sum(r.state == "fail" for r in rows)))


def _set_order(report: Mapping[str, Any], per_model: Mapping[str, Any]) -> list[str]:
    seen: list[str] = [s for s in SET_ORDER if s in _mapping(report.get("sets"))]
    for entry in per_model.values():
        for s in _mapping(entry):
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


def _bar(entry: object) -> figures.Bar | None:
    if not isinstance(entry, Mapping) or not _is_number(entry.get("value")):
        return None
    ci95 = entry.get("ci95")
    interval = (
        (float(ci95[0]), float(ci95[1]))
        if isinstance(ci95, (list, tuple)) and len(ci95) == 2
        else None
    )
    return figures.Bar(float(entry["value"]), interval, entry.get("n"))


def _accuracy_charts(
    accuracy: Mapping[str, Any], models: list[str], s: str, classes: list[str]
) -> tuple[bool, list[Chart]]:
    """The per-group bar charts of set ``s``: one per ``by`` column; False: no column."""
    columns: list[str] = []
    for m in models:
        for column in _mapping(_get(accuracy, m, s, "by")):
            if column not in columns:
                columns.append(column)
    charts = []
    for column in columns:
        tables = [_mapping(_get(accuracy, m, s, "by", column)) for m in models]
        groups = _group_order(column, tables, classes)
        if not groups:
            continue
        series = [
            (_model_title(m), [_bar(table.get(g)) for g in groups])
            for m, table in zip(models, tables, strict=True)
        ]
        svg = figures.grouped_hbar(
            [str(g) for g in groups],
            series,
            title=f"Accuracy on the {_set_title(s)} by {column}",
            colours=[_colour(m, i) for i, m in enumerate(models)],
        )
        plural = "s" if len(groups) != 1 else ""
        charts.append(Chart(svg, "by", code=str(column), note=f"({len(groups)} group{plural})"))
    return bool(columns), charts


def _accuracy(report: Mapping[str, Any]) -> Section:
    accuracy = _mapping(report.get("accuracy"))
    models = _models_in(accuracy)
    if not models:
        return Section("accuracy", "Accuracy")
    sets = _set_order(report, accuracy)
    classes = [str(c) for c in report.get("class_names") or []]
    rows = []
    for s in sets:
        n = next((_get(accuracy, m, s, "n") for m in models if _get(accuracy, m, s)), None)
        cells = [Estimate.of(_get(accuracy, m, s)) for m in models]
        rows.append(AccuracyRow(_set_title(s), n, cells))
    per_set = []
    for s in sets:
        info = _mapping(_get(report, "sets", s))
        has_groups, charts = _accuracy_charts(accuracy, models, s, classes)
        per_set.append(
            AccuracySet(_set_title(s), info.get("n"), info.get("description"), has_groups, charts)
        )
    legend = [Model(_model_title(m), _colour(m, i)) for i, m in enumerate(models)]
    return Section("accuracy", "Accuracy", AccuracyView(legend, rows, per_set))


def _agreement(report: Mapping[str, Any]) -> Section:
    agreement = _mapping(report.get("agreement"))
    if not agreement:
        return Section("agreement", "Agreement with the original")
    order = {s: i for i, s in enumerate(SET_ORDER)}
    rows = [
        SetEstimate(_set_title(s), Estimate.of(_mapping(e)) or Estimate(None))
        for s, e in sorted(agreement.items(), key=lambda kv: order.get(kv[0], len(order)))
    ]
    return Section("agreement", "Agreement with the original", rows)


def _confusion(report: Mapping[str, Any]) -> Section:
    confusion = _mapping(report.get("confusion"))
    models = _models_in(confusion)
    if not models:
        return Section("confusion", "Confusion matrices")
    classes = [str(c) for c in report.get("class_names") or []]
    charts = []
    for m in models:
        entry = _mapping(confusion[m])
        matrix = entry.get("matrix") or []
        if not matrix:
            continue
        labels = [str(c) for c in entry.get("labels") or classes]
        n = sum(sum(row) for row in matrix)
        where = _set_title(str(entry.get("set", "heldout")))
        svg = figures.confusion_heatmap(matrix, labels, title=f"Confusion matrix of the {m} model")
        charts.append(Chart(svg, _model_title(m), note=f"{where}, n = {num(n)}"))
    return Section("confusion", "Confusion matrices", charts)


def _loss_mia(loss: Mapping[str, Any]) -> LossMia:
    return LossMia(
        mean=loss.get("mean"),
        std=loss.get("std"),
        n_per_group=loss.get("n_per_group"),
        n_splits=loss.get("n_splits"),
        members=_set_title(str(loss.get("members", ""))),
        nonmembers=[_set_title(s) for s in str(loss.get("nonmembers", "")).split("+")],
    )


def _mia(report: Mapping[str, Any]) -> Section:
    mia = _mapping(report.get("mia"))
    histograms = _mapping(report.get("loss_histograms"))
    models = _models_in({**mia, **histograms})
    if not models:
        return Section("mia", "Membership inference")
    rows = []
    for m in models:
        loss = _mapping(_get(mia, m, "loss_mia"))
        eff = _mapping(_get(mia, m, "mia_efficacy"))
        rows.append(
            MiaRow(
                model=_model_title(m),
                loss=_loss_mia(loss) if loss and "error" not in loss else None,
                loss_error=loss.get("error"),
                efficacy=eff.get("value"),
                efficacy_error=eff.get("error"),
                efficacy_measured=bool(eff),
                n_shadow=eff.get("n_shadow"),
            )
        )
    charts = []
    for m in models:
        h = histograms.get(m)
        if not isinstance(h, Mapping) or not h.get("edges"):
            continue
        svg = figures.overlaid_histogram(
            h["edges"],
            h.get("members") or [],
            h.get("nonmembers") or [],
            first_label=str(h.get("members_label", "members")),
            second_label=str(h.get("nonmembers_label", "non-members")),
            title=f"Per-sample loss of the {m} model, members vs non-members",
        )
        charts.append(Chart(svg, _model_title(m)))
    return Section("mia", "Membership inference", MiaView(rows, charts))


def _reference(report: Mapping[str, Any]) -> Section | None:
    ref = report.get("reference")
    if not ref:
        return None
    rows = [
        DistanceRow(_model_title(who), ref.get(f"{prefix}distance"), ref.get(f"{prefix}avg_gap"))
        for who, prefix in (("candidate", ""), ("original", "original_"))
        if f"{prefix}distance" in ref or f"{prefix}avg_gap" in ref
    ]
    return Section("reference", "Distance to the retrained reference", rows)


def _parity(report: Mapping[str, Any]) -> Section | None:
    parity = report.get("parity")
    if not parity:
        return None
    view = ParityView(
        n=parity.get("n"),
        max_abs_diff=parity.get("max_abs_diff"),
        max_rel_diff=parity.get("max_rel_diff"),
        label_agreement=parity.get("label_agreement"),
        within_tolerance=bool(parity["within_tolerance"]) if "within_tolerance" in parity else None,
    )
    return Section("parity", "ONNX parity", view)


def _inputs(report: Mapping[str, Any]) -> Section:
    models = _mapping(report.get("models"))
    model_rows = []
    for m in _models_in(models):
        entry = _mapping(models[m])
        path, kind = entry.get("path", "—"), entry.get("format", "—")
        model_rows.append(FileRow(_model_title(m), path, kind, entry.get("sha256")))
    input_rows = []
    for name, entry in _mapping(report.get("inputs")).items():
        if not entry:
            continue
        entry = entry if isinstance(entry, Mapping) else {"path": entry}
        where = entry.get("path", entry.get("source", ""))
        digest = entry.get("sha256", entry.get("digest"))
        input_rows.append(FileRow(name, where, entry.get("kind", ""), digest))
    set_rows = [
        SetRow(
            _set_title(s),
            _get(e, "n"),
            _get(e, "description") or "",
            _get(e, "digest"),
        )
        for s, e in _mapping(report.get("sets")).items()
    ]
    return Section("inputs", "Inputs and digests", InputsView(model_rows, input_rows, set_rows))


def _definitions(report: Mapping[str, Any]) -> Section | None:
    defs = _mapping(report.get("definitions"))
    if not defs:
        return None
    return Section("definitions", "Definitions", list(defs.items()))


def _software(report: Mapping[str, Any]) -> Section:
    left_out = ", ".join(
        f"{SET_TITLES.get(name, name)} {_get(entry, 'n')}"
        for name, entry in _mapping(report.get("decode_left_out")).items()
    )
    view = SoftwareView(
        packages=list(_mapping(report.get("software")).items()),
        timings=list(_mapping(report.get("timings_s")).items()),
        decode_failures=report.get("decode_failures"),
        left_out=left_out,
    )
    return Section("software", "Software and timings", view)


def page_view(report: Mapping[str, Any]) -> Page:
    """What the page shows, section by section; absent optional sections are left out (and
    so is their link in the contents line)."""
    sections = [
        _gates(report),
        _accuracy(report),
        _agreement(report),
        _confusion(report),
        _mia(report),
        _reference(report),
        _parity(report),
        _inputs(report),
        _definitions(report),
        _software(report),
    ]
    header = _header(report)
    verdict = header.state.upper()
    return Page(verdict, header, [s for s in sections if s is not None])


# -- public ------------------------------------------------------------------------------------


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("revise.validate", "templates"),
        autoescape=True,  # every template here is HTML; report strings are user data
        undefined=jinja2.StrictUndefined,  # a misspelt field fails, not renders as nothing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=num, ci=ci, short_digest=short_digest)
    return env


def render_html(report: dict) -> str:
    """The whole report page as one self-contained HTML string."""
    return _environment().get_template("report.html.j2").render(page=page_view(report))


def write_html(report: dict, path: Path) -> Path:
    """Render ``report`` and write it to ``path`` atomically (complete or absent)."""
    from revise._io import atomic_path

    path = Path(path)
    text = render_html(report)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
