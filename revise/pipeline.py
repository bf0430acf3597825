"""The revision path as plain functions that the CLI, the demo and the Python API share:
manifest + forget selection -> tensors for the four sets -> unlearning run with its record."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from revise._run_record import Calibration
from revise.data import manifest as manifest_mod
from revise.data.loaders import IndexFailure
from revise.data.select import describe
from revise.data.split import partition
from revise.data.tensors import load_tensors
from revise.distributed import is_main_process
from revise.evaluate import EvalSet, evaluate
from revise.models.card import ModelCard
from revise.unlearn.api import UnlearnResult, unlearn
from revise.unlearn.auto import AUTO, MISS_MARGIN, auto_revise
from revise.unlearn.base import LabelledTensors
from revise.unlearn.target import check_against_target, forgetting_kind

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Decoded tensors for forget / retain / heldout_forget / heldout_retain."""

    forget_selection: str | None
    sets: dict[str, EvalSet]
    digests: dict[str, str]
    failures: list[IndexFailure] = field(default_factory=list)
    seconds: float = 0.0  # wall-clock of partitioning and decoding
    left_out: dict[str, list[str]] = field(default_factory=dict)  # set -> undecodable sample keys

    def counts(self) -> dict[str, int]:
        return {name: len(s) for name, s in self.sets.items()}

    def left_out_record(self, listed: int = 20) -> dict[str, Any]:
        """What decoding dropped from each set, for run records and reports: counts and the
        first sample keys (keys, not paths: a site's folder names can hold patient names)."""
        return {
            name: {"n": len(keys), "sample_keys": keys[:listed]}
            for name, keys in self.left_out.items()
            if keys
        }


def prepare(
    manifest: pd.DataFrame,
    card: ModelCard,
    forget: str | None,
    *,
    base_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> PreparedData:
    """Partition the labelled manifest by the forget selection and decode every set once."""
    t0 = time.perf_counter()
    parts = partition(manifest, forget, base_dir=base_dir)
    return decode_sets(parts, card, forget, cache_dir=cache_dir, progress=progress, started=t0)


def decode_sets(
    parts: dict[str, pd.DataFrame],
    card: ModelCard,
    forget: str | None,
    *,
    cache_dir: Path | None = None,
    progress: bool = False,
    started: float | None = None,
) -> PreparedData:
    """Decode the sets :func:`~revise.data.split.partition` made (each image once)."""
    t0 = time.perf_counter() if started is None else started
    everything = pd.concat(list(parts.values()), ignore_index=True)
    decoded = load_tensors(everything, card, cache_dir=cache_dir, progress=progress)
    position = {key: i for i, key in enumerate(decoded.keys)}
    left_out = {
        name: [str(k) for k in rows["sample_key"] if k not in position]
        for name, rows in parts.items()
    }
    if decoded.failures:  # which sets lost images: a smaller forget set changes the revision
        log.warning(
            "left out, by set: %s",
            ", ".join(f"{name} {len(keys)}" for name, keys in left_out.items() if keys),
        )
    sets: dict[str, EvalSet] = {}
    for name, rows in parts.items():
        rows = rows[rows["sample_key"].isin(position)].reset_index(drop=True)
        idx = torch.tensor([position[k] for k in rows["sample_key"]], dtype=torch.long)
        labels = torch.tensor(rows["label"].astype(int).to_numpy(), dtype=torch.long)
        bad = labels[(labels < 0) | (labels >= card.num_classes)] if len(labels) else labels
        if len(bad):
            from revise.errors import DataError

            raise DataError(
                f"{name}: label {int(bad[0])} is outside the model's {card.num_classes} classes",
                hint="check the label file against the model card's class_names",
            )
        sets[name] = EvalSet(LabelledTensors(decoded.x[idx], labels), rows)
    digests = {name: manifest_mod.digest(s.rows) for name, s in sets.items()}
    seconds = round(time.perf_counter() - t0, 4)
    return PreparedData(forget, sets, digests, list(decoded.failures), seconds, left_out)


def run_unlearning(
    net: nn.Module,
    card: ModelCard,
    data: PreparedData,
    *,
    method: str,
    config: dict[str, Any] | None = None,
    device: str = "auto",
    seed: int = 0,
    base_digest: str = "",
    progress: Any = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    compile: bool = False,
) -> UnlearnResult:
    """Unlearn, then evaluate the revised model on all four sets and complete the run record.

    ``checkpoint_dir``, ``checkpoint_every``, ``resume`` and ``compile`` are :func:`unlearn`'s.
    ``method="auto"`` is the automatic revision (:func:`revise.unlearn.auto.auto_revise`): it
    takes a calibration slice of the held-out rows (``revise.data.calibration``), which the
    record's metrics and `revise validate` then leave out; it has no settings or checkpoints."""
    if method == AUTO:
        return _run_auto(net, card, data, config, device, seed, base_digest)
    result = unlearn(
        net,
        card,
        data.sets["forget"].data,
        data.sets["retain"].data,
        method=method,
        config=config,
        device=device,
        seed=seed,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        compile=compile,
    )
    return _complete(result, net, card, data, device, base_digest)


def _complete(
    result: UnlearnResult,
    net: nn.Module,
    card: ModelCard,
    data: PreparedData,
    device: str,
    base_digest: str,
) -> UnlearnResult:
    """Evaluate the revised model on the sets and add what the run record still lacks."""
    record = result.record
    record.wall_clock_s["data"] = data.seconds
    if not is_main_process():  # rank 0 evaluates and writes; the others are done
        return result
    t0 = time.perf_counter()
    metrics = evaluate(result.model, card, data.sets, device=device)
    if record.target is None:  # a method run with chosen settings: how close did it get?
        original = evaluate(net, card, data.sets, by=(), device=device)
        kind = forgetting_kind(data.sets["forget"].data, data.sets["retain"].data)
        record.target = check_against_target(kind, original, metrics, MISS_MARGIN)
        if record.target.warning:
            record.warning = record.target.warning
            log.warning("%s", record.warning)
    record.wall_clock_s["evaluation"] = round(time.perf_counter() - t0, 4)
    record.forget_selection = describe(data.forget_selection) if data.forget_selection else None
    record.selection_digests = data.digests
    record.base_model_digest = base_digest
    record.decode_failures = len(data.failures)
    record.decode_left_out = data.left_out_record()
    record.metrics = metrics
    return result


def _run_auto(
    net: nn.Module,
    card: ModelCard,
    data: PreparedData,
    config: dict[str, Any] | None,
    device: str,
    seed: int,
    base_digest: str,
) -> UnlearnResult:
    from revise.data import calibration
    from revise.errors import UsageError

    if config:
        raise UsageError(
            f"the automatic revision takes no settings (got {', '.join(sorted(config))})",
            hint="drop --set, or choose a method (e.g. --method psg) to set its hyperparameters",
        )
    judged, calib = split_calibration(data, calibration.FRACTION)
    result = auto_revise(
        net,
        card,
        data.sets["forget"].data,
        data.sets["retain"].data,
        calib["heldout_forget"].data,
        calib["heldout_retain"].data,
        device=device,
        seed=seed,
        progress=log.info,
    )
    rows = {name: s.rows for name, s in calib.items()}
    result.record.calibration = Calibration(**calibration.describe(calibration.FRACTION, rows))
    return _complete(result, net, card, judged, device, base_digest)


def split_calibration(
    data: PreparedData, fraction: float
) -> tuple[PreparedData, dict[str, EvalSet]]:
    """(``data`` without its calibration rows, the calibration rows of each held-out set)."""
    from revise.data.calibration import HELDOUT_SETS, calibration_mask

    judged, calib = dict(data.sets), {}
    for name in HELDOUT_SETS:
        subset = data.sets.get(name)
        if subset is None:
            empty = LabelledTensors(torch.empty(0), torch.empty(0, dtype=torch.long))
            subset = EvalSet(empty, pd.DataFrame())
        mask = calibration_mask(subset.rows, fraction).to_numpy() if len(subset) else None
        if mask is None:
            calib[name] = subset
            continue
        take = torch.tensor(mask, dtype=torch.bool)
        keep = ~take
        judged[name] = EvalSet(
            LabelledTensors(subset.data.x[keep], subset.data.y[keep]),
            subset.rows[~mask].reset_index(drop=True),
        )
        calib[name] = EvalSet(
            LabelledTensors(subset.data.x[take], subset.data.y[take]),
            subset.rows[mask].reset_index(drop=True),
        )
    kept = PreparedData(
        data.forget_selection,
        judged,
        {name: manifest_mod.digest(s.rows) for name, s in judged.items()},
        data.failures,
        data.seconds,
        data.left_out,
    )
    return kept, calib
