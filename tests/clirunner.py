"""Running `revise` in-process for tests (tests/ is on sys.path: ``from clirunner import
invoke``): stdout and stderr kept apart, the exit code checked, the root logger put back."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from click.testing import CliRunner, Result

START_TIMEOUT_S = 180  # imports and decoding on a loaded machine


def describe(result: Result) -> str:
    """Everything a failed assertion on a CLI result should show."""
    text = f"exit {result.exit_code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "\n--- exception\n" + "".join(traceback.format_exception(result.exception))
    return text


def invoke(*args: object, code: int | None = None) -> Result:
    """Run ``revise ARGS`` in-process (stdout and stderr kept apart, click >= 8.2); with
    ``code``, assert the exit code.

    The CLI points the root logger at the runner's stderr, which is closed afterwards; the
    root logger's handlers and level are put back so later records go where pytest wants them.
    """
    from revise.cli import cli

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="revise")
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
    if code is not None:
        assert result.exit_code == code, describe(result)
    return result


def kill_when(args: list[object], appears: Path, log_path: Path) -> str:
    """Run ``revise ARGS`` in a new process, SIGKILL it as soon as ``appears`` exists (e.g. its
    first checkpoint), and return its output; asserts that the kill, not the run, ended it.

    The process gets this one's CPU thread count: float sums, hence the last bits of the
    weights, depend on it (and an earlier in-process torchrun launch may have left
    OMP_NUM_THREADS=1 in the environment)."""
    command = [sys.executable, "-m", "revise.cli", *(str(a) for a in args)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not appears.exists() and proc.poll() is None:
                assert time.monotonic() < deadline, f"{appears} did not appear in time"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
    output = log_path.read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{output}"
    return output
