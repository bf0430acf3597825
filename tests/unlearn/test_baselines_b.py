"""SCRUB, SalUn, CF-k, EU-k and Boundary Expanding on real digits, and the block/head rule they
rely on: each check is a behaviour the method promises and could fail to deliver."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from revise.errors import ModelError, UsageError
from revise.models.architectures import build
from revise.models.card import ModelCard
from revise.models.pixel import PixelSpaceModel
from revise.unlearn._structure import blocks, last_blocks, reinitialise
from revise.unlearn.api import make_config, unlearn
from revise.unlearn.boundary_expand import expand_head, widen
from revise.unlearn.evaluate import predict
from revise.unlearn.salun import forget_gradients, random_other_labels, saliency_mask
from revise.unlearn.scrub import schedule


def accuracy(net, card, data) -> float:
    return (predict(net, card, data.x, device="cpu").argmax(1) == data.y).float().mean().item()


def run(digits, method, config, seed=0):
    return unlearn(
        digits["net"],
        digits["card"],
        digits["forget"],
        digits["retain"],
        method=method,
        config=config,
        device="cpu",
        seed=seed,
    )


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


# --- the block / head rule -------------------------------------------------------------------


def _card(arch: str, **kwargs) -> ModelCard:
    return ModelCard(arch, 10, 3, (8, 8), arch_kwargs=kwargs)


@pytest.mark.parametrize(
    ("arch", "kwargs", "last"),
    [
        ("small_cnn", {}, ["features.4", "features.5"]),
        ("allcnn", {"filters_percentage": 0.05}, ["features.9.0", "features.9.1"]),
        ("resnet18_cifar", {"width": 2}, ["layer4.1"]),
    ],
)
def test_last_block_of_each_builtin_architecture(arch, kwargs, last):
    net = build(_card(arch, **kwargs))
    assert last_blocks(net, 1, 10) == [*last, "fc"]
    assert last_blocks(net, 0, 10) == ["fc"]


def test_blocks_group_norm_layers_with_their_conv_and_open_a_head_holder():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3),
        nn.BatchNorm2d(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3)),
    )
    assert blocks(net, "7.3") == [["0", "1"], ["3", "4"], ["7.0"]]
    assert last_blocks(net, 2, 3) == ["3", "4", "7.0", "7.3"]
    with pytest.raises(UsageError, match="only 3 blocks"):
        last_blocks(net, 4, 3)


def test_reinitialise_resets_only_the_named_modules_under_its_own_stream():
    net = build(_card("resnet18_cifar", width=2))
    net.layer4[1].bn1.running_mean.fill_(3.0)
    before = copy.deepcopy(net.state_dict())
    names = last_blocks(net, 1, 10)
    rng = torch.get_rng_state()
    n = reinitialise(net, names, seed=5, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)  # the global stream is untouched
    after = net.state_dict()
    moved = changed(before, after)
    assert all(k.startswith(("layer4.1.", "fc.")) for k in moved)
    assert {"layer4.1.conv1.weight", "layer4.1.conv2.weight", "fc.weight", "fc.bias"} <= moved
    assert torch.equal(after["layer4.1.bn1.running_mean"], torch.zeros(16))
    assert n == sum(p.numel() for name in names for p in net.get_submodule(name).parameters())
    again = copy.deepcopy(net)
    reinitialise(again, names, seed=5, device=torch.device("cpu"))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.items())


def test_reinitialise_refuses_parameters_it_cannot_reset():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s = nn.Parameter(torch.ones(4, 4))

    net = nn.Sequential(Scale(), nn.Linear(4, 2))
    with pytest.raises(ModelError, match=r"0\.s"):
        reinitialise(net, ["0"], seed=0, device=torch.device("cpu"))


# --- SCRUB -----------------------------------------------------------------------------------


def _kl_to_teacher(net, digits) -> float:
    card, x = digits["card"], digits["forget"].x
    student = predict(net, card, x, device="cpu").log_softmax(1)
    teacher = predict(digits["net"], card, x, device="cpu").log_softmax(1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True).item()


def test_scrub_pushes_the_forget_set_away_from_the_teacher_and_keeps_retain(digits):
    card = digits["card"]
    result = run(digits, "scrub", {"epochs": 3, "msteps": 2})
    no_max = run(digits, "scrub", {"epochs": 3, "msteps": 0})
    assert _kl_to_teacher(result.model, digits) > 1.0
    assert _kl_to_teacher(no_max.model, digits) < 0.1  # the max-steps are what forget
    assert accuracy(result.model, card, digits["retain"]) > 0.9
    assert accuracy(result.model, card, digits["forget"]) < 0.2
    assert result.record.max_steps == 2 * 4 and result.record.steps == 8 + 3 * 9


def test_scrub_schedule_alternates_max_then_min_passes():
    plan = schedule(make_config("scrub", {"epochs": 3, "msteps": 2}), 40, 300)
    one = [True] * 2 + [False] * 3  # 40 forget / 32, then 300 retain / 128
    assert plan == one + one + [False] * 3


# --- SalUn -----------------------------------------------------------------------------------


def test_saliency_mask_keeps_exactly_the_largest_fraction_over_the_whole_model():
    saliency = {"a": torch.tensor([[0.1, 0.9], [0.5, 0.3]]), "b": torch.tensor([0.7, 0.2])}
    half = saliency_mask(saliency, 0.5)
    assert half["a"].tolist() == [[False, True], [True, False]]
    assert half["b"].tolist() == [True, False]
    assert sum(int(m.sum()) for m in saliency_mask(saliency, 0.34).values()) == 2
    assert all(m.all() for m in saliency_mask(saliency, 1.0).values())
    ties = saliency_mask({"t": torch.ones(10)}, 0.3)
    assert int(ties["t"].sum()) == 3


def test_random_other_labels_never_repeat_the_label_and_reach_every_other_class():
    y = torch.arange(5).repeat(400)
    z = random_other_labels(y, 5, torch.Generator().manual_seed(0))
    assert not (z == y).any()
    for c in range(5):
        assert set(z[y == c].tolist()) == set(range(5)) - {c}


def test_salun_moves_only_salient_weights_and_forgets(digits):
    card, net = digits["card"], digits["net"]
    config = {"epochs": 3, "batch_size": 256, "mask_ratio": 0.5}
    result = run(digits, "salun", config)
    ref = PixelSpaceModel(copy.deepcopy(net), card)
    masks = saliency_mask(forget_gradients(ref, digits["forget"], 256), 0.5)
    before, after = dict(ref.net.named_parameters()), dict(result.model.named_parameters())
    moved = 0
    for name, mask in masks.items():
        key = name.removeprefix("net.")
        assert torch.equal(after[key].detach()[~mask], before[key].detach()[~mask]), key
        moved += int((after[key].detach()[mask] != before[key].detach()[mask]).sum())
    total = sum(m.numel() for m in masks.values())
    assert result.record.masked_weights == round(0.5 * total)
    assert moved > 0.4 * total
    assert accuracy(result.model, card, digits["forget"]) < 0.2
    assert accuracy(result.model, card, digits["retain"]) > 0.9


# --- CF-k and EU-k ---------------------------------------------------------------------------


def test_cf_k_trains_only_the_last_block_and_the_head(digits):
    before = digits["net"].state_dict()
    result = run(digits, "cf_k", {"epochs": 2, "lr": 0.05})
    moved = changed(before, result.model.state_dict())
    trainable = ("features.4.", "features.5.", "fc.")
    assert {"features.4.weight", "features.5.weight", "fc.weight", "fc.bias"} <= moved
    assert all(k.startswith(trainable) for k in moved)  # earlier BN statistics included
    assert result.record.trained_modules == ["features.4", "features.5", "fc"]
    assert all(p.requires_grad for p in result.model.parameters())  # flags restored


def test_eu_k_really_reinitialises_then_recovers_retain_with_the_rest_frozen(digits):
    card, before = digits["card"], digits["net"].state_dict()
    result = run(digits, "eu_k", {"epochs": 4, "k": 1}, seed=1)
    after = result.model.state_dict()
    moved = changed(before, after)
    assert all(k.startswith(("features.4.", "features.5.", "fc.")) for k in moved)
    # Far from the original: a fine-tune from the original stays close, a fresh start does not.
    cf = run(digits, "cf_k", {"epochs": 4, "k": 1}, seed=1).model.state_dict()
    w = "features.4.weight"
    assert (after[w] - before[w]).norm() > 3 * (cf[w] - before[w]).norm()
    assert accuracy(result.model, card, digits["retain"]) > 0.8
    assert accuracy(result.model, card, digits["forget"]) < 0.1  # class 0 is never in retain
    same = run(digits, "eu_k", {"epochs": 4, "k": 1}, seed=1).model.state_dict()
    assert all(torch.equal(v, same[k]) for k, v in after.items())


def test_cf_k_rejects_more_blocks_than_the_network_has(digits):
    with pytest.raises(UsageError, match="only 2 blocks"):
        run(digits, "cf_k", {"epochs": 1, "k": 3})


# --- Boundary Expanding ----------------------------------------------------------------------


def test_expanded_head_adds_a_shadow_output_and_keeps_the_original_logits(digits):
    net, x = digits["net"].eval(), digits["forget"].x[:16]
    wide = expand_head(net, 10, torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        out, ref = wide(x), net(x)
    assert out.shape == (16, 11)
    assert torch.allclose(out[:, :10], ref, atol=1e-6)
    assert net.fc.out_features == 10  # the input network is not touched


def test_a_1x1_conv_head_widens_and_other_layers_are_refused():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    x = torch.rand(5, 1, 8, 8)
    wide = expand_head(net, 3).eval()
    with torch.no_grad():
        assert torch.allclose(wide(x)[:, :3], net(x), atol=1e-6)
    assert wide(x).shape == (5, 4)
    with pytest.raises(ModelError, match="Conv2d"):
        widen(nn.Conv2d(4, 3, 3))


def test_boundary_expand_returns_the_original_shape_and_forgets(digits):
    card, net = digits["card"], digits["net"]
    result = run(digits, "boundary_expand", {"epochs": 3, "lr": 1e-2})
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert {k: v.shape for k, v in result.model.state_dict().items()} == shapes
    assert type(result.model.fc) is nn.Linear
    before = accuracy(net, card, digits["forget"])
    assert accuracy(result.model, card, digits["forget"]) < before - 0.3
    assert result.record.shadow_class == 10
