from __future__ import annotations

import pytest
import torch
from torch import nn

from revise.errors import ModelError, UnknownNameError
from revise.models.architectures import ARCHITECTURES, build, head_module_name
from revise.models.card import ModelCard

# Small widths keep every architecture fast on a CPU; unknown (newly registered) names use {}.
SMALL_KWARGS = {
    "allcnn": {"filters_percentage": 0.25},
    "resnet18_cifar": {"width": 8},
    "small_cnn": {"widths": [8, 16]},
}


def _card(name: str, **changes) -> ModelCard:
    fields = dict(
        architecture=name,
        num_classes=5,
        in_channels=3,
        input_size=(16, 16),
        arch_kwargs=SMALL_KWARGS.get(name, {}),
    )
    fields.update(changes)
    return ModelCard(**fields)


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_every_architecture_builds_runs_and_has_a_findable_head(name):
    torch.manual_seed(0)
    model = build(_card(name)).eval()
    x = torch.randn(4, 3, 16, 16)
    seen = {}
    head = head_module_name(model)
    module = model.get_submodule(head)
    module.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 5)
    assert torch.equal(seen["out"].reshape(4, 5), out)  # the head produces the logits
    assert head == getattr(model, "head_name", head)
    assert head_module_name(model, 5) == head


@pytest.mark.parametrize("name", ARCHITECTURES.names())
def test_every_architecture_takes_one_channel_and_other_sizes(name):
    model = build(_card(name, in_channels=1, num_classes=2, input_size=(32, 32))).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 2)


def test_allcnn_full_width_matches_the_paper_layout():
    model = build(ModelCard("allcnn", num_classes=10, in_channels=3))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 96, 96, 192, 192, 192, 192, 192]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 1, 2, 1, 1]
    assert convs[-1].kernel_size == (1, 1)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    dropped = build(ModelCard("allcnn", 10, 3, arch_kwargs={"dropout": 0.5}))
    assert sum(isinstance(m, nn.Dropout) for m in dropped.modules()) == 2
    small = build(ModelCard("allcnn", 10, 3, arch_kwargs={"filters_percentage": 0.25}))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_resnet18_cifar_layout():
    model = build(ModelCard("resnet18_cifar", num_classes=10, in_channels=3))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == [2] * 4
    assert model.fc.in_features == 512 and model.fc.out_features == 10


def test_small_cnn_trains_on_8x8():
    torch.manual_seed(0)
    model = build(ModelCard("small_cnn", num_classes=2, in_channels=1, input_size=(8, 8)))
    x = torch.randn(32, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    x = x + y.view(-1, 1, 1, 1).float()  # separable
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_head_module_name_finds_a_1x1_conv_head_from_the_tree():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),  # classifier as a 1x1 conv
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    assert head_module_name(model, 4) == "2"
    assert head_module_name(model) == "2"
    with pytest.raises(ModelError, match="7 outputs"):
        head_module_name(model, 7)


def test_build_errors_are_helpful():
    with pytest.raises(UnknownNameError, match="did you mean allcnn"):
        build(ModelCard("allcn", num_classes=2))
    with pytest.raises(ModelError, match="arch_kwargs"):
        build(ModelCard("small_cnn", num_classes=2, arch_kwargs={"depth": 3}))
    with pytest.raises(ModelError, match="load_model"):
        build(ModelCard("onnx", num_classes=2))
