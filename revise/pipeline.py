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

from revise.data import manifest as manifest_mod
from revise.data.loaders import IndexFailure
from revise.data.select import describe
from revise.data.split import partition
from revise.data.tensors import load_tensors
from revise.distributed import is_main_process
from revise.evaluate import EvalSet, evaluate
from revise.models.card import ModelCard
from revise.unlearn.api import UnlearnResult, unlearn
from revise.unlearn.base import LabelledTensors

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

    ``checkpoint_dir``, ``checkpoint_every``, ``resume`` and ``compile`` are :func:`unlearn`'s."""
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
    result.record["wall_clock_s"]["data"] = data.seconds
    if not is_main_process():  # rank 0 evaluates and writes; the others are done
        return result
    t0 = time.perf_counter()
    metrics = evaluate(result.model, card, data.sets, device=device)
    result.record["wall_clock_s"]["evaluation"] = round(time.perf_counter() - t0, 4)
    result.record.update(
        forget_selection=describe(data.forget_selection) if data.forget_selection else None,
        selection_digests=data.digests,
        base_model_digest=base_digest,
        decode_failures=len(data.failures),
        decode_left_out=data.left_out_record(),
        metrics=metrics,
    )
    return result
