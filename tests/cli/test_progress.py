"""Progress of `revise unlearn` when stderr is not a terminal (a log file, CI, nohup): plain
lines at a bounded rate, never control characters, never on stdout, never from other ranks."""

from __future__ import annotations

import json
import re

import click

from revise.cli import _common
from revise.cli._common import PlainProgress, step_progress

DURATION = r"(?:\d+ s|\d+ min|\d+ h \d\d min)"
LINE = re.compile(
    rf"^unlearn psg: step (\d+) of (\d+) \((\d+)%\), {DURATION} elapsed(, about {DURATION} left)?$"
)


class Clock:
    """Seconds that a test moves on by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_loop(progress: PlainProgress, clock: Clock, steps: range, total: int, step_s: float):
    for done in steps:
        clock.now += step_s
        progress(done, total)


def test_lines_come_at_most_every_interval_plus_the_first_and_the_last_step():
    clock, lines = Clock(), []
    progress = PlainProgress("unlearn psg", lines.append, every_s=30, clock=clock)
    run_loop(progress, clock, range(1, 201), 200, step_s=1.0)  # one step a second
    assert lines[0] == "unlearn psg: step 1 of 200 (0%), 1 s elapsed"
    # 30 s after the first line: 169 steps left at 1 s a step
    assert lines[1] == "unlearn psg: step 31 of 200 (15%), 31 s elapsed, about 3 min left"
    steps = [int(re.search(r"step (\d+)", line)[1]) for line in lines]
    assert steps == [1, 31, 61, 91, 121, 151, 181, 200]
    assert lines[-1] == "unlearn psg: step 200 of 200 (100%), 3 min elapsed"


def test_a_resumed_or_second_loop_starts_its_own_pace():
    clock, lines = Clock(), []
    progress = PlainProgress("unlearn psg", lines.append, every_s=60, clock=clock)
    clock.now = 5.0
    progress(600, 1000)  # resumed from a checkpoint: no step ran yet, no pace known
    assert lines == ["unlearn psg: step 600 of 1,000 (60%), 5 s elapsed"]
    run_loop(progress, clock, range(601, 1001), 1000, step_s=0.5)
    assert lines[1] == "unlearn psg: step 720 of 1,000 (72%), 65 s elapsed, about 2 min left"
    assert lines[-1] == "unlearn psg: step 1,000 of 1,000 (100%), 3 min elapsed"
    before = len(lines)
    run_loop(progress, clock, range(1, 4), 3, step_s=3000.0)  # a second, slow loop
    assert lines[before:] == [
        "unlearn psg: step 1 of 3 (33%), 53 min elapsed",
        "unlearn psg: step 2 of 3 (66%), 1 h 43 min elapsed, about 50 min left",
        "unlearn psg: step 3 of 3 (100%), 2 h 33 min elapsed",
    ]


def test_quiet_and_other_ranks_print_nothing(capsys, monkeypatch):
    ctx = click.Context(click.Command("unlearn"), obj={"quiet": False})
    with step_progress(ctx, "unlearn psg") as progress:  # pytest's stderr is no terminal
        progress(1, 1)
    assert capsys.readouterr().err == "unlearn psg: step 1 of 1 (100%), 0 s elapsed\n"
    with step_progress(ctx, "unlearn psg", quiet=True) as progress:
        progress(1, 1)
    monkeypatch.setenv("RANK", "1")
    with step_progress(ctx, "unlearn psg") as progress:
        progress(1, 1)
    assert capsys.readouterr() == ("", "")


def progress_lines(stderr: str) -> list[re.Match[str]]:
    matches = [LINE.match(line) for line in stderr.splitlines() if line.startswith("unlearn ")]
    assert matches and all(matches), stderr
    return matches  # type: ignore[return-value]


def test_unlearn_without_a_terminal_prints_plain_lines(cli, demo_site, tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "PROGRESS_EVERY_S", 0.0)  # every step
    result = cli(*cli.unlearn_args(demo_site, tmp_path / "run"), code=0)
    assert "\x1b" not in result.stderr and "\r" not in result.stderr, repr(result.stderr)
    matches = progress_lines(result.stderr)
    total = int(matches[0][2])
    assert [int(m[1]) for m in matches] == list(range(1, total + 1))
    assert matches[-1][0].startswith(f"unlearn psg: step {total} of {total} (100%)")
    assert "unlearn psg:" not in result.stdout
    # The selection's share of the data, so a slice reads differently from everything.
    assert re.search(
        r"^the forget selection selects [\d,]+ of [\d,]+ training rows "
        r"\(and [\d,]+ of [\d,]+ held-out rows\)$",
        result.stdout,
        re.M,
    ), cli.describe(result)


def test_unlearn_json_keeps_stdout_to_the_json_and_progress_on_stderr(
    cli, demo_site, tmp_path, monkeypatch
):
    monkeypatch.setattr(_common, "PROGRESS_EVERY_S", 3600.0)  # only the first and last step
    result = cli(*cli.unlearn_args(demo_site, tmp_path / "run"), "--json", code=0)
    assert json.loads(result.stdout)["method"] == "psg"  # nothing else on stdout
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    matches = progress_lines(result.stderr)
    total = int(matches[-1][2])
    assert [int(m[1]) for m in matches] == ([1, total] if total > 1 else [1])


def test_unlearn_quiet_prints_no_progress(cli, demo_site, tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "PROGRESS_EVERY_S", 0.0)
    result = cli("--quiet", *cli.unlearn_args(demo_site, tmp_path / "run"), code=0)
    assert "unlearn psg:" not in result.stderr + result.stdout
