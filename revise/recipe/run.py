"""Running a plan: the stages not already done, in order, resumable; the state file."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from revise._io.atomic import write_json_atomic, write_text_atomic
from revise._io.outputs import REPORT_JSON, RESOLVED_RECIPE, check_output
from revise._validation_record import read_validation_report
from revise.errors import RevisionError
from revise.recipe.model import Plan, StageCall
from revise.recipe.selection import _quote, shown_args


def run_plan(
    plan: Plan,
    *,
    say: Callable[[str], None],
    tell: Callable[[str], None] | None = None,
    progress: Callable[[str], Any] | None = None,
    restart: bool = False,
    global_args: list[str] | None = None,
) -> int:
    """Run the stages not already done; 0 when the bundle is complete (validated and, if asked,
    signed), 1 when validation failed (the bundle is left unsigned). ``say``: progress lines;
    ``tell``: results (default ``say``); ``progress(description)``: a step-progress context
    manager for the unlearning runs; ``global_args``: --quiet/--debug for torchrun workers."""
    # new, empty or a recipe's own (its resolved recipe is written first): never a folder of
    # the user's files, nor one holding an input, which the stages would write over
    inputs = [plan.recipe, *(path for stage in plan.stages for path in stage.inputs)]
    check_output(plan.workdir, overwrite=True, inputs=inputs, option="workdir")
    plan.workdir.mkdir(parents=True, exist_ok=True)
    state = {} if restart else _read_state(plan.state_path())
    done, started = state.setdefault("done", {}), state.setdefault("started", {})
    write_text_atomic(
        plan.workdir / RESOLVED_RECIPE, yaml.safe_dump(plan.resolved, sort_keys=False)
    )
    verdict = 0
    ran: set[str] = set()
    for stage in plan.stages:
        fresh = not ran.intersection(stage.after)  # nothing it reads was rebuilt just now
        if fresh and done.get(stage.name) == stage.fingerprint and stage.output.exists():
            say(f"[{stage.name}] up to date, skipped")
            if stage.name == "validate":
                verdict = _verdict(stage.output)
            continue
        call = StageCall(False, False, say, tell or say, progress, list(global_args or []))
        if stage.name == "validate" and stage.output.exists():
            # Its verdict is read from the report it writes: a report left by an earlier run
            # must not pass for this run's when validation crashes before writing one.
            shutil.rmtree(stage.output)
        call.overwrite = stage.output.exists() and stage.overwrites  # out of date
        if stage.partial is not None and stage.partial.exists():
            if started.get(stage.name) == stage.fingerprint:
                call.resume = True  # the same run was interrupted: continue it
            else:
                shutil.rmtree(stage.partial)
        if stage.name == "sign" and verdict != 0 and "--allow-unvalidated" not in stage.args:
            say("[sign] skipped: the validation gates failed; the bundle is left unsigned")
            continue
        started[stage.name] = stage.fingerprint
        for name in _dependents(plan, stage.name):  # their outputs go stale once this starts
            done.pop(name, None)
        _write_state(plan.state_path(), state)
        shown = shown_args(call_args(stage.args, call))
        say(f"[{stage.name}] revise {' '.join(_quote(a) for a in shown)}")
        try:
            code = stage.run(call)
        except RevisionError as exc:  # which stage, and the options it names as recipe keys
            before = f"the {stage.name} stage failed: "
            exc.respell(
                lambda option, spelling=stage.spell: spelling.get(option, option), before=before
            )
            raise
        if stage.name == "validate":
            verdict = code
        done[stage.name] = stage.fingerprint
        ran.add(stage.name)
        _write_state(plan.state_path(), state)
    return verdict


def call_args(args: list[str], call: StageCall) -> list[str]:
    """A stage's command line as run this time (replacing or resuming its output)."""
    return [
        *args,
        *(["--overwrite"] if call.overwrite else []),
        *(["--resume"] if call.resume else []),
    ]


def _dependents(plan: Plan, name: str) -> list[str]:
    """``name`` and every stage that reads its output, directly or through another stage."""
    out = [name]
    for stage in plan.stages:
        if set(stage.after) & set(out) and stage.name not in out:
            out.append(stage.name)
    return out


def _verdict(report_folder: Path) -> int:
    """0 when the validation report says every gate passed, else 1."""
    return 0 if _read_verdict(report_folder / REPORT_JSON) == "pass" else 1


def _read_verdict(report: Path) -> str | None:
    """The report's verdict; None (a failed run) when it is missing or damaged."""
    try:
        return read_validation_report(report, hint="").verdict
    except RevisionError:
        return None


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    write_json_atomic(path, state)
