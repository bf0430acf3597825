"""The validation report as one self-contained HTML file (``report.html``).

It is read by a clinical ML engineer and by a regulatory reviewer, possibly offline and years
later, so it fetches nothing: inline CSS, inline SVG figures drawn here (``_svg``), and one
small inline script that records in the DOM how many figures rendered (for automated checks).
Every string from the report is escaped: group names, paths and messages are user data.

    html = render_html(report)          # report: the revision_report.json dict
    write_html(report, out / "report.html")
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from revise.validate._svg import (
    MEMBER_COLOUR,
    NONMEMBER_COLOUR,
    SERIES_COLOURS,
    Bar,
    confusion_heatmap,
    esc,
    grouped_hbar,
    overlaid_histogram,
)

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
MODEL_COLOURS = dict(zip(MODEL_ORDER, SERIES_COLOURS, strict=False))
DIGEST_CHARS = 12

_CSS = """
:root { --ink: #1d1d1f; --muted: #5f6368; --line: #d9dce1; --pass: #1a7f37; --fail: #c62828;
  --pass-bg: #e6f4ea; --fail-bg: #fdecea; --soft: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.45;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid
  var(--line); }
h3 { font-size: 15px; margin: 20px 0 6px; }
p { margin: 6px 0; }
.meta { color: var(--muted); font-size: 13px; }
.muted { color: var(--muted); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12.5px; }
code { background: var(--soft); padding: 1px 4px; border-radius: 3px; overflow-wrap: break-word; }
nav { margin: 14px 0 0; font-size: 13px; line-height: 1.9; }
nav a { color: #0b57d0; margin-right: 12px; text-decoration: none; white-space: nowrap; }
.banner { margin: 16px 0 8px; padding: 14px 18px; border-radius: 6px; border-left: 8px solid; }
.banner.pass { background: var(--pass-bg); border-color: var(--pass); }
.banner.fail { background: var(--fail-bg); border-color: var(--fail); }
.banner .verdict { font-size: 22px; font-weight: 700; letter-spacing: .04em; margin-right: 12px; }
.banner.pass .verdict { color: var(--pass); }
.banner.fail .verdict { color: var(--fail); }
.banner .summary { font-size: 16px; font-weight: 600; }
.banner p { margin: 6px 0 0; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 9px; text-align: left;
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.wide { width: 100%; }
.gates td { overflow-wrap: break-word; }
.gates td:first-child { min-width: 180px; }
.gates tr.fail > td { background: var(--fail-bg); }
.gates tr.message > td { border-top: 0; padding-top: 0; color: var(--muted); font-size: 12.5px; }
.gates tr.head > td { border-bottom: 0; }
.badge { display: inline-block; min-width: 44px; text-align: center; font-weight: 700;
  font-size: 12px; padding: 2px 6px; border-radius: 3px; color: #fff; white-space: nowrap; }
.badge.pass { background: var(--pass); }
.badge.fail { background: var(--fail); }
.figures { display: flex; flex-wrap: wrap; gap: 18px 28px; align-items: flex-start; }
figure { margin: 0; max-width: 100%; break-inside: avoid; }
figcaption { font-size: 13px; font-weight: 600; margin-bottom: 4px; }
figcaption .muted { font-weight: 400; }
svg.figure { display: block; max-width: 100%; height: auto; }
dl.defs dt { font-weight: 600; margin-top: 8px; }
dl.defs dd { margin: 2px 0 0 18px; }
.note { font-size: 12.5px; color: var(--muted); }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
  margin-right: 5px; vertical-align: baseline; }
@media print { main { max-width: none; padding: 0; } nav { display: none; }
  h2 { break-after: avoid; } tr, figure { break-inside: avoid; } }
"""

# Counts the figures that rendered with a non-zero box (and non-empty content) and records it
# on <body>, so a headless browser test can read it from the DOM.
_SCRIPT = """
window.addEventListener("load", function () {
  var figures = document.querySelectorAll("svg.figure");
  var rendered = 0;
  figures.forEach(function (svg) {
    var box = svg.getBoundingClientRect();
    var inner = svg.getBBox ? svg.getBBox() : box;
    if (box.width > 0 && box.height > 0 && inner.width > 0 && inner.height > 0) rendered++;
  });
  document.body.dataset.figuresRendered = String(rendered);
  document.body.dataset.figuresTotal = String(figures.length);
});
"""


# -- formatting --------------------------------------------------------------------------------


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


def _ci(ci: object, digits: int = 3) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"{num(ci[0], digits)} – {num(ci[1], digits)}"
    return "—"


def _digest(value: object) -> str:
    """A digest shortened for reading; the full value stays in the tooltip (and is copyable)."""
    if not value:
        return '<span class="muted">—</span>'
    text = str(value)
    short = text if len(text) <= DIGEST_CHARS + 2 else text[:DIGEST_CHARS] + "…"
    return f'<code title="{esc(text)}">{esc(short)}</code>'


def _set_title(name: str) -> str:
    return SET_TITLES.get(name, name.replace("_", " "))


def _model_title(name: str) -> str:
    return MODEL_TITLES.get(name, name)


def _models_in(mapping: Mapping[str, Any]) -> list[str]:
    """Model names in report order: original, candidate, reference, then any others."""
    known = [m for m in MODEL_ORDER if m in mapping]
    return known + [m for m in mapping if m not in MODEL_ORDER]


def _colour(name: str, fallback_index: int) -> str:
    return MODEL_COLOURS.get(name, SERIES_COLOURS[fallback_index % len(SERIES_COLOURS)])


def _group(group: object) -> str:
    if not group:
        return '<span class="muted">all</span>'
    if isinstance(group, Mapping):
        return "<br>".join(f"{esc(k)} = {esc(v)}" for k, v in group.items())
    return esc(group)


def _table(
    header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()
) -> str:
    """A table from already-escaped cells; ``numeric`` columns are right-aligned."""
    right = set(numeric)

    def cls(i: int) -> str:
        return ' class="num"' if i in right else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_SECTION_RE = r'<section id="([a-z]+)"><h2>([^<]*)</h2>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


def _figure(svg: str, caption: str) -> str:
    return f"<figure><figcaption>{caption}</figcaption>{svg}</figure>"


# -- sections ----------------------------------------------------------------------------------


def _header(report: Mapping[str, Any]) -> str:
    verdict = str(report.get("verdict", "")).lower()
    state = "pass" if verdict == "pass" else "fail"
    candidate = (report.get("models") or {}).get("candidate") or {}
    selection = report.get("forget_selection")
    parts = [
        "<header>",
        "<h1>Revision validation report</h1>",
        f'<p class="meta">Created {esc(report.get("created_utc", "—"))} · schema '
        f"<code>{esc(report.get('schema', '—'))}</code></p>",
        f'<div class="banner {state}" role="status">',
        f'<span class="verdict">{"PASS" if state == "pass" else "FAIL"}</span>',
        f'<span class="summary">{esc(report.get("summary", ""))}</span>',
        "<p>Forget selection: "
        + (f"<code>{esc(selection)}</code>" if selection else '<span class="muted">—</span>')
        + "</p>",
    ]
    if candidate:
        parts.append(f"<p>Candidate model: <code>{esc(candidate.get('path', '—'))}</code></p>")
    parts.append("</div>")
    parts.append("</header>")
    return "".join(parts)


def _threshold(gate: Mapping[str, Any]) -> str:
    """The rule, plus the threshold it resolved to when the rule does not state it (a rule
    relative to the original or the reference: ``at_least original - 0.02``)."""
    rule = esc(gate.get("rule", ""))
    threshold = gate.get("threshold")
    values = threshold if isinstance(threshold, (list, tuple)) else [threshold]
    if not all(_is_number(v) for v in values):
        return rule
    stated = [float(x) for x in re.findall(r"-?\d+(?:\.\d*)?(?:e-?\d+)?", str(gate.get("rule")))]
    if all(any(math.isclose(v, x, rel_tol=1e-9, abs_tol=1e-12) for x in stated) for v in values):
        return rule
    return f'{rule}<br><span class="muted">= {esc(num(threshold))}</span>'


def _gates(report: Mapping[str, Any]) -> str:
    gates = report.get("gates") or []
    if not gates:
        return _section("gates", "Gates", '<p class="muted">No gates were defined.</p>')
    header = [
        "gate",
        "metric",
        "set",
        "group",
        "rule",
        "value",
        "95% interval",
        "judged value",
        "n",
        "margin",
        "result",
    ]
    numeric = {5, 6, 7, 8, 9}
    head = "".join(
        f"<th{' class=num' if i in numeric else ''}>{esc(h)}</th>" for i, h in enumerate(header)
    )
    rows = []
    for gate in gates:
        passed = bool(gate.get("passed"))
        state = "pass" if passed else "fail"
        judged_on = JUDGED_ON.get(str(gate.get("judged_on")), str(gate.get("judged_on", "")))
        cells = [
            f"<strong>{esc(gate.get('name', ''))}</strong>",
            f"<code>{esc(gate.get('metric', ''))}</code>",
            esc(_set_title(str(gate["set"]))) if gate.get("set") else "—",
            _group(gate.get("group")),
            _threshold(gate),
            esc(num(gate.get("value"))),
            esc(_ci(gate.get("interval"))),
            f'{esc(num(gate.get("judged_value")))}<br><span class="muted">{esc(judged_on)}</span>',
            esc(num(gate.get("n"))),
            esc(num(gate.get("margin"), signed=True)),
            f'<span class="badge {state}">{state.upper()}</span>',
        ]
        rows.append(
            f'<tr class="head {state}">'
            + "".join(
                f"<td{' class=num' if i in numeric else ''}>{c}</td>" for i, c in enumerate(cells)
            )
            + "</tr>"
        )
        message = gate.get("message")
        if message:
            rows.append(
                f'<tr class="message {state}"><td colspan="{len(header)}">{esc(message)}</td></tr>'
            )
    failed = sum(not g.get("passed") for g in gates)
    intro = (
        f"<p>{len(gates) - failed} of {len(gates)} gates passed"
        + (f"; <strong>{failed} failed</strong> (highlighted)." if failed else ".")
        + ' <span class="note">The margin is the distance of the judged value from the '
        "threshold, positive on the passing side.</span></p>"
    )
    table = (
        f'<table class="gates wide"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return _section("gates", "Gates", intro + table)


def _set_order(report: Mapping[str, Any], per_model: Mapping[str, Any]) -> list[str]:
    seen: list[str] = [s for s in SET_ORDER if s in (report.get("sets") or {})]
    for entry in per_model.values():
        for s in entry or {}:
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


def _bar(entry: object) -> Bar | None:
    if not isinstance(entry, Mapping) or not _is_number(entry.get("value")):
        return None
    ci = entry.get("ci95")
    ci95 = (float(ci[0]), float(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
    return Bar(float(entry["value"]), ci95, entry.get("n"))


def _accuracy(report: Mapping[str, Any]) -> str:
    accuracy = report.get("accuracy") or {}
    models = _models_in(accuracy)
    if not models:
        return _section("accuracy", "Accuracy", '<p class="muted">No accuracy was measured.</p>')
    sets = _set_order(report, accuracy)
    set_info = report.get("sets") or {}
    classes = [str(c) for c in report.get("class_names") or []]
    header = ["set", "n"] + [esc(_model_title(m)) for m in models]
    rows = []
    for s in sets:
        n = next((accuracy[m][s].get("n") for m in models if s in (accuracy[m] or {})), None)
        cells = [esc(_set_title(s)), esc(num(n))]
        for m in models:
            entry = (accuracy[m] or {}).get(s)
            if isinstance(entry, Mapping):
                cells.append(
                    f"<strong>{esc(num(entry.get('value')))}</strong> "
                    f'<span class="muted">({esc(_ci(entry.get("ci95")))})</span>'
                )
            else:
                cells.append('<span class="muted">—</span>')
        rows.append(cells)
    legend = " ".join(
        f'<span class="swatch" style="background:{_colour(m, i)}"></span>{esc(_model_title(m))}'
        for i, m in enumerate(models)
    )
    parts = [
        "<p>Overall accuracy per set, with the 95% bootstrap interval in brackets.</p>",
        _table(header, rows, numeric=range(1, len(header))),
        f'<p class="note">Bars: {legend}. Whiskers: 95% interval. Hover a bar for its n.</p>',
    ]
    for s in sets:
        info = set_info.get(s) or {}
        n = info.get("n")
        desc = info.get("description")
        parts.append(
            f"<h3>{esc(_set_title(s))}"
            + (f' <span class="muted">(n = {esc(num(n))})</span>' if n is not None else "")
            + "</h3>"
            + (f'<p class="note">{esc(desc)}</p>' if desc else "")
        )
        columns: list[str] = []
        for m in models:
            for column in ((accuracy[m] or {}).get(s) or {}).get("by") or {}:
                if column not in columns:
                    columns.append(column)
        if not columns:
            parts.append('<p class="note">No per-group accuracy (no <code>by</code> column).</p>')
            continue
        figures = []
        for column in columns:
            tables = [
                ((((accuracy[m] or {}).get(s) or {}).get("by") or {}).get(column) or {})
                for m in models
            ]
            groups = _group_order(column, tables, classes)
            if not groups:
                continue
            series = [
                (_model_title(m), [_bar(table.get(g)) for g in groups])
                for m, table in zip(models, tables, strict=True)
            ]
            colours = [_colour(m, i) for i, m in enumerate(models)]
            svg = grouped_hbar(
                [str(g) for g in groups],
                series,
                title=f"Accuracy on the {_set_title(s)} by {column}",
                colours=colours,
            )
            figures.append(
                _figure(
                    svg,
                    f'by <code>{esc(column)}</code> <span class="muted">'
                    f"({len(groups)} group{'s' if len(groups) != 1 else ''})</span>",
                )
            )
        parts.append(f'<div class="figures">{"".join(figures)}</div>')
    return _section("accuracy", "Accuracy", "".join(parts))


def _agreement(report: Mapping[str, Any]) -> str:
    agreement = report.get("agreement") or {}
    if not agreement:
        body = '<p class="muted">Not measured (no original model).</p>'
        return _section("agreement", "Agreement with the original", body)
    order = {s: i for i, s in enumerate(SET_ORDER)}
    rows = [
        [
            esc(_set_title(s)),
            esc(num((e or {}).get("n"))),
            f"<strong>{esc(num((e or {}).get('value')))}</strong>",
            esc(_ci((e or {}).get("ci95"))),
        ]
        for s, e in sorted(agreement.items(), key=lambda kv: order.get(kv[0], len(order)))
    ]
    body = (
        "<p>Share of images on which the candidate predicts the same class as the original.</p>"
        + _table(["set", "n", "agreement", "95% interval"], rows, numeric=(1, 2, 3))
    )
    return _section("agreement", "Agreement with the original", body)


def _confusion(report: Mapping[str, Any]) -> str:
    confusion = report.get("confusion") or {}
    models = _models_in(confusion)
    if not models:
        body = '<p class="muted">No confusion matrix (no held-out images).</p>'
        return _section("confusion", "Confusion matrices", body)
    classes = [str(c) for c in report.get("class_names") or []]
    figures = []
    for m in models:
        entry = confusion[m] or {}
        matrix = entry.get("matrix") or []
        if not matrix:
            continue
        labels = [str(c) for c in entry.get("labels") or classes]
        n = sum(sum(row) for row in matrix)
        where = _set_title(str(entry.get("set", "heldout")))
        svg = confusion_heatmap(matrix, labels, title=f"Confusion matrix of the {m} model")
        figures.append(
            _figure(
                svg,
                f'{esc(_model_title(m))} <span class="muted">{esc(where)}, '
                f"n = {esc(num(n))}</span>",
            )
        )
    body = (
        "<p>Rows are the true class, columns the predicted class; cells hold counts and are "
        "coloured by their share of the row.</p>"
        f'<div class="figures">{"".join(figures)}</div>'
    )
    return _section("confusion", "Confusion matrices", body)


def _mia(report: Mapping[str, Any]) -> str:
    mia = report.get("mia") or {}
    histograms = report.get("loss_histograms") or {}
    models = _models_in({**mia, **histograms})
    if not models:
        body = '<p class="muted">Not measured (no forget set or no held-out images).</p>'
        return _section("mia", "Membership inference", body)
    rows = []
    for m in models:
        entry = mia.get(m) or {}
        loss = entry.get("loss_mia") or {}
        eff = entry.get("mia_efficacy") or {}
        if "error" in loss:
            loss_cell, loss_n, groups = f'<span class="muted">{esc(loss["error"])}</span>', "", ""
        elif loss:
            loss_cell = (
                f"<strong>{esc(num(loss.get('mean')))}</strong> ± {esc(num(loss.get('std')))}"
            )
            loss_n = (
                f"{esc(num(loss.get('n_per_group')))} per group, "
                f"{esc(num(loss.get('n_splits')))} splits"
            )
            groups = f"{esc(_set_title(str(loss.get('members', ''))))} vs " + " + ".join(
                esc(_set_title(s)) for s in str(loss.get("nonmembers", "")).split("+")
            )
        else:
            loss_cell, loss_n, groups = '<span class="muted">not measured</span>', "", ""
        if "error" in eff:
            eff_cell, eff_n = f'<span class="muted">{esc(eff["error"])}</span>', ""
        elif eff:
            eff_cell = f"<strong>{esc(num(eff.get('value')))}</strong>"
            eff_n = esc(num(eff.get("n_shadow")))
        else:
            eff_cell, eff_n = '<span class="muted">not measured</span>', ""
        rows.append([esc(_model_title(m)), loss_cell, loss_n, groups, eff_cell, eff_n])
    table = _table(
        [
            "model",
            "loss-MIA (mean ± std)",
            "attack data",
            "members vs non-members",
            "MIA-Efficacy",
            "shadow n",
        ],
        rows,
        numeric=(1, 4, 5),
    )
    figures = []
    for m in models:
        h = histograms.get(m)
        if not isinstance(h, Mapping) or not h.get("edges"):
            continue
        svg = overlaid_histogram(
            h["edges"],
            h.get("members") or [],
            h.get("nonmembers") or [],
            first_label=str(h.get("members_label", "members")),
            second_label=str(h.get("nonmembers_label", "non-members")),
            title=f"Per-sample loss of the {m} model, members vs non-members",
        )
        figures.append(_figure(svg, esc(_model_title(m))))
    body = (
        "<p>loss-MIA near 0.5 means an attacker cannot tell forget-set images from images the "
        "model never saw; MIA-Efficacy is the share of the forget set an attacker calls "
        "non-member.</p>"
        + table
        + (
            f'<h3>Loss distributions</h3><p class="note">Each group as a share of its own '
            f'images; <span class="swatch" style="background:{MEMBER_COLOUR}"></span>members, '
            f'<span class="swatch" style="background:{NONMEMBER_COLOUR}"></span>non-members. '
            "The last bin also holds every larger loss.</p>"
            f'<div class="figures">{"".join(figures)}</div>'
            if figures
            else ""
        )
    )
    return _section("mia", "Membership inference", body)


def _reference(report: Mapping[str, Any]) -> str:
    ref = report.get("reference")
    if not ref:
        return ""
    rows = []
    for who, prefix in (("candidate", ""), ("original", "original_")):
        if f"{prefix}distance" in ref or f"{prefix}avg_gap" in ref:
            rows.append(
                [
                    esc(_model_title(who)),
                    esc(num(ref.get(f"{prefix}distance"))),
                    esc(num(ref.get(f"{prefix}avg_gap"), 2)),
                ]
            )
    body = (
        "<p>How close each model is to a model retrained without the forget set (lower is "
        "closer). Avg. Gap is in percentage points.</p>"
        + _table(["model", "distance D", "Avg. Gap"], rows, numeric=(1, 2))
    )
    return _section("reference", "Distance to the retrained reference", body)


def _parity(report: Mapping[str, Any]) -> str:
    parity = report.get("parity")
    if not parity:
        return ""
    rows = [
        ["images compared", esc(num(parity.get("n")))],
        ["max |logit difference|", esc(num(parity.get("max_abs_diff")))],
        ["max relative difference", esc(num(parity.get("max_rel_diff")))],
        ["predicted labels agree", esc(num(parity.get("label_agreement")))],
    ]
    if "within_tolerance" in parity:
        ok = bool(parity["within_tolerance"])
        rows.append(
            [
                "within tolerance",
                f'<span class="badge {"pass" if ok else "fail"}">{"yes" if ok else "no"}</span>',
            ]
        )
    body = (
        "<p>The exported ONNX model in ONNX Runtime against the candidate in PyTorch.</p>"
        + _table(["check", "value"], rows, numeric=(1,))
    )
    return _section("parity", "ONNX parity", body)


def _inputs(report: Mapping[str, Any]) -> str:
    models = report.get("models") or {}
    model_rows = [
        [
            esc(_model_title(m)),
            f"<code>{esc((models[m] or {}).get('path', '—'))}</code>",
            esc((models[m] or {}).get("format", "—")),
            _digest((models[m] or {}).get("sha256")),
        ]
        for m in _models_in(models)
    ]
    input_rows = []
    for name, entry in (report.get("inputs") or {}).items():
        if not entry:
            continue
        entry = entry if isinstance(entry, Mapping) else {"path": entry}
        where = entry.get("path", entry.get("source", ""))
        digest = entry.get("sha256", entry.get("digest"))
        kind = entry.get("kind", "")
        input_rows.append(
            [esc(name), f"<code>{esc(where)}</code>", esc(kind) or "—", _digest(digest)]
        )
    set_rows = [
        [
            esc(_set_title(s)),
            esc(num((e or {}).get("n"))),
            esc((e or {}).get("description", "")),
            _digest((e or {}).get("digest")),
        ]
        for s, e in (report.get("sets") or {}).items()
    ]
    parts = [
        '<p class="note">Digests are SHA-256, shortened; hover (or copy) for the full value.</p>',
        "<h3>Models</h3>",
        _table(["role", "path", "format", "sha256"], model_rows),
    ]
    if input_rows:
        parts += [
            "<h3>Data and criteria</h3>",
            _table(["input", "path / source", "kind", "digest"], input_rows),
        ]
    if set_rows:
        parts += [
            "<h3>Sets</h3>",
            _table(["set", "n", "description", "digest"], set_rows, numeric=(1,)),
        ]
    return _section("inputs", "Inputs and digests", "".join(parts))


def _definitions(report: Mapping[str, Any]) -> str:
    defs = report.get("definitions") or {}
    if not defs:
        return ""
    items = "".join(
        f"<dt><code>{esc(name)}</code></dt><dd>{esc(text)}</dd>" for name, text in defs.items()
    )
    return _section("definitions", "Definitions", f'<dl class="defs">{items}</dl>')


def _software(report: Mapping[str, Any]) -> str:
    software = report.get("software") or {}
    timings = report.get("timings_s") or {}
    parts = []
    if software:
        parts.append(
            _table(["package", "version"], [[esc(k), esc(v)] for k, v in software.items()])
        )
    if timings:
        parts.append(
            _table(
                ["stage", "seconds"],
                [[esc(k), esc(num(v, 2))] for k, v in timings.items()],
                numeric=(1,),
            )
        )
    failures = report.get("decode_failures")
    if failures is not None:
        cls = "" if not failures else ' style="color:var(--fail);font-weight:600"'
        by_set = ", ".join(
            f"{SET_TITLES.get(name, name)} {entry['n']}"
            for name, entry in (report.get("decode_left_out") or {}).items()
        )
        where = f" (left out of: {esc(by_set)})" if by_set else ""
        parts.append(f"<p{cls}>Images that could not be decoded: {esc(num(failures))}{where}</p>")
    body = f'<div class="figures">{"".join(parts[:2])}</div>' + "".join(parts[2:])
    return _section("software", "Software and timings", body)


# -- public ------------------------------------------------------------------------------------


def render_html(report: dict) -> str:
    """The whole report page as one self-contained HTML string."""
    verdict = "PASS" if str(report.get("verdict", "")).lower() == "pass" else "FAIL"
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
    # The contents line links only the sections present (no reference or parity: no link).
    links = "".join(
        f'<a href="#{anchor}">{title}</a> '
        for anchor, title in (re.match(_SECTION_RE, sec).groups() for sec in sections if sec)
    )
    body = _header(report) + f"<nav>{links}</nav>" + "".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{verdict}: revision validation report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def write_html(report: dict, path: Path) -> Path:
    """Render ``report`` and write it to ``path`` atomically (complete or absent)."""
    from revise._io import atomic_path

    path = Path(path)
    text = render_html(report)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
