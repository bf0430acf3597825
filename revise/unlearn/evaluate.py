"""Accuracy of a model on named sets, overall and per group (device, class, any column)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from revise.data.sets import DecodedSet
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel, resolve_device


@torch.no_grad()
def predict(
    net: nn.Module,
    card: ModelCard,
    x: torch.Tensor,
    *,
    device: str = "auto",
    batch_size: int = 1024,
) -> torch.Tensor:
    """Logits (N, K) on the CPU, fp32, computed in eval mode in batches.

    fp32 on purpose, also on a GPU: accuracies and gates must not move with a device's reduced
    precision. The logits stay on the device until the end (one copy back, no sync per batch)."""
    dev = resolve_device(device)
    model = PixelSpaceModel(net, card).to(dev).eval()
    memory = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=memory)
    out = [
        model(x[i : i + batch_size].to(dev, non_blocking=True).contiguous(memory_format=memory))
        for i in range(0, len(x), batch_size)
    ]
    logits = torch.cat(out).float().cpu() if out else torch.empty(0, card.num_classes)
    net.cpu()
    return logits


def accuracy_by(
    correct: torch.Tensor, rows: pd.DataFrame, column: str, names: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """{group value: {n, accuracy}} for one manifest column, groups sorted by value."""
    values = rows[column].astype("string").fillna("").str.strip().to_numpy()
    hits = correct.numpy()
    out: dict[str, dict[str, float]] = {}
    for value in sorted(set(values)):
        mask = values == value
        label = value
        if names is not None and value.isdigit() and int(value) < len(names):
            label = names[int(value)]
        out[label] = {"n": int(mask.sum()), "accuracy": round(float(hits[mask].mean()), 4)}
    return out


def evaluate(
    net: nn.Module,
    card: ModelCard,
    sets: Mapping[str, DecodedSet],
    *,
    by: Sequence[str] = ("device", "label"),
    device: str = "auto",
) -> dict[str, Any]:
    """{set: {n, accuracy, by: {column: {group: {n, accuracy}}}}} for every non-empty set (a set
    without manifest rows has no groups)."""
    report: dict[str, Any] = {}
    for name, subset in sets.items():
        if len(subset) == 0:
            continue
        logits = predict(net, card, subset.x, device=device)
        correct = logits.argmax(1) == subset.y
        rows = subset.rows if subset.rows is not None else pd.DataFrame()
        groups = {
            column: accuracy_by(
                correct, rows, column, card.class_names if column == "label" else None
            )
            for column in by
            if column in rows.columns
        }
        report[name] = {
            "n": len(subset),
            "accuracy": round(float(correct.float().mean()), 4),
            "by": groups,
        }
    return report
