"""The unlearning front door: run a registered method on forget/retain tensors, save the run."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import revise
from revise._io.atomic import write_json_atomic
from revise._io.outputs import RUN_RECORD
from revise._run_record import RunRecord
from revise.data.sets import DecodedSet
from revise.distributed import init_from_env, rank_and_world
from revise.errors import DivergedError, UsageError
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel, resolve_device
from revise.unlearn import checkpoint, load_builtin_methods
from revise.unlearn.base import (
    GLOBAL_RNG_LOCK,
    METHODS,
    PhaseTimer,
    UnlearnContext,
    freeze,
    synchronize,
)
from revise.unlearn.checkpointing import Checkpointing

log = logging.getLogger(__name__)
load_builtin_methods()


@dataclass
class UnlearnResult:
    """The revised network (bare, same input contract as the original) and its run record."""

    model: nn.Module
    card: ModelCard
    record: RunRecord


def make_config(method: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The method's hyperparameter dataclass with ``overrides`` applied, each converted to its
    field's type (``--set`` gives text); unknown names, values of the wrong type and values
    outside a field's bound are refused all at once, as one UsageError."""
    config_type = METHODS.get(method).config_type
    return config_type(**{str(name): value for name, value in (overrides or {}).items()})


def unlearn(
    model: nn.Module,
    card: ModelCard,
    forget: DecodedSet,
    retain: DecodedSet,
    *,
    method: str = "psg",
    config: Mapping[str, Any] | Any | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    compile: bool = False,
    monitor: Callable[[nn.Module, int], bool] | None = None,
    monitor_every: int = 0,
) -> UnlearnResult:
    """Revise ``model`` to forget ``forget`` while keeping ``retain``; the input is not modified.

    ``monitor(model, step)``, called every ``monitor_every`` steps with the pixel-space model in
    eval mode, may end the run early by returning True (``record.stopped_at_step``).

    ``compile``: run the trained and the frozen network through ``torch.compile`` (the first
    steps then include compiling; results agree with eager to rounding, not bit for bit).

    With ``checkpoint_every`` N > 0 the state is saved to ``checkpoint_dir`` every N steps;
    with ``resume`` a checkpoint found there is continued from (none: a fresh start), and the
    result is the one the uninterrupted run gives (bit-identical on the CPU). A checkpoint of
    another run (method, hyperparameters, seed, model, data, world size, device type, or
    revise or torch version) is refused with a UsageError.
    """
    if len(forget) == 0:
        raise UsageError("the forget set is empty", hint="check the --forget selection")
    spec = METHODS.get(method)
    if config is None or isinstance(config, Mapping):
        config = make_config(method, config)
    # a config built in Python met the same bounds when it was made, and on every change
    if checkpoint_every < 0:
        raise UsageError(f"checkpoint_every must be >= 0, not {checkpoint_every}")
    if (checkpoint_every or resume) and checkpoint_dir is None:
        raise UsageError("checkpoints and resuming need a checkpoint folder")
    dev = init_from_env(resolve_device(device))
    identity: dict[str, Any] = {}
    resume_from = None
    if checkpoint_dir is not None and (checkpoint_every or resume):
        identity = run_identity(model, card, forget, retain, method, config, seed, dev)
        identity["compiled"] = compile
        resume_from = checkpoint.load(checkpoint_dir) if resume else None
        if resume_from is not None:
            check_resumable(resume_from, identity)
            log.info("resuming from step %d (%s)", resume_from.global_step, resume_from.path)
            threads = resume_from.state.get("cpu_threads")
            if dev.type == "cpu" and threads != torch.get_num_threads():
                log.warning(
                    "the checkpoint was written with %s CPU threads and this run has %d: the "
                    "result may differ from the uninterrupted run's in the last bits",
                    threads,
                    torch.get_num_threads(),
                )
        elif resume:
            log.info("no checkpoint in %s: starting from step 0", checkpoint_dir)
    with GLOBAL_RNG_LOCK:
        torch.manual_seed(seed)  # for layers that draw from it (dropout)
    t0 = time.perf_counter()
    net = copy.deepcopy(model).float().to(dev).requires_grad_(True)
    original = freeze(PixelSpaceModel(copy.deepcopy(model).float(), card).to(dev))
    trained = PixelSpaceModel(net, card).to(dev)
    if dev.type == "cuda":
        trained = trained.to(memory_format=torch.channels_last)
        original = original.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # every step has the same shapes: tune once
    if compile:  # in place: parameter names, checkpoints and saved weights stay as they are
        trained.compile()
        original.compile()
    ctx = UnlearnContext(
        model=trained,
        original=original,
        card=card,
        forget=forget.to(dev),
        retain=retain.to(dev),
        device=dev,
        seed=seed,
        timer=PhaseTimer(dev),
        progress=progress or (lambda done, total: None),
        checkpoints=Checkpointing(
            None if checkpoint_dir is None else Path(checkpoint_dir),
            checkpoint_every,
            identity,
            resume_from,
        ),
        monitor=monitor,
        monitor_every=monitor_every,
    )
    synchronize(dev)  # copies to the device belong to setup, not to unlearning
    setup = time.perf_counter() - t0
    ctx.timer.start_clock()
    facts = spec.run(ctx, config)
    if ctx.resume_from is not None:
        raise RuntimeError(f"{method} never reached the loop of checkpoint {resume_from.path}")
    synchronize(dev)
    total = ctx.timer.elapsed()
    check_finite(net, method, config)
    net = net.cpu().eval()
    record = RunRecord(
        method=method,
        hyperparameters=dataclasses.asdict(config),
        seed=seed,
        device=str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        world_size=rank_and_world()[1],
        forget_samples=len(forget),
        retain_samples=len(retain),
        resumed_from_step=ctx.resumed_from_step,
        stopped_at_step=ctx.stopped_at_step,
        compiled=compile,
        wall_clock_s={"setup": round(setup, 4), "unlearn": round(total, 4), **ctx.timer.seconds()},
        versions=software_versions(),
        **facts,  # the method's own (steps, ...)
    )
    return UnlearnResult(model=net, card=card, record=record)


def check_finite(net: nn.Module, method: str, config: Any) -> None:
    """Refuse a run that diverged rather than hand on a model of NaNs (one host sync, after
    the loop)."""
    weights = {n: t for n, t in net.state_dict().items() if t.is_floating_point()}
    if not weights:
        return
    finite = torch.stack([torch.isfinite(t).all() for t in weights.values()]).tolist()
    bad = [name for name, ok in zip(weights, finite, strict=True) if not ok]
    if not bad:
        return
    lr = getattr(config, "lr", None)
    raise DivergedError(
        f"{method} diverged: {len(bad)} of {len(weights)} weight tensors are NaN or infinite "
        f"after unlearning (first: {bad[0]})",
        hint=f"lower the learning rate (lr={lr:g})" if lr is not None else "lower the step size",
    )


def run_identity(
    model: nn.Module,
    card: ModelCard,
    forget: DecodedSet,
    retain: DecodedSet,
    method: str,
    config: Any,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """What a checkpoint must share with a run to resume it (its digest is the run_key)."""
    from revise.models.io import weights_digest

    card_json = json.dumps(card.to_dict(), sort_keys=True, default=str)
    return {
        "method": method,
        "hyperparameters": dataclasses.asdict(config),
        "seed": seed,
        "model": checkpoint.run_key({"weights": weights_digest(model), "card": card_json}),
        "data": checkpoint.tensors_digest(forget.x, forget.y, retain.x, retain.y),
        "world_size": rank_and_world()[1],
        "device_type": device.type,
        # Another revise or torch may draw, sum or step differently: a resume across an upgrade
        # would silently end elsewhere than the uninterrupted run.
        "revise_version": revise.__version__,
        "torch_version": str(torch.__version__),
    }


def check_resumable(saved: checkpoint.Checkpoint, identity: Mapping[str, Any]) -> None:
    """Refuse a checkpoint of another run, saying what differs."""
    if saved.state.get("run_key") == checkpoint.run_key(identity):
        return
    differs = checkpoint.differences(saved.state.get("identity") or {}, identity)
    raise UsageError(
        f"cannot resume from {saved.path}: it is of another run ("
        + ("; ".join(differs) or "run key differs")
        + ")",
        hint="start fresh without --resume, which replaces the checkpoint",
    )


def software_versions() -> dict[str, str]:
    return {
        "revise": revise.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


PARTIAL_SUFFIX = ".partial"
CHECKPOINT_DIR = "checkpoint"


def partial_dir(folder: str | Path) -> Path:
    """Where the run folder ``folder`` is built (its checkpoints included) until complete:
    ``<folder>.partial`` beside it."""
    folder = Path(folder)
    return folder.with_name(folder.name + PARTIAL_SUFFIX)


def checkpoint_dir_for(folder: str | Path) -> Path:
    """The checkpoint folder of the run folder ``folder`` (inside its partial folder)."""
    return partial_dir(folder) / CHECKPOINT_DIR


_PARTIAL_ENTRIES = (CHECKPOINT_DIR, "run", "replaced")  # what save_run and checkpoints put there


def check_partial(folder: str | Path) -> None:
    """Refuse a ``<folder>.partial`` that revise did not make (a file, a link, or a folder holding
    anything but a checkpoint and a staged run): revise removes only what it wrote."""
    partial = partial_dir(folder)
    if not (partial.exists() or partial.is_symlink()):
        return
    foreign = not partial.is_dir() or partial.is_symlink()
    foreign = foreign or any(
        entry.name not in _PARTIAL_ENTRIES and not entry.name.endswith(".part")
        for entry in partial.iterdir()
    )
    if foreign:
        raise UsageError(
            f"{partial} is where the run {Path(folder).name} is built, but revise did not make it",
            hint=f"move {partial} away, or choose another -o",
        )


def discard_partial(folder: str | Path) -> None:
    """Remove ``folder``'s partial folder after a failure, unless it holds a checkpoint (which
    a run with ``resume`` continues from)."""
    partial = partial_dir(folder)
    check_partial(folder)
    if checkpoint.peek(partial / CHECKPOINT_DIR) is None:
        shutil.rmtree(partial, ignore_errors=True)


def save_run(result: UnlearnResult, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write the run folder atomically: model.safetensors, card.json, run.json.

    The files are written in ``<folder>.partial/`` (:func:`partial_dir`), the finished folder
    is renamed into place and the partial folder, checkpoints included, removed: ``folder``
    exists only when complete.
    """
    from revise.models.io import save_model

    target = Path(folder)
    if target.exists() and not overwrite:
        raise UsageError(
            f"output folder {target} already exists", hint="choose another -o or remove it"
        )
    check_partial(target)
    partial = partial_dir(target)
    staged, replaced = partial / "run", partial / "replaced"
    for leftover in (staged, replaced):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        staged.mkdir(parents=True)
        save_model(result.model, result.card, staged)
        write_json_atomic(staged / RUN_RECORD, result.record.to_json())
        if target.exists():
            os.replace(target, replaced)
        try:
            os.replace(staged, target)
        except BaseException:
            if replaced.exists() and not target.exists():
                os.replace(replaced, target)  # the previous run stays in place
            raise
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # a checkpoint beside it stays for --resume
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return target
