"""The unlearning front door: run a registered method on forget/retain tensors, save the run."""

from __future__ import annotations

import copy
import dataclasses
import logging
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import revise
from revise._io import atomic_dir, write_json_atomic
from revise.distributed import init_from_env, rank_and_world
from revise.errors import UsageError
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel, resolve_device
from revise.unlearn import load_builtin_methods
from revise.unlearn.base import METHODS, LabelledTensors, PhaseTimer, UnlearnContext, freeze

log = logging.getLogger(__name__)
load_builtin_methods()


@dataclass
class UnlearnResult:
    """The revised network (bare, same input contract as the original) and its run record."""

    model: nn.Module
    card: ModelCard
    record: dict[str, Any]


def make_config(method: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The method's hyperparameter dataclass with ``overrides`` applied (unknown keys rejected)."""
    config_type = METHODS.get(method).config_type
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UsageError(
            f"{method} has no hyperparameter(s) {', '.join(unknown)}",
            hint=f"known: {', '.join(fields)}",
        )
    for name, value in overrides.items():
        default = fields[name].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UsageError(f"{method}.{name} must be true or false, not {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                overrides[name] = type(default)(value)
            except (TypeError, ValueError):
                raise UsageError(f"{method}.{name} must be a number, not {value!r}") from None
    return config_type(**overrides)


def unlearn(
    model: nn.Module,
    card: ModelCard,
    forget: LabelledTensors,
    retain: LabelledTensors,
    *,
    method: str = "psg",
    config: Mapping[str, Any] | Any | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> UnlearnResult:
    """Revise ``model`` to forget ``forget`` while keeping ``retain``; the input is not modified."""
    if len(forget) == 0:
        raise UsageError("the forget set is empty", hint="check the --forget selection")
    spec = METHODS.get(method)
    if config is None or isinstance(config, Mapping):
        config = make_config(method, config)
    dev = init_from_env(resolve_device(device))
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    net = copy.deepcopy(model).float().to(dev).requires_grad_(True)
    original = freeze(PixelSpaceModel(copy.deepcopy(model).float(), card).to(dev))
    trained = PixelSpaceModel(net, card).to(dev)
    if dev.type == "cuda":
        trained = trained.to(memory_format=torch.channels_last)
        original = original.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # every step has the same shapes: tune once
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
    )
    if dev.type == "cuda":
        torch.cuda.synchronize()  # copies to the device belong to setup, not to unlearning
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    facts = spec.run(ctx, config)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t1
    net = net.cpu().eval()
    record = {
        "method": method,
        "hyperparameters": dataclasses.asdict(config),
        "seed": seed,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "world_size": rank_and_world()[1],
        "forget_samples": len(forget),
        "retain_samples": len(retain),
        "wall_clock_s": {
            "setup": round(setup, 4),
            "unlearn": round(total, 4),
            **ctx.timer.seconds(),
        },
        "versions": software_versions(),
        **facts,
    }
    return UnlearnResult(model=net, card=card, record=record)


def software_versions() -> dict[str, str]:
    return {
        "revise": revise.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def save_run(result: UnlearnResult, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write the run folder atomically: model.safetensors, card.json, run.json."""
    from revise.models.io import save_model

    with atomic_dir(folder, overwrite=overwrite) as tmp:
        save_model(result.model, result.card, tmp)
        write_json_atomic(tmp / "run.json", result.record)
    return Path(folder)
