"""The `revise` command line: a thin shell over the library.

Errors a user can act on print one line and exit 1 (failure) or 2 (usage); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import click

from revise import __version__
from revise._io.write_errors import write_error
from revise.errors import RevisionError


class ReviseGroup(click.Group):
    """Maps RevisionError, and an OSError of a full or read-only file system met outside the
    atomic writers, to a one-line message and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RevisionError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            # the options it names, as this command spells them
            message = exc.said_as(lambda option: self.spelled(ctx.invoked_subcommand, option))
            click.echo(f"error: {message}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            # the reader went away (`revise select ... | head`): stop quietly, as a Unix tool
            # killed by SIGPIPE would; later writes and the exit flush go to /dev/null
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(128 + signal.SIGPIPE)
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            error = write_error(exc)  # e.g. a full disk met outside the atomic writers
            if error is not None:
                click.echo(f"error: {error}", err=True)
                ctx.exit(error.exit_code)
            click.echo(
                f"error: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", err=True
            )
            ctx.exit(1)

    def spelled(self, command: str | None, option: str) -> str:
        """A library option name as ``revise COMMAND`` writes it: its flag as the command
        declares it first (``heldout_select``: ``--heldout-select``, ``out``: ``-o``), or its
        argument's name (``model``: ``MODEL_PATH``)."""
        found = self.commands.get(command or "")
        flag = "--" + option.replace("_", "-")
        for param in found.params if found else []:
            if flag in param.opts:
                return param.opts[0]
            if isinstance(param, click.Argument) and param.name in (option, f"{option}_path"):
                return param.human_readable_name
        return option


@click.group(cls=ReviseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="revise")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and results.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """Revise a deployed clinical image model without retraining it."""
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, quiet=quiet)
    level = (
        logging.ERROR if quiet else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    )
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )


def _register() -> None:
    """Add the commands of every module in this package that lists them in ``COMMANDS``."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for command in getattr(module, "COMMANDS", ()):
                cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="revise")
