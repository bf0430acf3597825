"""Gates checked against a run's inputs before anything is decoded: a model a gate needs that
was not given, a column or group its set lacks, an empty set - every problem at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from revise.registry import did_you_mean
from revise.validate.criteria import Criteria, Gate, _refuse, _with_hint
from revise.validate.gate_metrics import METRICS
from revise.validate.verdicts import where_mask


def check_models(criteria: Criteria, have: Sequence[str]) -> None:
    """Reject gates that need a model not given (``have``: "original", "reference", "onnx")."""
    _refuse(criteria.source, _model_problems(criteria, have))


def check_inputs(
    criteria: Criteria,
    sets: Mapping[str, pd.DataFrame],
    *,
    have: Sequence[str],
    class_names: Sequence[str],
) -> None:
    """Reject gates the inputs cannot answer: a missing reference/ONNX model, an unknown column,
    a group absent from its set, an empty set. ``sets`` are the manifest rows of each set.
    Every problem is reported at once."""
    problems = _model_problems(criteria, have) + _set_problems(criteria, sets, class_names)
    _refuse(criteria.source, problems)


def check_sets(
    criteria: Criteria, sets: Mapping[str, pd.DataFrame], *, class_names: Sequence[str]
) -> None:
    """The part of :func:`check_inputs` about the rows of each set (run again after decoding,
    which can drop unreadable images)."""
    _refuse(criteria.source, _set_problems(criteria, sets, class_names))


def _model_problems(criteria: Criteria, have: Sequence[str]) -> list[str]:
    problems = []
    for number, gate in enumerate(criteria.gates, 1):
        for need in sorted(({METRICS[gate.metric].requires} | gate.baselines()) - {None}):
            if need != "original" and need not in have:
                flag = "{reference} RETRAINED_MODEL" if need == "reference" else "{onnx} FILE"
                hint = f"pass {flag}"
                if need == "int8":  # a bundle's variant: model.int8.onnx
                    hint = "validate a bundle that ships model.int8.onnx: revise export --int8"
                problems.append(
                    _with_hint(
                        f"{criteria.source}, gate {number} ({gate.name}) needs the {need} model",
                        hint,
                    )
                )
    return problems


def _set_problems(
    criteria: Criteria, sets: Mapping[str, pd.DataFrame], class_names: Sequence[str]
) -> list[str]:
    problems = []
    for number, gate in enumerate(criteria.gates, 1):
        label = f"{criteria.source}, gate {number} ({gate.name})"
        problems += _gate_set_problems(label, gate, sets, class_names)
    return problems


def _gate_set_problems(
    label: str, gate: Gate, sets: Mapping[str, pd.DataFrame], class_names: Sequence[str]
) -> list[str]:
    spec = METRICS[gate.metric]
    problems = []
    for alternatives in spec.needs:
        names = alternatives.split("|")
        if sum(len(sets.get(s, ())) for s in names) < spec.min_images:  # '|': pooled
            have_n = " + ".join(f"{len(sets.get(s, ()))} in {s}" for s in names)
            problems.append(
                f"{label}: {gate.metric} needs at least {spec.min_images} image(s) in "
                f"{alternatives.replace('|', ' or ')}; this data has {have_n}"
            )
    if gate.set is None:
        return problems
    rows = sets.get(gate.set)
    if rows is None or rows.empty:
        held = gate.set.startswith("heldout")
        hint = "held-out rows have split == heldout in the labels; or pass {heldout}"
        message = f"{label}: the set {gate.set} is empty for this data and selection"
        return [*problems, _with_hint(message, hint if held else None)]
    for column in [c for c, _ in gate.where] + ([gate.per] if gate.per else []):
        if column not in rows.columns:
            message = f"{label}: no manifest column {column!r}"
            problems.append(_with_hint(message, did_you_mean(column, list(rows.columns))))
    if not problems and not where_mask(gate, rows, class_names).any():
        wanted = ", ".join(f"{c}={v}" for c, v in gate.where)
        problems.append(f"{label}: no image of {gate.set} has {wanted}")
    return problems
