"""merge_runs: several runs of one base model -> one merged run (a model and its record)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revise._run_record import RunRecord
from revise.data.sets import DecodedSets
from revise.errors import UsageError
from revise.merge._runs import RunInput, check_aligned, digest_of, load_run, resolve
from revise.merge.arithmetic import Override, task_arithmetic
from revise.merge.compose import compose, split_rules
from revise.merge.search import DEFAULT_GRID, GateJudge, search_strengths
from revise.models.card import ModelCard
from revise.unlearn.api import UnlearnResult, software_versions
from revise.unlearn.base import steps_per_pass
from revise.unlearn.batchnorm import _BN, reestimate_batchnorm
from revise.unlearn.evaluate import evaluate
from revise.unlearn.train import TrainConfig, train_classifier

log = logging.getLogger(__name__)


def _normalise_overrides(overrides: Sequence[Any], n_runs: int) -> list[Override]:
    out: list[Override] = []
    for pattern, values in overrides:
        values = (float(values),) * n_runs if isinstance(values, (int, float)) else values
        values = tuple(float(v) for v in values)
        if len(values) != n_runs:
            raise UsageError(f"strength override {pattern!r}: {len(values)} values, {n_runs} runs")
        out.append((str(pattern), values))
    return out


def merge_runs(
    runs: Sequence[RunInput | str | Path],
    *,
    base: nn.Module | None = None,
    take: Sequence[tuple[str, str | int]] | None = None,
    backbone: str | int | None = None,
    head: str | int | None = None,
    strengths: Sequence[float] | None = None,
    overrides: Sequence[tuple[str, float | Sequence[float]]] = (),
    search: bool = False,
    grid: Sequence[float] = DEFAULT_GRID,
    data: DecodedSets | None = None,
    reference: nn.Module | None = None,
    finetune_epochs: int = 0,
    finetune_lr: float = 1e-4,
    reestimate_bn: bool | None = None,
    bn_batch_size: int = 1024,
    judge: GateJudge | None = None,
    device: str = "auto",
    seed: int = 0,
) -> UnlearnResult:
    """Merge runs of one base model by composition or by task-vector strengths.

    Composition (``take`` patterns, or ``backbone`` + ``head`` run references: index or folder
    name) takes each state-dict key whole from one run. Strength merging (``strengths``, or
    ``search`` over ``grid`` per run; ``overrides`` per key pattern) needs the ``base`` model
    the runs revise. BatchNorm statistics are re-estimated on ``data``'s retain set after a
    strength merge (``reestimate_bn`` None: automatic), then the model is optionally fine-tuned
    on it. With a ``judge`` of acceptance gates (``revise.validate.judge.gate_judge``), the
    search prefers the strengths whose merged model fails the fewest gates, then the best
    score. With ``data`` the result carries metrics on its four sets. Save it with
    :func:`revise.unlearn.api.save_run`.
    """
    t0 = time.perf_counter()
    runs = [r if isinstance(r, RunInput) else load_run(r) for r in runs]
    composing = bool(take) or backbone is not None or head is not None
    weighting = strengths is not None or search or bool(overrides)
    if composing and weighting:
        raise UsageError("choose composition (--take/--backbone/--head) or strengths, not both")
    if not composing and not weighting:
        raise UsageError(
            "nothing says how to merge",
            hint="give --backbone/--head, --take, --strengths or --search-strengths",
        )
    if search and strengths is not None:
        raise UsageError("give --strengths or --search-strengths, not both")
    if search and data is None:
        raise UsageError("searching strengths needs data", hint="give --data and --forget")
    if judge is not None and not search:
        raise UsageError("acceptance gates steer the strength search: pass search=True")
    sets = data.sets if data is not None else {}
    card = runs[0].card
    timings: dict[str, float] = {}
    if composing:
        merged, recipe, base_digest = _compose_runs(runs, take, backbone, head)
    else:
        merged, recipe, base_digest = _weigh_runs(
            runs, base, strengths, overrides, search, grid, sets, reference, judge,
            bn_batch_size, device, timings,
        )  # fmt: skip
    net = copy.deepcopy(runs[0].model).cpu()
    net.load_state_dict(merged)
    net.eval()
    redo_bn = (not composing) if reestimate_bn is None else reestimate_bn
    recipe["batchnorm"] = _redo_batchnorm(net, card, data, redo_bn, bn_batch_size, device, timings)
    if finetune_epochs:
        recipe["finetune"] = _finetune(net, card, data, finetune_epochs, finetune_lr, device, seed)
        timings["finetune"] = recipe["finetune"].pop("seconds")
    net = net.cpu().eval()
    record = RunRecord(
        method="merge",
        hyperparameters=recipe,
        merge={
            **recipe,
            "inputs": [
                {
                    "name": run.name,
                    "path": str(run.path) if run.path else None,
                    "method": run.record.method,
                    "weights_digest": digest_of(run),
                }
                for run in runs
            ],
        },
        base_model_digest=base_digest,
        seed=seed,
        versions=software_versions(),
    )
    if data is not None:
        t1 = time.perf_counter()
        record.metrics = evaluate(net, card, sets, device=device)
        timings["evaluation"] = round(time.perf_counter() - t1, 4)
        record.selection_digests = data.digests
        record.forget_samples = len(sets["forget"])
        record.retain_samples = len(sets["retain"])
    record.wall_clock_s = {"merge": round(time.perf_counter() - t0, 4), **timings}
    return UnlearnResult(model=net, card=card, record=record)


def _compose_runs(
    runs: list[RunInput],
    take: Sequence[tuple[str, str | int]] | None,
    backbone: str | int | None,
    head: str | int | None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], str | None]:
    """Each key whole from one run: (merged state, the recipe, the runs' base digest)."""
    check_aligned(runs)
    if take:
        rules = [(pattern, resolve(ref, runs)) for pattern, ref in take]
        how = "patterns"
    else:
        if backbone is None or head is None:
            raise UsageError("composition by parts needs both --backbone and --head")
        rules = split_rules(runs[0].model, resolve(backbone, runs), resolve(head, runs))
        how = "backbone/head"
    merged, chosen = compose([run.model.state_dict() for run in runs], rules)
    names = [run.name for run in runs]
    recipe = {
        "mode": "compose",
        "by": how,
        "rules": [{"pattern": p, "run": names[i]} for p, i in rules],
        "keys_per_run": {names[i]: n for i, n in sorted(Counter(chosen.values()).items())},
    }
    return merged, recipe, runs[0].base_digest


def _weigh_runs(
    runs: list[RunInput],
    base: nn.Module | None,
    strengths: Sequence[float] | None,
    overrides: Sequence[tuple[str, float | Sequence[float]]],
    search: bool,
    grid: Sequence[float],
    sets: Mapping[str, Any],
    reference: nn.Module | None,
    judge: GateJudge | None,
    bn_batch_size: int,
    device: str,
    timings: dict[str, float],
) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Task vectors of the runs weighted by strengths, given or searched: (merged state, the
    recipe, the base model's digest)."""
    if base is None:
        raise UsageError(
            "strength merging needs the base model the runs revise", hint="give --base"
        )
    from revise.models.io import weights_digest

    base_digest = weights_digest(base)
    base_state = base.state_dict()
    check_aligned(runs, base_state, base_digest=base_digest)
    states = [run.model.state_dict() for run in runs]
    fixed = _normalise_overrides(overrides, len(runs))
    recipe: dict[str, Any] = {
        "mode": "strengths",
        "overrides": [{"pattern": p, "strengths": list(v)} for p, v in fixed],
    }
    if search:
        card = runs[0].card
        ref_acc = None
        if reference is not None:
            ref_metrics = evaluate(reference, card, sets, by=(), device=device)
            ref_acc = {name: stats["accuracy"] for name, stats in ref_metrics.items()}
        t1 = time.perf_counter()
        found = search_strengths(
            runs[0].model,
            card,
            base_state,
            states,
            sets,
            grid=grid,
            overrides=fixed,
            reference=ref_acc,
            bn_batch_size=bn_batch_size,
            device=device,
            judge=judge.failed if judge is not None else None,
        )
        timings["search"] = round(time.perf_counter() - t1, 4)
        strengths = found.strengths
        recipe["search"] = {
            "grid": list(found.grid),
            "criterion": found.criterion,
            "score": round(found.score, 4),
            "reference_accuracy": ref_acc,
            "candidates": found.table,
        }
        if judge is not None:
            recipe["search"]["criteria"] = {
                "path": judge.source,
                "sha256": judge.sha256,
                "gates_failed_by_best": found.gates_failed,
            }
            if found.gates_failed:
                log.warning(
                    "no strengths pass every gate of %s: the best candidate fails %d",
                    judge.source,
                    found.gates_failed,
                )
    if strengths is None:
        raise UsageError(
            "strength overrides apply on top of strengths for every key",
            hint="give --strengths or --search-strengths with --strength",
        )
    strengths = tuple(float(s) for s in strengths)
    recipe["strengths"] = dict(zip([run.name for run in runs], strengths, strict=True))
    return task_arithmetic(base_state, states, strengths, fixed), recipe, base_digest


def _redo_batchnorm(
    net: nn.Module,
    card: ModelCard,
    data: DecodedSets | None,
    redo: bool,
    batch_size: int,
    device: str,
    timings: dict[str, float],
) -> dict[str, int]:
    """BatchNorm statistics re-estimated on the retain set where ``redo`` and the network has
    BatchNorm layers: the record's ``batchnorm`` entry."""
    if not (redo and any(isinstance(m, _BN) for m in net.modules())):
        return {"reestimated_layers": 0, "samples": 0}
    if data is None:
        raise UsageError(
            "BatchNorm statistics must be re-estimated on retain data after this merge",
            hint="give --data and --forget",
        )
    t1 = time.perf_counter()
    retain = data.sets["retain"]
    layers = reestimate_batchnorm(net, card, retain, batch_size=batch_size, device=device)
    timings["batchnorm"] = round(time.perf_counter() - t1, 4)
    return {"reestimated_layers": layers, "samples": len(retain) if layers else 0}


def _finetune(
    net: nn.Module,
    card: ModelCard,
    data: DecodedSets | None,
    epochs: int,
    lr: float,
    device: str,
    seed: int,
) -> dict[str, Any]:
    """The paper's composition fine-tune on the retain set (all parameters, Adam, a constant
    learning rate): the record's ``finetune`` entry, with its ``seconds``."""
    if data is None:
        raise UsageError("fine-tuning needs the retain set", hint="give --data and --forget")
    config = TrainConfig(epochs=epochs, lr=lr, optimizer="adam", weight_decay=0.0, cosine=False)
    retain = data.sets["retain"]
    t1 = time.perf_counter()
    train_classifier(net, card, retain, config, device=device, seed=seed)
    steps = epochs * steps_per_pass(len(retain), config.batch_size)
    return {
        **dataclasses.asdict(config),
        "steps": steps,
        "seconds": round(time.perf_counter() - t1, 4),
    }
