"""Plain supervised training: builds the demo's deployed model and the retrained reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from revise.data.sets import DecodedSet
from revise.errors import UsageError
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel, resolve_device
from revise.unlearn.base import BatchStreams, sgd, steps_per_pass


@dataclass
class TrainConfig:
    epochs: int = 15  # seed paper's recipe for its benchmark models
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    cosine: bool = True  # cosine learning-rate decay to 0: stable end point in few epochs
    optimizer: str = "sgd"  # "sgd" (the seed paper's recipe) or "adam" (composition fine-tune)


def train_classifier(
    net: nn.Module,
    card: ModelCard,
    data: DecodedSet,
    config: TrainConfig | None = None,
    *,
    device: str = "auto",
    seed: int = 0,
) -> nn.Module:
    """Train ``net`` in place on pixel-space data (card normalisation applied); return it."""
    config = config or TrainConfig()
    dev = resolve_device(device)
    torch.manual_seed(seed)
    net.requires_grad_(True)
    model = PixelSpaceModel(net, card).to(dev)
    if dev.type == "cuda":  # the images come channels_last (DecodedSet.to): so do the weights
        model = model.to(memory_format=torch.channels_last)
    data = data.to(dev)
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(
            net.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    elif config.optimizer == "sgd":
        optimizer = sgd(model, config.lr, config.momentum, config.weight_decay)
    else:
        raise UsageError(f"optimizer must be sgd or adam, not {config.optimizer!r}")
    steps = config.epochs * steps_per_pass(len(data), config.batch_size)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if config.cosine else None
    )
    batches = BatchStreams(seed, dev)
    model.train()
    for _ in range(steps):
        idx = batches.next(0, len(data), config.batch_size)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = F.cross_entropy(model(data.x[idx]).float(), data.y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return net.cpu().eval()
