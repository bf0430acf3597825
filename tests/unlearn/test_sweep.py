"""Sweeps: grid expansion, the two ranking criteria, and a real grid on digits."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from revise.cli.sweep import parse_grid
from revise.errors import UsageError
from revise.evaluate import EvalSet
from revise.pipeline import PreparedData
from revise.sweep import distance, effective_concurrency, expand_grid, objective, sweep


def test_expand_grid_is_the_full_product_in_a_stable_order():
    grid = {"gamma": [0, 0.1], "lam": [0, 1e-3, 1e-2]}
    points = expand_grid(grid)
    assert len(points) == 6
    assert points[0] == {"gamma": 0, "lam": 0} and points[1] == {"gamma": 0, "lam": 1e-3}
    assert points[-1] == {"gamma": 0.1, "lam": 1e-2}
    assert expand_grid({}) == [{}]


def test_distance_and_objective_known_values():
    metrics = {
        "forget": {"accuracy": 0.30},
        "retain": {"accuracy": 0.90},
        "heldout_forget": {"accuracy": 0.25},
        "heldout_retain": {"accuracy": 0.88},
    }
    assert distance(metrics, {"forget": 0.0, "retain": 0.94}) == pytest.approx(
        math.hypot(0.04, 0.30)
    )
    assert objective(metrics) == pytest.approx(0.88 - 0.05)
    without_heldout = {"forget": {"accuracy": 0.3}, "retain": {"accuracy": 0.9}}
    assert objective(without_heldout) == pytest.approx(0.6)
    assert objective({"forget": {"accuracy": 0.3}}) == pytest.approx(-0.3)  # no retain images


def test_parse_grid_reads_yaml_scalars_and_rejects_malformed_items():
    assert parse_grid(("gamma=0,1e-4,0.1", "noise=gaussian,cauchy")) == {
        "gamma": [0, 1e-4, 0.1],
        "noise": ["gaussian", "cauchy"],
    }
    with pytest.raises(UsageError):
        parse_grid(("gamma",))


def _prepared(digits) -> PreparedData:
    def as_set(data):
        return EvalSet(data, pd.DataFrame({"label": data.y.numpy()}))

    sets = {"forget": as_set(digits["forget"]), "retain": as_set(digits["retain"])}
    return PreparedData("label in [0]", sets, {})


def _retrained(digits):
    """The reference: the digits model's recipe on the retain set alone (no 0 ever seen)."""
    import torch

    from revise.models.architectures import build
    from revise.train import TrainConfig, train_classifier

    torch.manual_seed(0)
    config = TrainConfig(epochs=10, lr=0.05)
    return train_classifier(
        build(digits["card"]), digits["card"], digits["retain"], config, device="cpu"
    )


def _accuracy(net, card, data) -> float:
    from revise.evaluate import predict

    return (predict(net, card, data.x, device="cpu").argmax(1) == data.y).float().mean().item()


def test_sweep_ranks_runs_by_distance_to_the_reference(digits):
    data = _prepared(digits)
    grid = {"lr": [1e-4, 1e-2]}
    fixed = {"epochs": 3, "eps": 0.3, "eta": 0.3, "phi": 1.0}
    reference = _retrained(digits)
    result = sweep(
        digits["net"],
        digits["card"],
        data,
        method="psg",
        grid=grid,
        fixed=fixed,
        reference=reference,
        device="cpu",
    )
    assert result.criterion == "distance_to_reference"
    want = {name: _accuracy(reference, digits["card"], digits[name]) for name in result.reference}
    assert result.reference == pytest.approx(want, abs=1e-3)
    assert want["forget"] < 0.05 < 0.95 < want["retain"]
    for row in result.rows:  # each score is the distance of the run's accuracies to the reference's
        acc = {name: stats["accuracy"] for name, stats in row.record["metrics"].items()}
        expected = math.hypot(acc["retain"] - want["retain"], acc["forget"] - want["forget"])
        assert row.score == pytest.approx(expected, abs=1e-3)
    # The retrained model never saw a 0: the run that forgets (lr 1e-2, forget accuracy near 0)
    # is the closer one; the gentle run keeps every forget image and ranks last.
    assert [row.settings for row in result.rows] == [{"lr": 1e-2}, {"lr": 1e-4}]
    assert result.rows[0].score < 0.1 < 0.9 < result.rows[1].score
    table = result.table()
    assert [row["rank"] for row in table] == [1, 2] and "acc_forget" in table[0]


def test_sweep_rejects_a_setting_given_twice(digits):
    with pytest.raises(UsageError, match="both"):
        sweep(
            digits["net"],
            digits["card"],
            _prepared(digits),
            method="psg",
            grid={"lr": [1e-3]},
            fixed={"lr": 1e-2},
            device="cpu",
        )


def _outcomes(rows):
    return [(row.settings, row.record["metrics"], row.score) for row in rows]


def test_concurrent_sweep_makes_the_same_runs_as_a_sequential_one(digits):
    """Runs in threads must not share random streams, batches or the global generator: eu_k
    re-initialises layers from torch's global generator, psg draws noise from its own."""
    data = _prepared(digits)
    common = dict(fixed={"epochs": 2}, reference=digits["net"], device="cpu")
    results = {}
    for concurrent in (1, 3):
        results[concurrent] = {
            method: sweep(
                digits["net"],
                digits["card"],
                data,
                method=method,
                grid=grid,
                concurrent=concurrent,
                **common,
            )
            for method, grid in (
                ("psg", {"gamma": [0.0, 0.1, 1.0]}),
                ("eu_k", {"k": [0, 1, 2]}),
            )
        }
    for method in ("psg", "eu_k"):
        sequential, concurrent = results[1][method], results[3][method]
        assert sequential.concurrent == 1 and concurrent.concurrent == 3
        assert _outcomes(concurrent.rows) == _outcomes(sequential.rows)
    # the grid points really differ, so equal rows are not equal by accident
    assert len({row.score for row in results[1]["eu_k"].rows}) == 3


def test_sweep_with_dropout_runs_one_at_a_time(digits, caplog):
    import copy

    from torch import nn

    net = copy.deepcopy(digits["net"])
    net.extra = nn.Dropout(0.2)  # draws from the global generator in training mode
    assert effective_concurrency(4, net) == 1
    assert "dropout" in caplog.text
    assert effective_concurrency(4, digits["net"]) == 4
    with pytest.raises(UsageError, match=">= 1"):
        effective_concurrency(0, digits["net"])


def test_drop_path_layers_also_make_a_sweep_run_one_at_a_time(digits):
    import copy

    from torch import nn

    class DropPath(nn.Module):  # timm's stochastic depth, by name and drop_prob
        def __init__(self, drop_prob: float) -> None:
            super().__init__()
            self.drop_prob = drop_prob

    net = copy.deepcopy(digits["net"])
    net.extra = DropPath(0.0)  # never drops
    assert effective_concurrency(3, net) == 3
    net.extra = DropPath(0.1)
    assert effective_concurrency(3, net) == 1


def test_a_diverged_run_ranks_last_and_the_sweep_goes_on(digits):
    from revise.errors import DivergedError

    data = _prepared(digits)
    common = dict(method="psg", fixed={"epochs": 1}, reference=digits["net"], device="cpu")
    result = sweep(digits["net"], digits["card"], data, grid={"lr": [1e12, 1e-4]}, **common)
    assert [row.settings["lr"] for row in result.rows] == [1e-4, 1e12]
    worst = result.rows[-1]
    assert worst.score == math.inf and "diverged" in worst.record["error"]
    table = result.table()
    assert "lower the learning rate" in table[1]["error"] and "error" not in table[0]
    with pytest.raises(DivergedError, match="every run of the sweep diverged"):
        sweep(digits["net"], digits["card"], data, grid={"lr": [1e12]}, **common)
