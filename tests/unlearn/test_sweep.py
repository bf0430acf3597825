"""Sweeps: grid expansion, the ranking criteria, collapse, warnings and real grids on digits."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from revise._run_record import RunRecord
from revise.cli.sweep import parse_grid
from revise.data.sets import DecodedSet, DecodedSets
from revise.errors import UsageError
from revise.unlearn.sweep import effective_concurrency, sweep
from revise.unlearn.sweep_grid import expand_grid
from revise.unlearn.sweep_ranking import (
    COLLAPSE_MARGIN,
    ESTIMATED,
    REFERENCE,
    SweepRow,
    collapse_reason,
    distance,
    rank_key,
    ranking_warnings,
)
from revise.unlearn.target import reading_from_metrics, target_from_metrics


def test_expand_grid_is_the_full_product_in_a_stable_order():
    grid = {"gamma": [0, 0.1], "lam": [0, 1e-3, 1e-2]}
    points = expand_grid(grid)
    assert len(points) == 6
    assert points[0] == {"gamma": 0, "lam": 0} and points[1] == {"gamma": 0, "lam": 1e-3}
    assert points[-1] == {"gamma": 0.1, "lam": 1e-2}
    assert expand_grid({}) == [{}]


def test_distance_known_values():
    metrics = {"forget": {"accuracy": 0.30}, "retain": {"accuracy": 0.90}}
    assert distance(metrics, {"forget": 0.0, "retain": 0.94}) == pytest.approx(
        math.hypot(0.04, 0.30)
    )


def test_parse_grid_reads_yaml_scalars_and_rejects_malformed_items():
    assert parse_grid(("gamma=0,1e-4,0.1", "noise=gaussian,cauchy")) == {
        "gamma": [0, 1e-4, 0.1],
        "noise": ["gaussian", "cauchy"],
    }
    with pytest.raises(UsageError):
        parse_grid(("gamma",))


def _prepared(digits) -> DecodedSets:
    def as_set(data):
        return DecodedSet(data.x, data.y, pd.DataFrame({"label": data.y.numpy()}))

    sets = {"forget": as_set(digits["forget"]), "retain": as_set(digits["retain"])}
    return DecodedSets("label in [0]", sets, {})


def _retrained(digits):
    """The reference: the digits model's recipe on the retain set alone (no 0 ever seen)."""
    import torch

    from revise.models.architectures import build
    from revise.unlearn.train import TrainConfig, train_classifier

    torch.manual_seed(0)
    config = TrainConfig(epochs=10, lr=0.05)
    return train_classifier(
        build(digits["card"]), digits["card"], digits["retain"], config, device="cpu"
    )


def _accuracy(net, card, data) -> float:
    from revise.unlearn.evaluate import predict

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
    assert result.criterion == REFERENCE
    want = {name: _accuracy(reference, digits["card"], digits[name]) for name in result.reference}
    assert result.reference == pytest.approx(want, abs=1e-3)
    assert want["forget"] < 0.05 < 0.95 < want["retain"]
    for row in result.rows:  # each score is the distance of the run's accuracies to the reference's
        acc = {name: stats["accuracy"] for name, stats in row.record.metrics.items()}
        expected = math.hypot(acc["retain"] - want["retain"], acc["forget"] - want["forget"])
        assert row.score == pytest.approx(expected, abs=1e-3)
    # The retrained model never saw a 0: the run that forgets (lr 1e-2, forget accuracy near 0)
    # is the closer one; the gentle run keeps every forget image as the original does, and
    # loses a little retain accuracy besides.
    assert [row.label for row in result.rows] == ["lr=0.01", "(original)", "lr=0.0001"]
    assert result.rows[0].score < 0.1 < 0.9 < result.rows[1].score <= result.rows[2].score
    assert not result.original_is_best and result.best_run is not None
    table = result.table()
    assert [row["rank"] for row in table] == [1, 2, 3] and "acc_forget" in table[0]
    assert table[1]["run"] == "(original)" and not any(row["collapsed"] for row in table)
    # the reference is a bare model: which selection it was retrained for cannot be checked
    assert any("no run record" in line for line in result.warnings)


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
    return [(row.settings, row.record.metrics, row.score) for row in rows]


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
        assert len(sequential.rows) == 4 and sum(row.original for row in sequential.rows) == 1
        assert _outcomes(concurrent.rows) == _outcomes(sequential.rows)
    # the grid points really differ, so equal rows are not equal by accident
    assert len({row.score for row in results[1]["eu_k"].runs()}) == 3


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
    # the reference is the original itself: nothing beats it
    assert [row.label for row in result.rows] == ["(original)", "lr=0.0001", "lr=1000000000000.0"]
    assert result.original_is_best and result.best_run is None and result.rows[0].score == 0
    worst = result.rows[-1]
    assert worst.score == math.inf and "diverged" in worst.record.error
    table = result.table()
    assert "lower the learning rate" in table[2]["note"] and table[1]["note"] == ""
    with pytest.raises(DivergedError, match="every run of the sweep diverged"):
        sweep(digits["net"], digits["card"], data, grid={"lr": [1e12]}, **common)


# --- the reference-free target, collapse, ranking order and warnings (known values) -----------

ORIGINAL_METRICS = {
    "forget": {"n": 100, "accuracy": 1.0},
    "retain": {"n": 900, "accuracy": 0.94},
    "heldout_forget": {"n": 100, "accuracy": 0.8},
    "heldout_retain": {"n": 400, "accuracy": 0.92},
}
RUN_METRICS = {
    "forget": {"accuracy": 0.30},
    "retain": {"accuracy": 0.90},
    "heldout_forget": {"accuracy": 0.25},
    "heldout_retain": {"accuracy": 0.88},
}


def test_estimated_distance_known_values_for_a_class_and_a_subset():
    run = reading_from_metrics(RUN_METRICS)
    # class: target forget accuracy 0, on the forget set and the held-out images of the class
    target = target_from_metrics("class", ORIGINAL_METRICS)
    assert (target.forget, target.retain, target.heldout_retain) == (0.0, 0.94, 0.92)
    want = math.sqrt(0.04**2 + ((0.30 + 0.25) / 2) ** 2 + 0.04**2)
    assert target.distance(run) == pytest.approx(want)
    # subset: the target is the original's held-out accuracy on the group (0.8, 100 images)
    target = target_from_metrics("subset", ORIGINAL_METRICS)
    assert (
        target.forget == 0.8 and "100 held-out images of the group" in target.heldout_forget_source
    )
    assert target.forget_half_width == pytest.approx(1.96 * math.sqrt(0.8 * 0.2 / 100))
    assert target.distance(run) == pytest.approx(math.sqrt(0.04**2 + 0.5**2 + 0.04**2))
    # the original itself: a class it still reads is far from the target, a subset is not
    start = reading_from_metrics(ORIGINAL_METRICS)
    klass = target_from_metrics("class", ORIGINAL_METRICS)
    assert klass.distance(start) == pytest.approx((1.0 + 0.8) / 2)
    assert target.distance(start) == pytest.approx(0.2)


def test_a_subset_target_falls_back_to_heldout_images_outside_the_group_or_drops_out():
    without_group = {k: v for k, v in ORIGINAL_METRICS.items() if k != "heldout_forget"}
    target = target_from_metrics("subset", without_group)
    assert target.forget == 0.92 and "standing for the group" in target.heldout_forget_source
    training_only = {k: ORIGINAL_METRICS[k] for k in ("forget", "retain")}
    target = target_from_metrics("subset", training_only)
    assert math.isnan(target.forget)  # unknown: only retention is judged
    run = reading_from_metrics({k: RUN_METRICS[k] for k in ("forget", "retain")})
    assert target.distance(run) == pytest.approx(0.04)


def test_collapse_by_retention_lost_or_by_predictions_in_one_class():
    kept = "heldout_retain"
    assert collapse_reason(RUN_METRICS, ORIGINAL_METRICS, kept, None) == ""  # lost 0.04
    fell = {**RUN_METRICS, kept: {"accuracy": 0.92 - COLLAPSE_MARGIN - 0.01}}
    assert "0.110 below the original's 0.920" in collapse_reason(fell, ORIGINAL_METRICS, kept, None)
    one_class = {"class": 3, "prediction_share": 0.95, "label_share": 0.1, "images": 500}
    why = collapse_reason(RUN_METRICS, ORIGINAL_METRICS, kept, one_class)
    assert why == (
        "collapsed: 95% of its predictions on heldout_retain are class 3, "
        "which is 10% of the labels"
    )
    # a class that really is most of the labels may take most of the predictions
    common = {**one_class, "label_share": 0.6}
    assert collapse_reason(RUN_METRICS, ORIGINAL_METRICS, kept, common) == ""


def test_collapsed_runs_rank_after_the_original_and_diverged_runs_last():
    def row(label, score, **kw):
        return SweepRow(
            {"lr": label},
            RunRecord(method="psg", metrics={}, wall_clock_s={}, **kw.pop("rec", {})),
            score,
            **kw,
        )

    rows = [
        row("original", 0.5, original=True),
        row("collapsed", 0.01, collapsed="collapsed: ..."),  # the lowest score, still after
        row("diverged", math.inf, rec={"error": "diverged"}),
        row("tie", 0.5),  # a tie has not beaten the original
        row("good", 0.2),
    ]
    ranked = sorted(rows, key=rank_key)
    assert [r.settings["lr"] for r in ranked] == [
        "good",
        "original",
        "tie",
        "collapsed",
        "diverged",
    ]


def test_ranking_warnings_name_what_the_criterion_cannot_judge():
    full = {"forget": 50, "retain": 500, "heldout_forget": 20, "heldout_retain": 200}
    subset = target_from_metrics("subset", ORIGINAL_METRICS)
    lines = ranking_warnings("subset", full, target=subset)
    assert len(lines) == 1 and "distinct group" in lines[0] and "worse than that" in lines[0]
    no_group = {**full, "heldout_forget": 0}
    (line,) = ranking_warnings("subset", no_group, target=subset)
    assert "falls back to the original's accuracy on 200 held-out images outside it" in line
    none = {"forget": 50, "retain": 500}
    lines = ranking_warnings("subset", none, target=subset)
    assert "cannot be estimated" in lines[0] and "no held-out images outside" in lines[1]
    klass = target_from_metrics("class", ORIGINAL_METRICS)
    assert ranking_warnings("class", full, target=klass) == []
    (line,) = ranking_warnings("class", {**full, "heldout_retain": 0}, target=klass)
    assert "no held-out images outside the forgotten classes" in line
    coarse = target_from_metrics(
        "subset", {**ORIGINAL_METRICS, "heldout_forget": {"n": 8, "accuracy": 0.5}}
    )
    assert any("known only to +-0.35" in w for w in ranking_warnings("subset", full, target=coarse))
    # a reference: whether it was retrained for this selection
    digests = {"forget": "f1", "retain": "r1"}
    (line,) = ranking_warnings("class", full, reference_given=True, digests=digests)
    assert "no run record" in line
    same = RunRecord(method="retrain", selection_digests=dict(digests))
    assert (
        ranking_warnings(
            "class", full, reference_given=True, reference_record=same, digests=digests
        )
        == []
    )
    other = RunRecord(
        method="psg",
        forget_selection='device == "B"',
        selection_digests={"forget": "f2", "retain": "r1"},
    )
    lines = ranking_warnings(
        "class", full, reference_given=True, reference_record=other, digests=digests
    )
    assert "a psg run, not a retrained model" in lines[0]
    assert 'made for another selection (device == "B"): its forget set differs' in lines[1]


# --- real grids on digits ----------------------------------------------------------------------


def _with_heldout(digits) -> DecodedSets:
    """Forget the class 0, with the digits' test images as held-out sets (inside / outside)."""
    data = _prepared(digits)
    test, zero = digits["test"], digits["test"].y == 0
    for name, mask in (("heldout_forget", zero), ("heldout_retain", ~zero)):
        x, y = test.x[mask], test.y[mask]
        data.sets[name] = DecodedSet(x, y, pd.DataFrame({"label": y.numpy()}))
    return data


PSG = {"epochs": 3, "eps": 0.3, "eta": 0.3, "phi": 1.0}


def test_class_forgetting_ranks_the_run_that_forgot_above_the_one_that_kept_the_class(digits):
    data = _with_heldout(digits)
    result = sweep(
        digits["net"], digits["card"], data, method="psg", grid={"lr": [1e-5, 1e-2]},
        fixed=PSG, device="cpu",
    )  # fmt: skip
    assert result.criterion == ESTIMATED and result.kind == "class"
    assert result.target["forget"] == 0.0 and result.warnings == []
    # the gentle run barely moved: it ranks beside the original, far behind the run that forgot
    assert [row.label for row in result.rows] == ["lr=0.01", "lr=1e-05", "(original)"]
    forgot, kept = result.rows[0], next(r for r in result.rows if r.label == "lr=1e-05")
    assert forgot.record.metrics["forget"]["accuracy"] < 0.05
    assert kept.record.metrics["forget"]["accuracy"] > 0.95
    assert forgot.score < 0.1 < 0.9 < kept.score
    original = next(r for r in result.rows if r.original)
    assert original.record.metrics["forget"]["accuracy"] == 1.0 and original.score > 0.9


def test_a_collapsed_run_ranks_after_the_original_even_when_its_score_is_lower(digits):
    data = _with_heldout(digits)
    result = sweep(
        digits["net"], digits["card"], data, method="psg", grid={"lr": [1e-2, 0.1, 1.0]},
        fixed=PSG, device="cpu",
    )  # fmt: skip
    assert [row.label for row in result.rows] == ["lr=0.01", "(original)", "lr=0.1", "lr=1.0"]
    by_label = {row.label: row for row in result.rows}
    half = by_label["lr=0.1"]  # forgot the class but lost a third of the other digits
    assert half.score < by_label["(original)"].score and "below the original's" in half.collapsed
    one = by_label["lr=1.0"]  # answers one digit whatever it is shown
    assert one.predictions["prediction_share"] > 0.9 and "of its predictions" in one.collapsed
    table = result.table()
    assert [row["collapsed"] for row in table] == [False, False, True, True]
    assert table[2]["note"].startswith("collapsed: heldout_retain accuracy")
    assert result.best().label == "lr=0.01" and not by_label["lr=0.01"].collapsed


def test_the_best_run_is_the_sweeps_own_network(digits, tmp_path):
    """Kept, not rerun (and not mixed up by runs that end out of order): its saved weights are
    those a fresh run of the same settings gives."""
    from revise.models.io import load_model, weights_digest
    from revise.unlearn.api import save_run
    from revise.unlearn.pipeline import run_unlearning

    data = _with_heldout(digits)
    result = sweep(
        digits["net"], digits["card"], data, method="psg", grid={"lr": [1e-5, 1e-2, 3e-3]},
        fixed=PSG, device="cpu", seed=3, concurrent=2,
    )  # fmt: skip
    assert result.best().label == "lr=0.01"
    saved = load_model(save_run(result.best_run, tmp_path / "best"))
    fresh = run_unlearning(
        digits["net"], digits["card"], data, method="psg", config={**PSG, "lr": 1e-2},
        device="cpu", seed=3,
    )  # fmt: skip
    assert weights_digest(saved.module) == weights_digest(fresh.model)
    assert weights_digest(saved.module) != weights_digest(digits["net"])
    record = json.loads((tmp_path / "best" / "run.json").read_text())
    assert record["metrics"] == fresh.record.metrics
    assert record["sweep"]["rank"] == 1 and record["sweep"]["criterion"] == ESTIMATED


def test_class_forgetting_without_heldout_images_warns(digits):
    result = sweep(
        digits["net"], digits["card"], _prepared(digits), method="psg", grid={"lr": [1e-2]},
        fixed=PSG, device="cpu",
    )  # fmt: skip
    (line,) = result.warnings
    assert "no held-out images outside the forgotten classes" in line
    assert result.rows[0].record.sweep["predictions_on"] == "retain"


def test_subset_forgetting_without_heldout_images_of_the_group_warns_and_falls_back(digits):
    """Forget 60 training images of kept classes: held-out images outside stand for them."""
    test = digits["test"]
    pool = DecodedSet(digits["retain"].x, digits["retain"].y)
    forget = DecodedSet(pool.x[:60], pool.y[:60])
    retain = DecodedSet(pool.x[60:], pool.y[60:])

    def as_set(data):
        return DecodedSet(data.x, data.y, pd.DataFrame({"label": data.y.numpy()}))

    sets = {"forget": as_set(forget), "retain": as_set(retain), "heldout_retain": as_set(test)}
    data = DecodedSets("label != 0", sets, {})
    result = sweep(
        digits["net"], digits["card"], data, method="psg", grid={"lr": [1e-4]},
        fixed={"epochs": 1}, device="cpu",
    )  # fmt: skip
    assert result.kind == "subset"
    original = next(r for r in result.rows if r.original)
    assert result.target["forget"] == original.record.metrics["heldout_retain"]["accuracy"]
    (line,) = result.warnings
    assert "without held-out images of the forgotten group" in line and "falls back" in line
