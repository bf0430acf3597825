"""The unlearning stage: a deployed model and a site manifest in, a run folder out.

The run is built in ``<out>.partial/`` and moved to ``<out>`` when complete; with
``checkpoint_every`` a killed run continues with ``resume=True`` and ends as the uninterrupted
run would. Under torchrun every worker calls :func:`unlearn_run`; rank 0 writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revise import distributed
from revise._io.outputs import check_output
from revise._run_record import BaseModelRef, RunRecord
from revise.data import manifest as manifest_mod
from revise.data.split import share_of_sets
from revise.data.tensors import prepare
from revise.errors import UsageError
from revise.models.io import load_model, weights_digest
from revise.unlearn import checkpoint
from revise.unlearn.api import (
    check_partial,
    checkpoint_dir_for,
    discard_partial,
    make_config,
    partial_dir,
    save_run,
)
from revise.unlearn.auto import AUTO
from revise.unlearn.pipeline import check_criteria_use, run_unlearning
from revise.validate.aims import forget_ceiling
from revise.validate.criteria import load_criteria

Say = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class UnlearnJob:
    """What `revise unlearn` and a recipe's unlearn: entry give."""

    model: Path
    manifest: Path
    forget: str
    out: Path
    method: str = AUTO
    settings: Mapping[str, Any] = field(default_factory=dict)
    card: Path | None = None
    arch: str | None = None
    checkpoint_every: int = 50
    compile: bool = False
    cache: Path | None = None
    device: str = "auto"
    seed: int = 0
    # The site's acceptance criteria, fixed before the run: auto aims under their ceiling on the
    # forgotten group's held-out accuracy (revise.validate.aims.forget_ceiling).
    criteria: Path | None = None

    def inputs(self) -> list[Path | None]:
        """The files it reads, which its output must never replace."""
        return [self.model, self.card, self.manifest, self.criteria]


def check_job(job: UnlearnJob) -> Any:
    """The method's settings checked before any work: its config, or None for auto."""

    check_criteria_use(job.method, job.criteria is not None)
    if job.method == AUTO:
        if job.settings:
            raise UsageError(
                "method auto takes no settings: it chooses the method and its settings itself",
                hint="drop the settings, or choose a method (e.g. psg) to set its hyperparameters",
            )
        return None
    return make_config(job.method, job.settings)


def prepare_partial(say: Say, out: Path, resume: bool) -> None:
    """Say what happens to an unfinished run of ``out`` (its ``.partial`` folder): continued
    when ``resume`` and it holds a checkpoint, otherwise removed for a fresh start."""

    check_partial(out)  # never remove a folder revise did not make
    partial = partial_dir(out)
    saved = checkpoint.peek(checkpoint_dir_for(out)) if partial.exists() else None
    if resume and saved is not None:
        say(f"resuming from step {saved['global_step']} (checkpoint in {partial})")
    elif resume:
        say(f"no checkpoint in {partial}: starting fresh")
        shutil.rmtree(partial, ignore_errors=True)
    elif partial.exists():
        what = f"its checkpoint at step {saved['global_step']}" if saved else "it"
        say(f"starting fresh: removing the unfinished run {partial} (resuming continues {what})")
        shutil.rmtree(partial)


def first_worker() -> bool:
    """Rank 0 under torchrun (known from its environment before the process group exists)."""
    return os.environ.get("RANK", "0") == "0"


def unlearn_run(
    job: UnlearnJob,
    *,
    overwrite: bool = False,
    resume: bool = False,
    say: Say = lambda _: None,
    progress: Callable[[str], Any] | None = None,
    quiet: bool = False,
):
    """Unlearn ``job.forget`` from ``job.model`` and write the run folder ``job.out``; the
    :class:`~revise.unlearn.api.UnlearnResult` (None in torchrun workers other than rank 0).

    ``progress(description)``: a context manager yielding the step callback (the CLI's bar);
    ``quiet`` silences the decoding progress."""

    out = job.out
    check_output(out, overwrite=overwrite, inputs=job.inputs(), option="out")
    config = check_job(job)  # bad settings fail before any work
    ceiling = None
    if job.criteria is not None:
        ceiling = forget_ceiling(load_criteria(job.criteria))
        say(
            f"aiming under {ceiling.source}: held-out accuracy on the group at most "
            f"{ceiling.value:g}"
            if ceiling
            else f"{job.criteria} has no fixed ceiling on heldout_forget accuracy: auto aims at "
            "its own target"
        )
    if first_worker():
        prepare_partial(say, out, resume)
    loaded = load_model(job.model, card=job.card, architecture=job.arch)
    data = prepare(
        manifest_mod.load(job.manifest),
        loaded.card,
        job.forget,
        cache_dir=job.cache,
        progress=not quiet,
    )
    say("sets: " + ", ".join(f"{k} {v}" for k, v in data.counts().items()))
    say(f"the forget selection selects {share_of_sets(data.counts())}")
    bar = progress(f"unlearn {job.method}") if progress else contextlib.nullcontext(None)
    try:
        with bar as step:
            result = run_unlearning(
                loaded.module,
                loaded.card,
                data,
                method=job.method,
                config=config,
                device=job.device,
                seed=job.seed,
                base_digest=weights_digest(loaded.module),
                progress=step,
                checkpoint_dir=checkpoint_dir_for(out),
                checkpoint_every=job.checkpoint_every,
                resume=resume,
                compile=job.compile,
                forget_ceiling=ceiling,
            )
    except BaseException:
        if first_worker():
            discard_partial(out)  # kept if it holds a checkpoint: resuming continues from it
        raise
    if not distributed.is_main_process():
        return None
    result.record.base_model = BaseModelRef(
        path=str(Path(job.model).resolve()),  # found again from any folder (revise merge)
        format=loaded.format,
        sha256=loaded.card.source_sha256,
    )
    try:
        save_run(result, out, overwrite=overwrite)
    except BaseException:
        if not overwrite or out.exists():  # else the previous run may wait in the partial folder
            discard_partial(out)  # e.g. a full disk: no half-written run is left behind
        raise
    return result


def summary(record: RunRecord) -> list[str]:
    """What a finished run says: the method's outcome (auto: what it chose and how close it
    estimates it came), any warning, the accuracy on each set."""
    if record.method == AUTO:
        target = record.target
        low, high = target.estimated_distance_interval
        lines = [
            f"auto ({target.kind} forgetting): chose {record.chosen} in "
            f"{record.wall_clock_s['unlearn']:.2f} s; estimated distance to a retrained "
            f"model {target.estimated_distance:.3f} (95% interval {low:.3f}-{high:.3f})"
        ]
    else:
        resumed = record.resumed_from_step
        lines = [
            f"{record.method}: unlearned in {record.wall_clock_s['unlearn']:.2f} s; attack "
            f"success {record.attack_success_ratio}"
            + (f"; resumed from step {resumed}" if resumed else "")
        ]
    if record.warning:
        lines.append(f"WARNING: {record.warning}")
    if record.note:
        lines.append(f"note: {record.note}")
    for name, stats in record.metrics.items():
        lines.append(f"  {name:<16} n={stats['n']:<6} accuracy {stats['accuracy']:.3f}")
    return lines
