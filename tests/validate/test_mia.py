"""Membership inference: hand-made loss distributions, and real models - one that memorised its
forget set, one retrained without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from revise.errors import DataError
from revise.validate.mia import (
    loss_histogram,
    loss_mia,
    mia_efficacy,
    per_sample_loss,
    true_class_probability,
)


def test_per_sample_loss_and_true_class_probability():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1000.0, -1000.0]])
    labels = torch.tensor([0, 0, 1])
    p = 1 / (1 + np.exp(-2.0))
    assert per_sample_loss(logits, labels)[:2] == pytest.approx([-np.log(p), -np.log(1 - p)])
    assert per_sample_loss(logits, labels)[2] == 100.0  # clipped as in the kit
    assert true_class_probability(logits, labels)[:2] == pytest.approx([p, 1 - p], rel=1e-5)


def test_loss_mia_separable_and_indistinguishable_groups():
    rng = np.random.default_rng(0)
    separable = loss_mia(rng.uniform(0, 0.1, 300), rng.uniform(1, 2, 200))
    assert separable["mean"] == 1.0 and separable["n_per_group"] == 200
    same = loss_mia(rng.exponential(1, 1000), rng.exponential(1, 1000))
    assert abs(same["mean"] - 0.5) < 0.06 and same["n_splits"] == 5


def test_loss_mia_refuses_tiny_groups():
    with pytest.raises(DataError, match="at least 10"):
        loss_mia(np.zeros(5), np.ones(50))


def test_mia_efficacy_counts_forget_samples_called_non_members():
    rng = np.random.default_rng(1)
    retain = rng.uniform(0.95, 1.0, 500)  # confident on members
    test = rng.uniform(0.2, 0.7, 200)  # unsure on non-members
    assert mia_efficacy(retain, test, rng.uniform(0.2, 0.7, 100))["value"] > 0.95
    assert mia_efficacy(retain, test, rng.uniform(0.96, 1.0, 100))["value"] < 0.05
    assert mia_efficacy(retain, test, rng.uniform(0.2, 0.7, 100))["n_shadow"] == 200


def test_loss_histogram_shares_bins_and_keeps_every_sample():
    hist = loss_histogram(np.array([0.0, 0.5, 50.0]), np.array([1.0, 2.0]), bins=4)
    assert len(hist["edges"]) == 5 and hist["edges"][0] == 0.0
    assert sum(hist["members"]) == 3 and sum(hist["nonmembers"]) == 2
    assert hist["members"][-1] >= 1  # the outlier lands in the last bin


@pytest.fixture(scope="module")
def memorisation():
    """Noisy digits: an over-parameterised network memorises its 600 training images (held-out
    accuracy about 0.5); the retrained one never saw the 200 forget images."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    x = torch.tensor(x / 16.0 + rng.normal(0, 0.6, x.shape), dtype=torch.float32)
    y = torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:600], order[600:]
    forget, retain = train[:200], train[200:]

    def fit(rows: torch.Tensor) -> torch.nn.Module:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
        )
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        for _ in range(200):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
            opt.step()
        return net.eval()

    with torch.random.fork_rng(devices=[]):
        models = {"memorised": fit(train), "retrained": fit(retain)}
    with torch.no_grad():
        return {
            name: (
                per_sample_loss(net(x[forget]), y[forget]),
                per_sample_loss(net(x[test]), y[test]),
            )
            for name, net in models.items()
        }


def test_loss_mia_tells_a_memorised_forget_set_from_a_retrained_one(memorisation):
    memorised = loss_mia(*memorisation["memorised"])
    retrained = loss_mia(*memorisation["retrained"])
    assert memorised["mean"] > 0.7, memorised
    assert abs(retrained["mean"] - 0.5) < 0.08, retrained
