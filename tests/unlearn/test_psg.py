"""The seed method (psg) and Boundary Shrink on real digits: forgetting happens, retention
holds, and the attack respects its constraints."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from revise.errors import UnknownNameError, UsageError
from revise.models.pixel import PixelSpaceModel
from revise.unlearn.api import make_config, unlearn
from revise.unlearn.base import freeze
from revise.unlearn.evaluate import predict
from revise.unlearn.psg import (
    PSGConfig,
    boundary_search,
    forget_targets,
    lambda_at,
    sample_noise,
)

# Class forgetting on 8x8 digits: one sign step of 0.1 rarely crosses a boundary at this
# resolution, so the search radius is wider than the paper's CIFAR default.
CLASS_FORGET = {"lr": 1e-2, "epochs": 5, "eps": 0.3, "eta": 0.3, "phi": 2.0}


def accuracy(net, card, data) -> float:
    return (predict(net, card, data.x, device="cpu").argmax(1) == data.y).float().mean().item()


def test_psg_forgets_the_class_and_keeps_the_rest(digits):
    card, net = digits["card"], digits["net"]
    before_forget = accuracy(net, card, digits["forget"])
    before_retain = accuracy(net, card, digits["retain"])
    result = unlearn(
        net, card, digits["forget"], digits["retain"], config=CLASS_FORGET, device="cpu"
    )
    assert before_forget > 0.95
    assert accuracy(result.model, card, digits["forget"]) < 0.2
    assert accuracy(result.model, card, digits["retain"]) > before_retain - 0.05
    rest = digits["test"].y != 0
    held_out_rest = type(digits["test"])(digits["test"].x[rest], digits["test"].y[rest])
    assert accuracy(result.model, card, held_out_rest) > accuracy(net, card, held_out_rest) - 0.05
    assert result.record.attack_success_ratio > 0.9
    assert set(result.record.wall_clock_s) >= {"setup", "unlearn", "attack", "update"}


def test_the_input_model_is_not_modified(digits):
    card, net = digits["card"], digits["net"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    unlearn(net, card, digits["forget"], digits["retain"], config=CLASS_FORGET, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _labeler(digits) -> PixelSpaceModel:
    """A frozen copy: freezing the fixture's network itself would leak into other tests."""
    return freeze(PixelSpaceModel(copy.deepcopy(digits["net"]), digits["card"]))


def _weights(result):
    return result.model.state_dict()


def test_boundary_shrink_is_psg_without_noise_closeness_or_retain_term(digits):
    card, net = digits["card"], digits["net"]
    args = (net, card, digits["forget"], digits["retain"])
    shared = {"lr": 1e-2, "epochs": 2, "eps": 0.3, "eta": 0.3}
    shrink = unlearn(*args, method="boundary_shrink", config=shared, device="cpu", seed=3)
    plain = unlearn(
        *args,
        method="psg",
        config={**shared, "gamma": 0.0, "lam": 0.0, "phi": 0.0},
        device="cpu",
        seed=3,
    )
    noisy = unlearn(*args, method="psg", config={**shared, "gamma": 1.0}, device="cpu", seed=3)
    a, b, c = _weights(shrink), _weights(plain), _weights(noisy)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_boundary_shrink_refuses_psg_knobs():
    with pytest.raises(UsageError, match="boundary_shrink"):
        make_config("boundary_shrink", {"gamma": 0.1})


def test_same_seed_same_weights(digits):
    card, net = digits["card"], digits["net"]
    config = {**CLASS_FORGET, "epochs": 2, "gamma": 0.1}
    runs = [
        unlearn(net, card, digits["forget"], digits["retain"], config=config, device="cpu", seed=7)
        for _ in range(2)
    ]
    a, b = _weights(runs[0]), _weights(runs[1])
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("pixel_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_boundary_search_stays_in_the_eps_ball_and_the_pixel_range(digits, pixel_range):
    card = dataclasses.replace(digits["card"], pixel_range=pixel_range)
    low, high = pixel_range
    x = low + (high - low) * digits["forget"].x[:32]
    y = digits["forget"].y[:32]
    labeler = freeze(PixelSpaceModel(copy.deepcopy(digits["net"]), card))
    config = PSGConfig(eps=0.07, eta=0.05, steps=6, gamma=0.5, lam=0.01, noise="cauchy")
    g = torch.Generator().manual_seed(0)
    x_adv = boundary_search(labeler, x, y, config, g)
    radius = 0.07 * (high - low)  # eps is a fraction of the pixel range
    assert (x_adv - x).abs().max() <= radius + 1e-6
    assert x_adv.min() >= low and x_adv.max() <= high
    assert (x_adv - x).abs().max() > 0.06 * (high - low)  # it does move, up to the rim
    assert not x_adv.requires_grad


def _in_0_255(card):
    """The same model fed 0..255 pixels: the range and the normalisation scaled by 255."""
    return dataclasses.replace(
        card,
        pixel_range=(0.0, 255.0),
        mean=tuple(255 * m for m in card.mean),
        std=tuple(255 * s for s in card.std),
    )


@pytest.mark.parametrize(
    "config",
    [
        PSGConfig(gamma=0.0),  # the authors' default search
        PSGConfig(eps=0.3, eta=0.1, steps=4, gamma=0.5, lam=0.3, noise="laplace"),
    ],
    ids=["default", "noise-and-closeness"],
)
def test_the_search_is_in_fractions_of_the_pixel_range(digits, config):
    """eps, eta, gamma and lam mean the same on a (0, 255) card as on a (0, 1) card."""
    x, y = digits["forget"].x, digits["forget"].y
    unit = _labeler(digits)
    wide = freeze(PixelSpaceModel(copy.deepcopy(digits["net"]), _in_0_255(digits["card"])))
    a = boundary_search(unit, x, y, config, torch.Generator().manual_seed(0))
    b = boundary_search(wide, 255 * x, y, config, torch.Generator().manual_seed(0))
    torch.testing.assert_close(b, 255 * a, rtol=0, atol=1e-3)
    relabels = unit(a).argmax(1)
    assert torch.equal(wide(b).argmax(1), relabels)
    assert (relabels != y).any()  # the search crosses boundaries: the agreement is not vacuous


def test_a_0_255_card_unlearns_as_the_same_model_on_a_0_1_card(digits):
    card, net = digits["card"], digits["net"]
    config = {"epochs": 2, "eps": 0.3, "eta": 0.3, "lr": 1e-2, "gamma": 0.1, "steps": 2, "lam": 0.1}
    unit = unlearn(net, card, digits["forget"], digits["retain"], config=config, device="cpu")
    f, r = digits["forget"], digits["retain"]
    wide = unlearn(
        net,
        _in_0_255(card),
        type(f)(255 * f.x, f.y),
        type(r)(255 * r.x, r.y),
        config=config,
        device="cpu",
    )
    assert wide.record.attack_success_ratio == unit.record.attack_success_ratio > 0.5
    a, b = _weights(unit), _weights(wide)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_lam_without_a_second_search_step_warns_once(digits, caplog):
    args = (digits["net"], digits["card"], digits["forget"], digits["retain"])
    config = {"epochs": 2, "lr": 1e-3, "lam": 0.1}
    with caplog.at_level("WARNING", logger="revise.unlearn.psg"):
        unlearn(*args, config=config, device="cpu")
    warned = [r.getMessage() for r in caplog.records if "lam" in r.getMessage()]
    assert len(warned) == 1 and "steps >= 2" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="revise.unlearn.psg"):
        unlearn(*args, config={**config, "steps": 2}, device="cpu")
        unlearn(*args, config={**config, "lam": 0.0}, device="cpu")
    assert not [r for r in caplog.records if "lam" in r.getMessage()]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"topk": 0}, "topk must be >= 1"),
        ({"topk": -2, "target": "topk"}, "topk must be >= 1"),
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"lr": "nan"}, "lr must be > 0 and finite"),
        ({"lr": "inf"}, "lr must be > 0 and finite"),
        ({"momentum": 1.5}, "momentum"),
        ({"eps": "inf"}, r"eps must be in \[0, 1\], not inf"),
    ],
)
def test_psg_config_refuses_bad_values_with_a_clear_message(overrides, match):
    with pytest.raises(UsageError, match=f"psg: {match}"):
        make_config("psg", overrides)


def test_early_stop_freezes_samples_whose_label_flipped(digits):
    labeler = _labeler(digits)
    x, y = digits["forget"].x[:64], digits["forget"].y[:64]
    one = boundary_search(labeler, x, y, PSGConfig(eps=0.1, eta=0.1, steps=1, gamma=0.0), None)
    flipped = labeler(one).argmax(1) != y
    many = boundary_search(
        labeler, x, y, PSGConfig(eps=0.6, eta=0.1, steps=3, gamma=0.0, early_stop=True), None
    )
    assert flipped.any() and not flipped.all()
    assert torch.equal(many[flipped], one[flipped])
    assert not torch.equal(many[~flipped], one[~flipped])


def test_closeness_pulls_the_search_toward_the_image(digits):
    labeler = _labeler(digits)
    x, y = digits["forget"].x[:64], digits["forget"].y[:64]
    far = boundary_search(labeler, x, y, PSGConfig(eps=0.5, eta=0.05, steps=8, gamma=0.0), None)
    near = boundary_search(
        labeler, x, y, PSGConfig(eps=0.5, eta=0.05, steps=8, gamma=0.0, lam=1e4), None
    )
    assert (near - x).abs().mean() < (far - x).abs().mean()


def test_lambda_schedules():
    assert lambda_at(0.2, "constant", 5) == 0.2
    assert lambda_at(0.2, "inverse", 3) == pytest.approx(0.05)
    assert lambda_at(0.2, "exponential", 100) == pytest.approx(0.2 * 0.36787944, rel=1e-6)
    assert lambda_at(0.2, "linear", 50) == pytest.approx(0.1)
    assert lambda_at(0.2, "linear", 500) == 0.0


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("gaussian", lambda z: abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02),
        ("uniform", lambda z: z.min() >= -1 and z.max() <= 1 and abs(z.var() - 1 / 3) < 0.01),
        ("laplace", lambda z: abs(z.var() - 2.0) < 0.1),
        (
            "cauchy",
            lambda z: abs(z.median()) < 0.03 and abs((z.abs() < 1).float().mean() - 0.5) < 0.01,
        ),
    ],
)
def test_noise_distributions_have_their_known_moments(kind, check):
    z = sample_noise(kind, torch.empty(200_000), torch.Generator().manual_seed(1))
    assert check(z)


def test_forget_targets():
    logits = torch.tensor([[3.0, 1.0, 2.0, -1.0], [0.0, 5.0, 1.0, 4.0]])
    y = torch.tensor([0, 3])  # the first search failed (still class 0), the second crossed
    assert forget_targets(logits, y, PSGConfig(target="hard")).tolist() == [0, 1]
    soft = forget_targets(logits, y, PSGConfig(target="soft"))
    assert torch.allclose(soft, logits.softmax(1))
    top2 = forget_targets(logits, y, PSGConfig(target="topk", topk=2))
    assert (top2 > 0).sum(1).tolist() == [2, 2]
    assert torch.allclose(top2.sum(1), torch.ones(2))
    assert top2[0, 3] == 0 and top2[1, 0] == 0
    # exclude_label: the nearest other class, whether or not the search crossed the boundary
    other = PSGConfig(target="hard", exclude_label=True)
    assert forget_targets(logits, y, other).tolist() == [2, 1]
    soft_other = forget_targets(logits, y, PSGConfig(target="soft", exclude_label=True))
    assert soft_other[0, 0] == 0 and soft_other[1, 3] == 0
    assert torch.allclose(soft_other[0, 1:], logits[0, 1:].softmax(0))


def test_make_config_checks_names_and_types():
    assert make_config("psg", {"gamma": "0.1", "epochs": 3.0}).gamma == 0.1
    with pytest.raises(UsageError, match="known: epochs"):
        make_config("psg", {"gama": 0.1})
    with pytest.raises(UsageError, match="number"):
        make_config("psg", {"lr": "fast"})
    with pytest.raises(UsageError, match="noise"):
        make_config("psg", {"noise": "pink"})
    with pytest.raises(UnknownNameError, match="did you mean psg"):
        make_config("psgg")


def test_the_retain_loss_choice_changes_the_update(digits):
    card, net = digits["card"], digits["net"]
    runs = [
        unlearn(
            net,
            card,
            digits["forget"],
            digits["retain"],
            config={**CLASS_FORGET, "epochs": 1, "retain_loss": loss},
            device="cpu",
        )
        for loss in ("ce", "distill")
    ]
    a, b = _weights(runs[0]), _weights(runs[1])
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
