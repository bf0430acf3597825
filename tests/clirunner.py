"""Running `revise` in-process for tests (tests/ is on sys.path: ``from clirunner import
invoke``): stdout and stderr kept apart, the exit code checked, the root logger put back."""

from __future__ import annotations

import logging
import traceback

from click.testing import CliRunner, Result


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
