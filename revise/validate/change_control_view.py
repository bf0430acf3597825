"""The report page's first section: the change-control summary
(:class:`revise.validate.change_control_record.ChangeControl`) as flat rows that
``templates/sections/change_control.html.j2`` shows, element by element of the plan."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from revise._validation_record import ValidationReport
from revise.validate.change_control import change_control
from revise.validate.change_control_record import AccuracyChange, ChangeControl, GateResult
from revise.validate.report_format import num, set_title
from revise.validate.report_view import Section

ANCHOR = "change_control"
TITLE = "Change control"


@dataclass(frozen=True)
class Fact:
    label: str
    value: Any
    kind: str = "text"  # text, code, digest, number


@dataclass(frozen=True)
class Element:
    """One element of the plan: its facts, and an optional table."""

    title: str
    facts: list[Fact]
    head: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    states: list[str] = field(default_factory=list)  # per row: pass, fail or ""
    digests: tuple[int, ...] = ()  # the columns that hold digests (shown shortened)
    items: list[str] = field(default_factory=list)  # a list (steps, warnings)
    items_kind: str = "text"  # text or code


@dataclass(frozen=True)
class ChangeControlView:
    state: str  # pass or fail
    framework: Any
    summary: Any
    elements: list[Element]


def _facts(*given: tuple[str, Any, str]) -> list[Fact]:
    """The facts given a value (None and empty ones are left out)."""
    return [Fact(label, value, kind) for label, value, kind in given if value not in (None, "")]


def _where(set_name: Any, group: Any) -> str:
    where = set_title(set_name) if set_name else "all"
    if isinstance(group, Mapping) and group:
        where += " [" + ", ".join(f"{k} = {v}" for k, v in group.items()) + "]"
    elif group:
        where += f" [{group}]"
    return where


def _pairs(values: Mapping[str, Any], sep: str) -> str:
    """``a=1, b=[2, 3]``: settings or versions on one line."""
    said = (v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in values.values())
    return ", ".join(f"{k}{sep}{v}" for k, v in zip(values, said, strict=True))


def change_control_section(
    report: ValidationReport, record: ChangeControl | None = None
) -> Section:
    """The section of ``record``, the change-control summary of ``report`` (made from the
    report alone when not given: then without the run record's method and target)."""
    record = record if record is not None else change_control(report)
    description = record.description_of_modification
    protocol = record.modification_protocol
    data, method = protocol.data_management, protocol.method
    evaluation, update = protocol.performance_evaluation, protocol.update_procedure
    impact = record.impact_assessment
    forget = description.forget_set
    what = Element(
        "Description of the modification",
        _facts(
            ("forget selection", description.forget_selection, "code"),
            ("selection sha256", description.forget_selection_sha256, "digest"),
            ("kind", description.kind, "text"),
            ("forget set", forget.n if forget else None, "number"),
            ("forget set rows digest", forget.digest if forget else None, "digest"),
            ("original model (weights)", _sha(description.original_model), "digest"),
            ("revised model (weights)", _sha(description.revised_model), "digest"),
            ("run started from", description.base_model_sha256, "digest"),
        ),
    )
    used, excluded = data.used, data.excluded
    calibration = used.calibration or {}
    data_element = Element(
        "Data management: used and excluded",
        _facts(
            ("manifest digest", used.manifest_digest, "digest"),
            *((f"training: {k} images", n, "number") for k, n in used.training.items()),
            ("calibration slice (held-out rows)", _calibration(calibration), "text"),
            ("held-out source", (used.heldout or {}).get("kind"), "text"),
            ("excluded: forget set images", excluded.forget_set, "number"),
            ("excluded: calibration rows (not judged)", excluded.calibration_rows, "number"),
            ("excluded: unreadable at validation", excluded.decode_failures, "number"),
            ("excluded: unreadable in the run", excluded.run_decode_failures, "number"),
            (
                "excluded: held-out rows that are training images",
                excluded.heldout_dropped_as_training_images,
                "number",
            ),
        ),
        head=["validation set", "n", "rows digest"],
        digests=(2,),
        rows=[[set_title(s.name or ""), s.n, s.digest] for s in used.validation_sets],
    )
    choice = method.automatic_choice
    method_element = Element(
        "Method",
        _facts(
            ("method", method.name, "code"),
            ("settings", _pairs(method.settings, "="), "code"),
            ("seed", method.seed, "number"),
            ("automatic choice", choice.chosen if choice else None, "code"),
            ("device", method.device, "text"),
            ("software", _pairs(method.software, " "), "text"),
            ("record", method.record, "code"),
            ("note", method.note, "text"),
        ),
    )
    criteria = evaluation.criteria or {}
    gates = Element(
        "Performance evaluation",
        _facts(
            ("acceptance criteria", criteria.get("path"), "code"),
            ("criteria sha256", criteria.get("sha256"), "digest"),
            ("verdict", (evaluation.verdict or "").upper(), "text"),
            ("summary", evaluation.summary, "text"),
            ("validation report sha256", (evaluation.report or {}).get("sha256"), "digest"),
        ),
        head=["gate", "metric", "set", "rule", "measured", "result"],
        rows=[_gate_row(g) for g in evaluation.gates],
        states=["pass" if g.passed else "fail" for g in evaluation.gates],
    )
    bundle = update.bundle
    schemes = [f"{s.name}: {s.sign}  /  {s.verify}" for s in update.schemes]
    update_element = Element(
        "Update procedure",
        _facts(
            ("deliverable", update.deliverable, "text"),
            ("bundle digest (files validated)", bundle.sha256 if bundle else None, "digest"),
            ("files validated", len(bundle.files) if bundle else None, "number"),
            ("signature", update.signature.get("file"), "code"),
            ("signature tool", update.signature.get("tool"), "text"),
            ("signature schemes", "; ".join(schemes), "code"),
        ),
        head=["file", "sha256"] if bundle and bundle.files else [],
        digests=(1,),
        rows=[[name, digest] for name, digest in (bundle.files if bundle else {}).items()],
        items=list(update.steps),
        items_kind="code",
    )
    impact_element = Element(
        "Impact assessment",
        _facts(
            ("target met (run's estimate)", _met(impact.target), "text"),
            ("distance to reference", (impact.reference or {}).get("distance"), "number"),
        ),
        head=["set", "n", "original", "revised", "change"],
        rows=[_accuracy_row(a) for a in impact.accuracy],
        items=list(impact.warnings),
    )
    view = ChangeControlView(
        state="pass" if record.verdict == "pass" else "fail",
        framework=record.framework,
        summary=description.summary,
        elements=[what, data_element, method_element, gates, update_element, impact_element],
    )
    return Section(ANCHOR, TITLE, view)


def _gate_row(gate: GateResult) -> list[Any]:
    where = _where(gate.set, gate.group)
    result = "PASS" if gate.passed else "FAIL"
    return [gate.name or "", gate.metric or "", where, gate.rule or "", num(gate.value), result]


def _accuracy_row(entry: AccuracyChange) -> list[Any]:
    before, after = num(entry.original), num(entry.revised)
    return [_where(entry.set, entry.group), entry.n, before, after, num(entry.change, signed=True)]


def _sha(model: Any) -> str | None:
    return model.sha256 if model is not None else None


def _calibration(calibration: Mapping[str, Any]) -> str | None:
    rows = calibration.get("rows") or {}
    if not calibration:
        return None
    counts = ", ".join(f"{k} {v}" for k, v in rows.items())
    return f"{num(calibration.get('fraction'))} of held-out ({counts})" if counts else None


def _met(target: Mapping[str, Any] | None) -> str | None:
    if not target or target.get("met") is None:
        return None
    return "yes" if target["met"] else "no"
