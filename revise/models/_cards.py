"""Where a model card comes from: given (object or JSON path), found beside the model file,
inferred from a state dict, or read from a MONAI bundle's metadata.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from revise.errors import ModelError
from revise.models.card import ModelCard

# Log under the public module's name: users see revise.models.io, not this private module.
log = logging.getLogger("revise.models.io")

CARD_FILE = "card.json"


def _as_card(card: ModelCard | str | os.PathLike | None) -> ModelCard | None:
    if card is None or isinstance(card, ModelCard):
        return card
    return ModelCard.load(card)


def _card_beside(path: Path) -> ModelCard | None:
    """``X.card.json`` beside ``X.ext``, else ``card.json`` in the same folder."""
    for candidate in (path.with_name(f"{path.stem}.card.json"), path.with_name(CARD_FILE)):
        if candidate.is_file():
            log.info("using model card %s", candidate)
            return ModelCard.load(candidate)
    return None


def _with_source(card: ModelCard, source_format: str, sha: str, **changes: Any) -> ModelCard:
    return dataclasses.replace(card, source_format=source_format, source_sha256=sha, **changes)


def _infer_card_from_state(state: Mapping[str, torch.Tensor], architecture: str) -> ModelCard:
    """in_channels from the first conv weight, num_classes from the last 2-D / 1x1 weight."""
    in_channels = num_classes = None
    for v in state.values():
        if v.ndim == 4:
            in_channels = int(v.shape[1])
            break
    for k, v in state.items():
        if k.endswith("weight") and (v.ndim == 2 or (v.ndim == 4 and v.shape[-2:] == (1, 1))):
            num_classes = int(v.shape[0])
    if in_channels is None or num_classes is None:
        raise ModelError(
            "cannot tell in_channels / num_classes from the weights alone",
            hint="pass {card} CARD.json",
            options=("card",),
        )
    log.warning(
        "no model card: inferred in_channels=%d, num_classes=%d; mean/std assumed 0/1",
        in_channels,
        num_classes,
    )
    return ModelCard(
        architecture=architecture,
        num_classes=num_classes,
        in_channels=in_channels,
        description="inferred by revise from the weights: check input_size, mean, std",
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _monai_card(folder: Path, architecture: str) -> ModelCard | None:
    """A best-effort card from a MONAI bundle's configs/metadata.json (None if not enough)."""
    meta_path = folder / "configs" / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"{meta_path} is not readable UTF-8 JSON: {exc}",
            hint="fix the bundle or pass {card}",
            options=("card",),
        ) from None
    fmt = _mapping(_mapping(meta).get("network_data_format"))
    inputs = [v for v in _mapping(fmt.get("inputs")).values() if isinstance(v, dict)]
    outputs = [v for v in _mapping(fmt.get("outputs")).values() if isinstance(v, dict)]
    if not inputs or not outputs:
        return None
    inp, out = inputs[0], outputs[0]
    in_channels = _int_or_none(inp.get("num_channels"))
    num_classes = _int_or_none(out.get("num_channels"))
    shape = inp.get("spatial_shape")
    spatial = [_int_or_none(v) for v in shape] if isinstance(shape, list) else []
    if in_channels is None or num_classes is None:
        return None
    names: list[str] = []
    channel_def = _mapping(out.get("channel_def"))
    if len(channel_def) == num_classes:
        channels = {_int_or_none(k): v for k, v in channel_def.items()}
        if set(channels) != set(range(num_classes)):
            raise ModelError(
                f"{meta_path}: channel_def keys must be the channel numbers 0..{num_classes - 1}",
                hint="fix the bundle's metadata or pass {card}",
                options=("card",),
            )
        names = [str(channels[i]) for i in range(num_classes)]
    kwargs: dict[str, Any] = {}
    if len(spatial) == 2 and all(spatial):
        kwargs["input_size"] = tuple(spatial)
    try:
        return ModelCard(
            architecture=architecture,
            num_classes=num_classes,
            in_channels=in_channels,
            class_names=names,
            description=str(meta.get("name") or meta.get("description") or "MONAI bundle"),
            **kwargs,
        )
    except ModelError as exc:  # say which file the values came from
        raise ModelError(f"{folder / 'configs' / 'metadata.json'}: {exc}") from None
