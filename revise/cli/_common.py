"""Options and helpers shared by several commands."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from revise.errors import UsageError


def check_device(ctx: click.Context | None, param: click.Parameter | None, value: str) -> str:
    """--device: refused (exit 2) before any work when this machine cannot run it."""
    from revise.models.pixel import resolve_device

    resolve_device(value)
    return value.strip().lower()


def check_opset(ctx: click.Context | None, param: click.Parameter | None, value: int) -> int:
    """--opset: refused (exit 2) before any work when revise cannot export that opset."""
    from revise.export.onnx import check_opset as supported

    return supported(value, "--opset")


device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    callback=check_device,
    help="auto, cpu, cuda, cuda:N or mps (auto: CUDA when present).",
)
model_option = click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Model: a run/model folder, .safetensors (+ --card), TorchScript, .pt2 or .onnx.",
)
card_option = click.option(
    "--card", type=click.Path(exists=True, path_type=Path), help="Model card JSON."
)
arch_option = click.option("--arch", help="Architecture name for bare weights (see the card).")
data_option = click.option(
    "--data",
    "manifest_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Manifest (.parquet/.csv) from `revise index`, with labels.",
)
cache_option = click.option(
    "--cache", type=click.Path(path_type=Path), help="Folder for decoded tensors (reused)."
)
seed_option = click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")


def parse_settings(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--set name=value`` pairs; values parsed as YAML scalars (numbers, true/false)."""
    from revise.stages._options import parse_scalar

    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set {pair!r} is not name=value", hint="e.g. --set gamma=0.1")
        out[name.strip()] = parse_scalar(value)
    return out


# Without a terminal (a log file, CI, nohup) progress is a plain line on stderr at most this
# often, besides the first and the last step of each loop. Read when a run starts.
PROGRESS_EVERY_S = 30.0


@contextlib.contextmanager
def step_progress(
    ctx: click.Context, description: str, *, quiet: bool | None = None
) -> Iterator[Callable[[int, int], None]]:
    """Progress on stderr fed by ``callback(done, total)``: a bar on a terminal, otherwise
    :class:`PlainProgress` lines. Silent with ``quiet`` (default: --quiet) and in torchrun
    workers other than rank 0."""
    if quiet is None:
        quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    if quiet or os.environ.get("RANK", "0") != "0":
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_interactive:  # a bar would print nothing there until the run ends
        yield PlainProgress(description, lambda line: click.echo(line, err=True))
        return
    columns = (description, BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


class PlainProgress:
    """``callback(done, total)`` writing lines such as ``unlearn psg: step 120 of 940 (12%),
    41 s elapsed, about 4 min left``: the first and the last step of each loop, and between
    them at most one line every ``every_s`` seconds. No control characters, so a log reads it."""

    def __init__(
        self,
        description: str,
        write: Callable[[str], None],
        *,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = description
        self.write = write
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.clock = clock
        self.started = clock()
        self.printed_at: float | None = None
        self.loop: tuple[int, float, int] | None = None  # (total, time, done) when a loop began
        self.done = -1

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        first = self.loop is None or total != self.loop[0] or done < self.done
        if first:  # a new loop, or a resumed one: its pace is measured from here
            self.loop = (total, now, done)
        self.done = done
        last = 0 < total <= done
        due = self.printed_at is None or now - self.printed_at >= self.every_s
        if first or last or due:
            self.printed_at = now
            self.write(self.line(done, total, now))

    def line(self, done: int, total: int, now: float) -> str:
        text = f"{self.description}: step {done:,}"
        if total > 0:
            text += f" of {total:,} ({100 * done // total}%)"
        text += f", {_duration(now - self.started)} elapsed"
        assert self.loop is not None
        _, began, done_then = self.loop
        if done_then < done < total and now > began:
            left = (now - began) / (done - done_then) * (total - done)
            text += f", about {_duration(left)} left"
        return text


def _duration(seconds: float) -> str:
    """``41 s``, ``4 min``, ``2 h 05 min``."""
    if seconds < 99.5:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 100 else f"{minutes // 60} h {minutes % 60:02d} min"


def worker_argv(ctx: click.Context, *, drop: tuple[str, ...] = ()) -> list[str]:
    """The command line that reproduces this invocation (group flags, command, its options),
    for starting the same command in torchrun workers."""
    argv: list[str] = []
    parent = ctx.parent.obj if ctx.parent and ctx.parent.obj else {}
    argv += ["--quiet"] if parent.get("quiet") else []
    argv += ["--debug"] if parent.get("debug") else []
    argv.append(ctx.info_name or ctx.command.name)
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in drop or value is None or not isinstance(param, click.Option):
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            argv += [flag] if value else []
        elif param.multiple:
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def spelling(ctx: click.Context) -> Callable[[str], str]:
    """How this command writes a library option's name (its flag, e.g. ``out``: ``-o``)."""
    root = ctx.find_root().command
    spelled = getattr(root, "spelled", None)
    return (lambda option: spelled(ctx.info_name, option)) if spelled else str


def echo(ctx: click.Context) -> Callable[[str], None]:
    """click.echo unless --quiet."""
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    return (lambda message: None) if quiet else click.echo
