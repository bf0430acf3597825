"""Inputs that made revise run for minutes, or forever: they now finish or fail within a bound.

Probes kept (what an attacker or careless user tried, and what revise must do):
* `revise select M 'device ~= "(a|a)*b"'` on 40-character values (and other shapes that make a
  backtracking engine take exponential time: ``(a+)+b``, ``(a|aa)*c``, ``(.*a){20}``): the
  selection is answered at once, correctly (``~=`` runs on RE2, which is linear in the text);
* ``~=`` with a backreference or a lookaround (RE2 cannot run them): exit 2, one line naming
  the construct, that revise uses RE2, and how to rewrite the pattern; nothing on stderr from
  the regex engine itself;
* a DICOMweb server that sends its answer one byte at a time, each byte well within the read
  timeout (in the headers, or in the body): revise gives up near ``--timeout`` seconds after the
  request began, with one DataError saying no answer, or no whole answer, came in time;
* a gate threshold ``original`` + 200,000 spaces + ``x``: refused at once, not after minutes;
* `--timeout inf` (and nan, 0, -1, 1e300): a usage error naming the timeout, its bounds and the
  fix, exit 2, not ``internal error`` (inf used to overflow inside the HTTP library).
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from revise.data.dicomweb import index_dicomweb
from revise.data.select import mask, parse
from revise.errors import DataError, SelectionError, UsageError

SLOW_PATTERNS = ("(a|a)*b", "(a+)+b", "(a|aa)*c", "(.*a){20}x")


def _manifest(path: Path, devices: list[str]) -> Path:
    rows = {
        "sample_key": [f"s-{i:016x}" for i in range(len(devices))],
        "path": [f"/site/img{i}.dcm" for i in range(len(devices))],
        "device": devices,
    }
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------------------------
# Regular expressions: linear time, whatever the pattern
# --------------------------------------------------------------------------------------------


def test_backtracking_patterns_on_long_values_finish_at_once(tmp_path):
    """In a child process with a time limit: a backtracking engine would hold the interpreter
    for hours (the test could not even time itself out in-process)."""
    manifest = _manifest(tmp_path / "m.csv", ["a" * 40, "a" * 39 + "b", "a" * 40 + "c"])
    selection = " or ".join(f'device ~= "{p}"' for p in SLOW_PATTERNS)
    command = [sys.executable, "-m", "revise.cli", "select", str(manifest), selection]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, env=os.environ)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.endswith(" selects 2 of 3 rows (no row has a label yet)"), done.stdout
    assert time.monotonic() - start < 150


@pytest.mark.parametrize(
    ("pattern", "value", "hit"),
    [
        ("(a|a)*b", "a" * 39 + "b", True),
        ("(a|a)*b", "aaaaa", False),
        ("(a+)+$", "a" * 40, True),  # refused by the old heuristic guard; a valid pattern
        (r"^(Cirrus|Spectralis)( \d+)?$", "Cirrus 800", True),
        (r"^(Cirrus|Spectralis)( \d+)?$", "Cirrus 800 FA", False),
        ("(?i)^cirrus", "CIRRUS 800", True),
        ("x" * 300, "x" * 300, True),  # long patterns are fine: RE2 bounds its memory itself
    ],
)
def test_regex_answers_are_right(pattern, value, hit):
    df = pd.DataFrame({"sample_key": ["s-1"], "path": ["/p"], "device": [value]})
    assert mask(df, f'device ~= "{pattern}"').tolist() == [hit]


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        (r"(a)\1", "backreference"),
        (r"(?P<x>a)(?P=x)", "backreference"),
        ("Cirrus(?= 800)", "lookahead"),
        ("Cirrus(?! 800)", "lookahead"),
        ("(?<=Acme )DX", "lookbehind"),
        ("(?<!Acme )DX", "lookbehind"),
    ],
)
def test_patterns_re2_cannot_run_are_refused_naming_the_construct(pattern, construct):
    with pytest.raises(SelectionError) as err:
        parse(f'device ~= "{pattern}"')
    text = str(err.value)
    assert f"{construct}s are not supported" in text and "RE2" in text, text
    assert "^" in text.splitlines()[-1]  # the caret points at the pattern


def test_cli_refuses_a_backreference_on_one_line(cli, tmp_path):
    manifest = _manifest(tmp_path / "m.csv", ["aa"])
    result = cli("select", manifest, r'device ~= "(a)\1"', code=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # the caret message is three lines; nothing else (e.g. RE2's own log line) is printed
    assert len(lines) == 3 and lines[0].startswith("error: selection: "), cli.describe(result)
    assert "backreferences are not supported" in lines[0] and "RE2" in lines[0]
    assert "rewrite" in result.stderr


def test_a_long_relative_threshold_is_judged_in_linear_time():
    """A gate threshold of 'original' + 200,000 spaces + 'x' took minutes (a ``\\s*`` tried at
    every start position): it is refused at once."""
    from revise.validate.criteria import parse_criteria

    text = "gates:\n  - {metric: accuracy, set: retain, at_least: 'original%sx'}\n" % (
        " " * 200_000
    )
    start = time.monotonic()
    with pytest.raises(UsageError, match="neither a number nor"):
        parse_criteria(text)
    assert time.monotonic() - start < 5


# --------------------------------------------------------------------------------------------
# DICOMweb: a total deadline per request
# --------------------------------------------------------------------------------------------

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 4096\r\n"
    b"X-Padding: " + b"x" * 64 + b"\r\n\r\n"
)


@contextlib.contextmanager
def trickling_server(phase: str, *, every: float = 0.25, lasts: float = 12.0) -> Iterator[str]:
    """A DICOMweb root on 127.0.0.1 whose one thread answers one connection a byte every
    ``every`` seconds (in the headers, or after them in the body) and stops by itself after
    ``lasts`` seconds, or as soon as the client goes away."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(lasts)

    def serve() -> None:
        end = time.monotonic() + lasts
        with contextlib.suppress(OSError), listener.accept()[0] as conn:
            conn.recv(65536)  # the request
            drip = HEAD
            if phase == "body":
                conn.sendall(HEAD)
                drip = b"[" + b" " * 4095
            for byte in drip:
                if time.monotonic() > end:
                    break
                conn.sendall(bytes([byte]))
                time.sleep(every)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
    finally:
        thread.join(lasts + 5)
        listener.close()
        assert not thread.is_alive()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.mark.parametrize(
    ("phase", "problem"),
    [
        ("headers", "accepted the connection but sent no answer"),
        ("body", "did not send its whole answer"),
    ],
)
def test_a_server_that_trickles_its_answer_is_given_up_at_the_deadline(tmp_path, phase, problem):
    with trickling_server(phase) as url:
        start = time.monotonic()
        with pytest.raises(DataError) as err:
            index_dicomweb(url, cache_dir=tmp_path, timeout=2.0)
        took = time.monotonic() - start
    assert 1.9 < took < 5, took
    text = str(err.value)
    assert f"DICOMweb server {url} {problem} within 2 s" in text, text
    assert (
        "(search for series)" in text and "raise timeout" in text
    )  # the keyword; the CLI says --timeout


@pytest.mark.parametrize("timeout", [math.inf, math.nan, 0, -1, 1e300])
def test_a_timeout_that_is_not_a_positive_finite_number_is_a_usage_error(tmp_path, timeout):
    url = "http://127.0.0.1:9/dicom-web"  # never asked: the check comes first
    with pytest.raises(UsageError) as err:
        index_dicomweb(url, cache_dir=tmp_path, timeout=timeout)
    assert str(err.value) == (
        "timeout must be a positive number of seconds, at most 86400 (a day), "
        f"not {timeout!r} (e.g. timeout 30)"
    )


def test_cli_timeout_inf_exits_2_on_one_line(cli, demo_site, tmp_path):
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("gates:\n  - {metric: accuracy, set: heldout_retain, at_least: 0.0}\n")
    result = cli(
        "validate", demo_site.model, "--original", demo_site.model, "--data", demo_site.manifest,
        "--forget", cli.forget, "--criteria", criteria, "-o", tmp_path / "report",
        "--heldout", "http://127.0.0.1:9/dicom-web", "--timeout", "inf", "--device", "cpu",
        code=2,
    )  # fmt: skip
    line = cli.one_line_error(result)
    assert "timeout must be a positive number of seconds, at most 86400 (a day), not inf" in line
    assert not (tmp_path / "report").exists()
