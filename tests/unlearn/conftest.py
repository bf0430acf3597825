"""A small real dataset (scikit-learn's bundled digits) and a model trained on it, once."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from revise.data.sets import DecodedSet
from revise.models.architectures import build
from revise.models.card import ModelCard
from revise.unlearn.train import TrainConfig, train_classifier


@pytest.fixture(scope="session")
def digits():
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target, dtype=torch.long)
    train, test = slice(0, 1200), slice(1200, None)
    card = ModelCard("small_cnn", 10, 1, (8, 8), mean=(0.3,), std=(0.4,))
    torch.manual_seed(0)  # initial weights independent of what ran before
    net = train_classifier(
        build(card),
        card,
        DecodedSet(x[train], y[train]),
        TrainConfig(epochs=10, lr=0.05),
        device="cpu",
    )
    forget = y[train] == 0
    return {
        "card": card,
        "net": net,
        "forget": DecodedSet(x[train][forget], y[train][forget]),
        "retain": DecodedSet(x[train][~forget], y[train][~forget]),
        "test": DecodedSet(x[test], y[test]),
    }
