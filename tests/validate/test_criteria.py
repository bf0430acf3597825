"""Acceptance criteria: parsing, the checks made before any image is decoded, and verdicts."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from revise.errors import UsageError
from revise.validate.criteria import load_criteria, parse_criteria
from revise.validate.gate_checks import check_inputs
from revise.validate.gate_metrics import METRICS
from revise.validate.metrics import Estimate
from revise.validate.verdicts import judge

GOOD = """
gates:
  - name: retired device forgotten
    metric: accuracy
    set: heldout_forget
    at_most: 0.2
  - metric: accuracy
    set: heldout_retain
    per: manufacturer_model_name
    at_least: original - 0.02
    judge: interval
  - metric: loss_mia
    between: [0.45, 0.55]
  - metric: agreement
    where: {label: "digit 3"}
    at_least: 0.9
"""

CLASSES = [f"digit {i}" for i in range(10)]


def sets() -> dict[str, pd.DataFrame]:
    def rows(devices, labels):
        return pd.DataFrame({"device": devices, "label": labels, "site": "A"})

    return {
        "forget": rows(["Old"] * 20, list(range(10)) * 2),
        "retain": rows(["New"] * 20, list(range(10)) * 2),
        "heldout_forget": rows(["Old"] * 10, list(range(10))),
        "heldout_retain": rows(["New", "Newer"] * 5, list(range(10))),
    }


def test_a_good_file_parses_with_defaults_aliases_and_its_digest(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text(GOOD)
    criteria = load_criteria(path)
    assert criteria.sha256 == hashlib.sha256(GOOD.encode()).hexdigest()
    first, per_device, mia, agreement = criteria.gates
    assert first.name == "retired device forgotten" and first.rule == "at_most 0.2"
    assert per_device.per == "device"  # the alias resolves to the manifest column
    assert str(per_device.thresholds[0]) == "original - 0.02"
    assert per_device.name == "accuracy on heldout_retain, per device at_least original - 0.02"
    assert mia.set is None and mia.rule == "between 0.45 and 0.55"
    assert agreement.set == "heldout_retain"  # the metric's default set
    check_inputs(criteria, sets(), have=["original"], class_names=CLASSES)


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ("metric: acuracy\n    set: forget\n    at_most: 0.1", "did you mean accuracy"),
        ("metric: accuracy\n    set: forgot\n    at_most: 0.1", "must be one of"),
        ("metric: accuracy\n    set: forget\n    at_mots: 0.1", "unknown key 'at_mots'"),
        ("metric: accuracy\n    set: forget\n    at_most: 0.1\n    at_least: 0", "exactly one"),
        ("metric: loss_mia\n    between: [0.45]", r"`between:` must have 2 values, not \[0\.45\]"),
        ("metric: loss_mia\n    set: forget\n    at_most: 0.6", "whole run"),
        ("metric: loss_mia\n    at_most: 0.6\n    judge: interval", "no interval"),
        ("metric: accuracy_change\n    set: forget\n    at_least: original - 0.1", "cannot be"),
        ("metric: accuracy\n    set: forget\n    at_least: originl - 0.1", "neither a number"),
        ("metric: accuracy\n    set: forget\n    per: path\n    at_least: 0.1", "patients"),
    ],
)
def test_mistakes_are_rejected_naming_the_gate(gate, message):
    text = f"gates:\n  - metric: accuracy\n    set: forget\n    at_most: 1\n  - {gate}\n"
    with pytest.raises(UsageError, match=message) as err:
        parse_criteria(text, source="gates.yaml")
    assert "gates.yaml, gate 2" in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gates: [", r"^g\.yaml is not valid YAML: .* at line 1, column 9$"),
        ("", r"^g\.yaml: expected a mapping with a list `gates:`, found an empty file"),
        ("gates: []", r"^g\.yaml: `gates:` must have at least 1 value, not \[\]$"),
        ("gates: {metric: accuracy}", r"^g\.yaml: `gates:` must be a list, not \{"),
        ("- metric: accuracy", r"^g\.yaml: expected a mapping .*, found a YAML list"),
        ("gates: [1]\nextra: 2", r"^g\.yaml: unknown key 'extra'$"),
    ],
    ids=["bad YAML", "empty file", "no gates", "gates not a list", "a bare list", "extra key"],
)
def test_not_yaml_or_no_gates_is_rejected(text, message):
    with pytest.raises(UsageError, match=message):
        parse_criteria(text, source="g.yaml")


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ("metric: distance_to_reference\n    at_most: 0.1", "pass reference RETRAINED_MODEL"),
        (
            "metric: loss_mia\n    between: [reference - 0.05, reference + 0.05]",
            "pass reference RETRAINED_MODEL",
        ),
        ("metric: parity_label_agreement\n    at_least: 1", "pass onnx FILE"),
        (
            "metric: accuracy\n    set: forget\n    per: scanner\n    at_least: 0",
            "column 'scanner'",
        ),
        (
            "metric: accuracy\n    set: forget\n    where: {device: New}\n    at_least: 0",
            "no image",
        ),
        (
            "metric: accuracy\n    set: forget\n    where: {label: digit 11}\n    at_least: 0",
            "no image",
        ),
    ],
)
def test_gates_the_inputs_cannot_answer_are_rejected_before_the_run(gate, message):
    criteria = parse_criteria(f"gates:\n  - {gate}\n", source="g.yaml")
    with pytest.raises(UsageError, match=message):
        check_inputs(criteria, sets(), have=["original"], class_names=CLASSES)


def test_an_empty_set_is_rejected_before_the_run():
    empty = {**sets(), "heldout_forget": pd.DataFrame({"device": [], "label": []})}
    criteria = parse_criteria(
        "gates:\n  - metric: accuracy\n    set: heldout_forget\n    at_most: 0"
    )
    with pytest.raises(UsageError, match="heldout_forget is empty"):
        check_inputs(criteria, empty, have=["original"], class_names=CLASSES)
    mia = parse_criteria("gates:\n  - metric: mia_efficacy\n    at_least: 0.5")
    no_test = {**sets(), "heldout_retain": pd.DataFrame({"device": [], "label": []})}
    with pytest.raises(UsageError, match=r"needs at least 10 image\(s\) in heldout_retain"):
        check_inputs(mia, no_test, have=["original"], class_names=CLASSES)


def gate(text: str):
    return parse_criteria(f"gates:\n  - {text}\n").gates[0]


def test_verdicts_on_estimates_intervals_and_relative_thresholds():
    est = Estimate(324, 0.961, (0.94, 0.98))
    at_least = gate("metric: accuracy\n    set: forget\n    at_least: original - 0.02")
    ok = judge(at_least, est, {"original": 0.972})
    assert ok.passed and ok.judged_on == "estimate"
    assert ok.margin == pytest.approx(0.961 - 0.952)
    strict = gate(
        "metric: accuracy\n    set: forget\n    at_least: original - 0.02\n    judge: interval"
    )
    failed = judge(strict, est, {"original": 0.972})
    assert not failed.passed and failed.judged_on == "lower_bound"
    assert failed.margin == pytest.approx(0.94 - 0.952)
    assert failed.message() == (
        "lower bound 0.94 misses at least 0.952 [original - 0.02; original = 0.972] "
        "by 0.012 on 324 images"
    )
    at_most = gate("metric: accuracy\n    set: forget\n    at_most: 0.97\n    judge: interval")
    assert judge(at_most, est, {}).judged_on == "upper_bound"
    assert not judge(at_most, est, {}).passed  # 0.98 > 0.97 although 0.961 <= 0.97
    band = gate("metric: loss_mia\n    between: [reference - 0.05, reference + 0.05]")
    inside = judge(band, Estimate(220, 0.49, None), {"reference": 0.47})
    assert inside.passed and inside.margin == pytest.approx(0.03)
    outside = judge(band, Estimate(220, 0.60, None), {"reference": 0.47})
    assert not outside.passed and outside.margin == pytest.approx(-0.08)
    assert outside.as_dict()["threshold"] == [pytest.approx(0.42), pytest.approx(0.52)]


def test_every_problem_of_the_criteria_is_reported_at_once():
    empty = {**sets(), "heldout_forget": pd.DataFrame({"device": [], "label": []})}
    criteria = parse_criteria(
        "gates:\n"
        "  - {metric: distance_to_reference, at_most: 0.1}\n"
        "  - {metric: accuracy, set: heldout_forget, at_most: 0.5}\n"
        "  - {metric: accuracy, set: retain, per: devise, at_least: 0.5}\n",
        source="g.yaml",
    )
    with pytest.raises(UsageError) as err:
        check_inputs(criteria, empty, have=["original"], class_names=CLASSES)
    message = str(err.value)
    assert message.startswith("g.yaml: 3 problems: (1) g.yaml, gate 1")
    assert "needs the reference model (pass reference RETRAINED_MODEL)" in message
    assert "(2) g.yaml, gate 2" in message and "heldout_forget is empty" in message
    assert "(3) g.yaml, gate 3" in message and "did you mean device?" in message


def test_every_mistake_of_every_gate_is_reported_at_once_naming_gate_and_key():
    text = (
        "gates:\n"
        "  - {metric: acuracy, set: forgot, at_mots: 0.1}\n"
        "  - {metric: accuracy, set: forget, at_most: 1.5}\n"
        "  - {set: forget, at_least: 0.1}\n"
        "  - 5\n"
    )
    with pytest.raises(UsageError) as err:
        parse_criteria(text, source="g.yaml")
    metrics = ", ".join(METRICS)
    assert str(err.value) == (
        "g.yaml: 6 problems: "
        f"(1) g.yaml, gate 1: `metric:` must be one of {metrics}, not 'acuracy' "
        "(did you mean accuracy, accuracy_change?); "
        "(2) g.yaml, gate 1: `set:` must be one of forget, retain, heldout_forget, "
        "heldout_retain, not 'forgot' (did you mean forget?); "
        "(3) g.yaml, gate 1: unknown key 'at_mots' (did you mean at_most?); "
        "(4) g.yaml, gate 2: `at_most:` 1.5 is outside the range of accuracy, [0, 1]: the gate "
        "could never fail; "
        f"(5) g.yaml, gate 3: missing `metric:` (what is measured: {metrics}); "
        "(6) g.yaml, gate 4: a gate is a mapping with `metric:` and one of "
        "at_most/at_least/between"
    )


def test_the_ceiling_auto_aims_under_is_the_lowest_fixed_bound_on_the_groups_accuracy():
    from revise.validate.aims import forget_ceiling

    ceiling = forget_ceiling(parse_criteria(GOOD, source="gates.yaml"))
    assert (
        ceiling.value == 0.2 and ceiling.source == "gate 'retired device forgotten' of gates.yaml"
    )
    both = GOOD + "  - {name: tight, metric: accuracy, set: heldout_forget, between: [0, 0.15]}\n"
    assert forget_ceiling(parse_criteria(both)).value == 0.15
    # bounds that are not one number on the whole group aim at nothing
    others = """
gates:
  - {metric: accuracy, set: heldout_forget, at_most: original - 0.3}
  - {metric: accuracy, set: heldout_forget, per: device, at_most: 0.1}
  - {metric: accuracy, set: heldout_forget, where: {device: X}, at_most: 0.1}
  - {metric: accuracy, set: forget, at_most: 0.1}
  - {metric: accuracy, set: heldout_forget, at_least: 0.1}
  - {metric: agreement, set: heldout_forget, at_most: 0.1}
"""
    assert forget_ceiling(parse_criteria(others)) is None


def test_the_retention_the_criteria_let_auto_lose_comes_with_the_ceiling():
    from revise.validate.aims import forget_ceiling, retention_slack

    # GOOD: heldout_retain per device at least original - 0.02: a slack of 0.02
    assert forget_ceiling(parse_criteria(GOOD)).slack == pytest.approx(0.02)
    change = GOOD + "  - {metric: accuracy_change, set: heldout_retain, at_least: -0.01}\n"
    assert retention_slack(parse_criteria(change)) == pytest.approx(0.01)
    # none of these bounds the retention lost outside the group
    loose = """
gates:
  - {metric: accuracy, set: heldout_forget, at_most: 0.5}
  - {metric: accuracy, set: heldout_retain, at_least: 0.9}
  - {metric: accuracy, set: heldout_retain, at_least: reference - 0.01}
  - {metric: accuracy, set: heldout_retain, where: {device: X}, at_least: original - 0.01}
  - {metric: accuracy_change, set: forget, at_least: -0.01}
"""
    ceiling = forget_ceiling(parse_criteria(loose))
    assert ceiling.value == 0.5 and ceiling.slack is None
