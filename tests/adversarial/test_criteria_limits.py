"""Acceptance criteria a careless or hostile author can write (issue 13, classes 8 and 10).

Probes kept here, each refused with a usage error (exit 2) naming the gate and the field:
* thresholds that are not finite numbers: `.nan`, `nan`, `.inf`, `-.inf`, `1e999`, an integer
  too large for a float, `between: [0.3, .nan]` (NaN and infinity made gates that never pass,
  or never fail);
* `between:` reversed, absolute or relative to the same model (a gate that can never pass);
* thresholds outside what the metric can take (accuracy above 1 or below 0, a negative
  distance) and offsets wider than that range (`original - 2`): gates that cannot fail, or pass;
* relative thresholds that are not numbers: `original + nan`, `original - .`, `original - 1e999`
  (the second crashed with an internal error); a boolean threshold; a metric given as a list or
  a mapping (crashed);
* a YAML syntax error: one line, with the line and column; an integer of 5000 digits (PyYAML's
  int() raised ValueError: an internal error);
* a criteria file that is not UTF-8 (Latin-1, UTF-16): one line naming the file and the fix,
  exit 2, not `internal error` exit 1. A UTF-8 file with a byte-order mark still loads.
* a FIFO with no writer (blocked for ever), /dev/zero (read for ever) or a 2 MiB file as the
  criteria file: refused without reading it (whole).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clirunner import describe, invoke
from export_site import validate_args

from revise.errors import UsageError
from revise.validate.criteria import load_criteria, parse_criteria

ACC = "metric: accuracy, set: heldout_forget"
BAD_GATES = {  # case: (the gate, what the message must say)
    "nan": (f"{{{ACC}, at_least: .nan}}", "`at_least:` nan is not a finite number"),
    "nan text": (f"{{{ACC}, at_most: nan}}", "`at_most:` 'nan' is not a finite number"),
    "inf": (f"{{{ACC}, at_most: .inf}}", "`at_most:` inf is not a finite number"),
    "-inf": (f"{{{ACC}, at_least: -.inf}}", "`at_least:` -inf is not a finite number"),
    "1e999": (f"{{{ACC}, at_most: 1e999}}", "`at_most:` '1e999' is not a finite number"),
    "huge integer": (f"{{{ACC}, at_most: {'9' * 400}}}", "`at_most:` 999"),
    "between nan": ("{metric: loss_mia, between: [0.3, .nan]}", "`between:` nan is not a finite"),
    "between reversed": (
        "{metric: loss_mia, between: [0.7, 0.3]}",
        "`between:` [0.7, 0.3] is reversed",
    ),
    "relative between reversed": (
        "{metric: loss_mia, between: [original + 0.1, original - 0.1]}",
        "`between:` [original + 0.1, original - 0.1] is reversed",
    ),
    "above the range": (
        f"{{{ACC}, at_most: 1.5}}",
        "`at_most:` 1.5 is outside the range of accuracy, [0, 1]: the gate could never fail",
    ),
    "below the range": (
        f"{{{ACC}, at_least: -0.1}}",
        "`at_least:` -0.1 is outside the range of accuracy, [0, 1]: the gate could never fail",
    ),
    "negative distance": (
        "{metric: distance_to_reference, at_most: -0.1}",
        "`at_most:` -0.1 is outside the range of distance_to_reference, [0, 1.414]: the "
        "gate could never pass",
    ),
    "offset too wide": (
        f"{{{ACC}, at_least: original - 2}}",
        "`at_least:` 'original - 2': the offset 2 is wider than the range of accuracy, [0, 1]",
    ),
    "original + nan": (f"{{{ACC}, at_least: original + nan}}", "`at_least:` 'original + nan'"),
    "original - .": (f"{{{ACC}, at_least: original - .}}", "`at_least:` 'original - .'"),
    "original - 1e999": (
        f"{{{ACC}, at_least: original - 1e999}}",
        "`at_least:` 'original - 1e999': the offset inf is not a finite number",
    ),
    "boolean": (f"{{{ACC}, at_most: true}}", "`at_most:` True is not a number"),
    "metric list": ("{metric: [accuracy], set: forget, at_most: 0.5}", "`metric:` must be one of"),
    "metric mapping": ("{metric: {a: 1}, at_most: 0.5}", "`metric:` must be one of"),
}


@pytest.mark.parametrize("case", BAD_GATES)
def test_gates_that_cannot_judge_are_refused(case):
    gate, message = BAD_GATES[case]
    text = f"gates:\n  - {{{ACC}, at_most: 0.5}}\n  - {gate}\n"
    with pytest.raises(UsageError) as err:
        parse_criteria(text, source="g.yaml")
    assert str(err.value).startswith("g.yaml, gate 2: "), str(err.value)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_yaml_syntax_error_is_one_line_with_its_place():
    with pytest.raises(UsageError) as err:
        parse_criteria("gates:\n  - {metric: accuracy, at_most: [0.5}\n", source="g.yaml")
    message = str(err.value)
    assert message.startswith("g.yaml is not valid YAML: ") and "\n" not in message
    assert "line 2, column" in message


def test_a_number_yaml_cannot_convert_is_a_usage_error():
    """An integer of 5000 digits: PyYAML's int() raises ValueError (Python's digit limit)."""
    with pytest.raises(UsageError, match=r"^g\.yaml is not valid YAML: .*5000 digits"):
        parse_criteria(
            f"gates:\n  - {{metric: loss_mia, at_most: {'9' * 5000}}}\n", source="g.yaml"
        )


def _one_line_error(result, code: int = 2) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code and len(lines) == 1, describe(result)
    assert lines[0].startswith("error: ") and "internal error" not in lines[0]
    return lines[0]


@pytest.mark.parametrize(("encoding", "line"), [("latin-1", "line 2"), ("utf-16", "line 1")])
def test_a_criteria_file_that_is_not_utf8(export_site, tmp_path, encoding, line):
    criteria = tmp_path / "gates.yaml"
    criteria.write_bytes("gates:\n  - name: forgotten, é\n".encode(encoding))
    with pytest.raises(UsageError, match="save it as UTF-8"):
        load_criteria(criteria)
    model = export_site.models[0]
    out = tmp_path / "report"
    result = invoke(*validate_args(model, export_site.manifest, model, criteria, out))
    said = _one_line_error(result)
    assert said == f"error: criteria file {criteria} {line} is not UTF-8 text (save it as UTF-8)"
    assert not out.exists()


def test_a_utf8_file_with_a_byte_order_mark_loads(tmp_path):
    criteria = tmp_path / "gates.yaml"
    criteria.write_bytes(
        "gates:\n  - {metric: loss_mia, between: [0.3, 0.7]}\n".encode("utf-8-sig")
    )
    assert load_criteria(criteria).gates[0].rule == "between 0.3 and 0.7"


def test_a_fifo_a_device_or_a_huge_file_is_refused_without_reading_it(tmp_path):
    import os

    fifo = tmp_path / "gates.fifo"
    os.mkfifo(fifo)  # no writer: reading it would block for ever
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(UsageError, match=rf"^criteria file {path} is not a regular file"):
            load_criteria(path)
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (2 << 20))
    with pytest.raises(UsageError, match=r"is over 1 MiB: not a file of gates"):
        load_criteria(huge)


def test_a_nan_threshold_stops_validate_before_any_work(export_site, tmp_path):
    criteria = tmp_path / "gates.yaml"
    criteria.write_text(f"gates:\n  - {{{ACC}, at_least: .nan}}\n")
    model = export_site.models[0]
    out = tmp_path / "report"
    result = invoke(*validate_args(model, export_site.manifest, model, criteria, out))
    line = _one_line_error(result)
    assert line.startswith(f"error: {criteria}, gate 1: `at_least:` nan is not a finite number")
    assert not out.exists()
