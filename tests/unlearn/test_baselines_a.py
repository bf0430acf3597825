"""Baselines on real digits (forget = class 0): finetune, neggrad_plus, random_label, l1_sparse
and retrain each do what their paper says, and share batch streams where the design says so."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from revise.data.sets import DecodedSet
from revise.errors import UsageError
from revise.models.architectures import build
from revise.unlearn.api import make_config, unlearn
from revise.unlearn.evaluate import predict
from revise.unlearn.l1_sparse import l1_strength
from revise.unlearn.random_label import random_other_labels
from revise.unlearn.retrain import RetrainConfig, reinitialise
from revise.unlearn.train import TrainConfig


def accuracy(net, card, data) -> float:
    return (predict(net, card, data.x, device="cpu").argmax(1) == data.y).float().mean().item()


def mean_loss(net, card, data) -> float:
    return F.cross_entropy(predict(net, card, data.x, device="cpu"), data.y).item()


def run(digits, method, config, *, net=None, seed=0, retain=None):
    return unlearn(
        digits["net"] if net is None else net,
        digits["card"],
        digits["forget"],
        digits["retain"] if retain is None else retain,
        method=method,
        config=config,
        device="cpu",
        seed=seed,
    )


def same_weights(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- finetune


def test_finetune_keeps_the_retain_set_and_erodes_the_forgotten_class(digits):
    card, net = digits["card"], digits["net"]
    result = run(digits, "finetune", {})  # the paper's recipe: lr 0.04, 10 epochs
    assert accuracy(result.model, card, digits["retain"]) > 0.98
    assert (
        accuracy(result.model, card, digits["forget"])
        < accuracy(net, card, digits["forget"]) - 0.05
    )
    assert mean_loss(result.model, card, digits["forget"]) > 5 * mean_loss(
        net, card, digits["forget"]
    )
    assert result.record.steps == 10 * -(-len(digits["retain"]) // 64)


@pytest.mark.parametrize("method", ["finetune", "l1_sparse", "neggrad_plus", "retrain"])
def test_retain_based_methods_refuse_an_empty_retain_set(digits, method):
    empty = DecodedSet(digits["retain"].x[:0], digits["retain"].y[:0])
    with pytest.raises(UsageError, match="retain set"):
        run(digits, method, {"epochs": 1}, retain=empty)


# ---------------------------------------------------------------- neggrad_plus


def test_neggrad_plus_raises_the_forget_loss_and_keeps_the_rest(digits):
    card, net = digits["card"], digits["net"]
    result = run(digits, "neggrad_plus", {"epochs": 2, "alpha": 0.9})
    assert mean_loss(result.model, card, digits["forget"]) > 100 * mean_loss(
        net, card, digits["forget"]
    )
    assert accuracy(result.model, card, digits["forget"]) < 0.1
    assert accuracy(result.model, card, digits["retain"]) > 0.9


def test_neggrad_plus_with_alpha_one_is_finetune_and_the_forget_term_matters(digits):
    shared = {"epochs": 1, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    tune = run(digits, "finetune", shared, seed=4)
    plain = run(digits, "neggrad_plus", {**shared, "alpha": 1.0}, seed=4)
    ascent = run(digits, "neggrad_plus", {**shared, "alpha": 0.9999}, seed=4)
    assert same_weights(tune, plain)
    assert not same_weights(plain, ascent)


def test_neggrad_plus_can_keep_batchnorm_statistics(digits):
    result = run(digits, "neggrad_plus", {"epochs": 1, "alpha": 0.9, "freeze_bn": True})
    before, after = digits["net"].state_dict(), result.model.state_dict()
    stats = [k for k in before if "running_" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)


# ---------------------------------------------------------------- random_label


def test_random_labels_are_never_the_true_label_and_cover_every_other_class():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat(20_000)
    wrong = random_other_labels(y, 10, g)
    assert not (wrong == y).any()
    assert wrong.min() >= 0 and wrong.max() <= 9
    for true in range(10):
        counts = torch.bincount(wrong[y == true], minlength=10).float()
        assert counts[true] == 0
        others = counts[torch.arange(10) != true] / 20_000
        assert (others > 0).all() and (others - 1 / 9).abs().max() < 0.015  # uniform over 9
    assert (random_other_labels(torch.tensor([0, 1] * 50), 2, g) == torch.tensor([1, 0] * 50)).all()


def test_random_label_forgets_the_class_and_keeps_the_rest(digits):
    card = digits["card"]
    for fixed in (True, False):
        result = run(digits, "random_label", {"epochs": 2, "fixed_labels": fixed})
        assert accuracy(result.model, card, digits["forget"]) < 0.1
        assert accuracy(result.model, card, digits["retain"]) > 0.95
        assert result.record.steps == 2 * -(-(len(digits["forget"]) + len(digits["retain"])) // 64)


def test_random_label_runs_without_a_retain_set(digits):
    empty = DecodedSet(digits["retain"].x[:0], digits["retain"].y[:0])
    result = run(digits, "random_label", {"epochs": 5}, retain=empty)
    card, forget = digits["card"], digits["forget"]
    assert mean_loss(result.model, card, forget) > 10 * mean_loss(digits["net"], card, forget)


# ---------------------------------------------------------------- l1_sparse


def test_l1_strength_decays_linearly_to_zero():
    assert l1_strength(5e-4, 0, 100) == 5e-4
    assert l1_strength(5e-4, 50, 100) == pytest.approx(2.5e-4)
    assert l1_strength(5e-4, 75, 100) == pytest.approx(1.25e-4)
    assert l1_strength(5e-4, 100, 100) == 0.0
    assert l1_strength(5e-4, 150, 100) == 0.0


def test_l1_sparse_shrinks_the_weights_and_without_gamma_is_finetune(digits):
    shared = {"epochs": 2, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    tune = run(digits, "finetune", shared, seed=2)
    unpenalised = run(digits, "l1_sparse", {**shared, "gamma": 0.0}, seed=2)
    sparse = run(digits, "l1_sparse", {**shared, "gamma": 5e-3}, seed=2)
    assert same_weights(tune, unpenalised)

    def l1(result) -> float:
        return sum(p.abs().sum().item() for p in result.model.parameters())

    assert l1(sparse) < l1(tune) - 1.0
    assert sparse.record.weight_l1 == pytest.approx(l1(sparse), rel=1e-4)
    assert accuracy(sparse.model, digits["card"], digits["retain"]) > 0.95


# ---------------------------------------------------------------- retrain


def test_retrain_never_sees_the_forgotten_class_and_forgets_its_input(digits):
    card, net = digits["card"], digits["net"]
    other = build(card)  # a different, untrained input model
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    config = {"epochs": 8}
    a = run(digits, "retrain", config, seed=5)
    b = run(digits, "retrain", config, net=other, seed=5)
    assert same_weights(a, b)
    assert accuracy(a.model, card, digits["forget"]) < 0.05
    assert accuracy(a.model, card, digits["retain"]) > 0.9
    before, after = net.state_dict(), a.model.state_dict()
    means = [k for k in before if k.endswith("running_mean")]
    assert means and all(not torch.allclose(before[k], after[k]) for k in means)


def test_reinitialise_resets_every_parameter_and_statistic_from_the_seed_alone(digits):
    net = copy.deepcopy(digits["net"])
    shifted = copy.deepcopy(net)
    with torch.no_grad():
        for p in shifted.parameters():
            p.mul_(-3.0)
    state = torch.get_rng_state()
    assert reinitialise(net, 11) > 0
    reinitialise(shifted, 11)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    fresh, trained = net.state_dict(), digits["net"].state_dict()
    assert all(torch.equal(fresh[k], shifted.state_dict()[k]) for k in fresh)
    weights = [k for k in fresh if k.endswith("weight") and fresh[k].ndim > 1]
    assert all(not torch.equal(fresh[k], trained[k]) for k in weights)
    for name, module in net.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean)), name
            assert torch.equal(module.running_var, torch.ones_like(module.running_var)), name
            assert module.num_batches_tracked.item() == 0
    other_seed = copy.deepcopy(net)
    reinitialise(other_seed, 12)
    assert not torch.equal(other_seed.fc.weight, net.fc.weight)


def test_reinitialise_refuses_parameters_it_cannot_reset():
    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.token = nn.Parameter(torch.zeros(4))

    with pytest.raises(UsageError, match="token"):
        reinitialise(WithToken(), 0)


def test_retrain_defaults_are_the_training_recipe():
    recipe, config = TrainConfig(), RetrainConfig()
    for name in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "cosine"):
        assert getattr(config, name) == getattr(recipe, name), name


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("method", "overrides", "match"),
    [
        ("finetune", {"lr": 0.0}, "lr"),
        ("finetune", {"epochs": 0}, "epochs"),
        ("neggrad_plus", {"alpha": 1.5}, "alpha"),
        ("l1_sparse", {"gamma": -1.0}, "gamma"),
        ("random_label", {"momentum": 1.0}, "momentum"),
        ("retrain", {"weight_decay": -1e-4}, "weight_decay"),
    ],
)
def test_configs_reject_bad_values(method, overrides, match):
    with pytest.raises(UsageError, match=f"{method}: .*{match}"):
        make_config(method, overrides)


def test_paper_defaults():
    assert (make_config("finetune").lr, make_config("finetune").epochs) == (0.04, 10)
    ngp = make_config("neggrad_plus")
    assert (ngp.alpha, ngp.lr, ngp.epochs) == (0.9999, 0.01, 5)
    l1 = make_config("l1_sparse")
    assert (l1.gamma, l1.lr, l1.epochs) == (5e-4, 0.01, 10)
