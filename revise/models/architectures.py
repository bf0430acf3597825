"""Built-in image classifiers, looked up by name from a model card.

Every constructor takes ``(in_channels, num_classes, **kwargs)`` and returns a module that maps
normalised ``(N, C, H, W)`` images to ``(N, num_classes)`` logits. Every model ends in a layer
called ``fc`` (its ``head_name``); :func:`head_module_name` finds the head of any module, including
opaque graphs converted from TorchScript or ONNX, from the module tree alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from revise.errors import ModelError
from revise.models.card import ModelCard
from revise.registry import Registry

ARCHITECTURES = Registry[Callable[..., nn.Module]]("architecture")

# Card architectures that name a stored graph rather than a registry entry.
OPAQUE_ARCHITECTURES = ("torchscript", "onnx", "torch_export")


def _conv_bn_relu(
    cin: int, cout: int, kernel_size: int = 3, stride: int = 1, *, batch_norm: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(
            cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=not batch_norm
        )
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _check_dims(in_channels: int, num_classes: int) -> None:
    if int(in_channels) < 1 or int(num_classes) < 1:
        raise ModelError(
            f"architecture needs in_channels >= 1 and num_classes >= 1, "
            f"got in_channels={in_channels}, num_classes={num_classes}"
        )


class AllCNN(nn.Module):
    """All-CNN as used in the unlearning literature (Boundary Shrink, SCRUB), with BatchNorm.

    Widths 96, 96, 96/2, 192, 192, 192/2, 192, 192 (1x1) scaled by ``filters_percentage``; global
    average pooling, so any input of at least 4x4 works (the papers use 32x32).
    """

    head_name = "fc"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        filters_percentage: float = 1.0,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        _check_dims(in_channels, num_classes)
        if filters_percentage <= 0:
            raise ModelError(f"allcnn: filters_percentage must be > 0, got {filters_percentage}")
        w1 = max(1, round(96 * filters_percentage))
        w2 = max(1, round(192 * filters_percentage))
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)

        def drop() -> nn.Module:
            return nn.Dropout(dropout) if dropout > 0 else nn.Identity()

        bn = batch_norm
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, w1, batch_norm=bn),
            _conv_bn_relu(w1, w1, batch_norm=bn),
            _conv_bn_relu(w1, w1, stride=2, batch_norm=bn),
            drop(),
            _conv_bn_relu(w1, w2, batch_norm=bn),
            _conv_bn_relu(w2, w2, batch_norm=bn),
            _conv_bn_relu(w2, w2, stride=2, batch_norm=bn),
            drop(),
            _conv_bn_relu(w2, w2, batch_norm=bn),
            _conv_bn_relu(w2, w2, kernel_size=1, batch_norm=bn),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """ResNet for small images: 3x3 stride-1 stem, no max-pool, four stages, avg-pool, ``fc``."""

    head_name = "fc"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        blocks: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
    ) -> None:
        super().__init__()
        _check_dims(in_channels, num_classes)
        if width < 1:
            raise ModelError(f"resnet: width must be >= 1, got {width}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin = width
        stages = []
        for i, n in enumerate(blocks):
            cout = width * 2**i
            layers = []
            for j in range(int(n)):
                layers.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


class SmallCNN(nn.Module):
    """A few conv-BN-ReLU-maxpool blocks, global average pool and ``fc``: fast on a CPU."""

    head_name = "fc"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        widths: Sequence[int] = (16, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_dims(in_channels, num_classes)
        widths = [int(w) for w in widths]
        if not 1 <= len(widths) <= 4 or min(widths) < 1:
            raise ModelError(f"small_cnn: widths must be 1 to 4 positive ints, got {widths}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        blocks: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            blocks += [*_conv_bn_relu(cin, w), nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.flatten(self.pool(self.features(x)))))


@ARCHITECTURES.register("allcnn", "All-CNN (8 conv blocks, 96/192 wide; filters_percentage)")
def allcnn(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    return AllCNN(in_channels, num_classes, **kwargs)


@ARCHITECTURES.register("resnet18_cifar", "ResNet-18 for small images (3x3 stem; width=64)")
def resnet18_cifar(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    return ResNetCIFAR(in_channels, num_classes, blocks=(2, 2, 2, 2), **kwargs)


@ARCHITECTURES.register("small_cnn", "small CNN for CPU demos (widths=(16, 32))")
def small_cnn(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    return SmallCNN(in_channels, num_classes, **kwargs)


def _head_out(module: nn.Module) -> int | None:
    """Outputs of a layer that can be a classifier head: Linear, or a 1x1 Conv2d.

    TorchScript submodules are not nn.Linear instances but keep ``original_name``; torch.export
    graphs hold their weights in bare ``nn.Module`` containers, judged by the weight's shape.
    """
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1):
        return module.out_channels
    kind = getattr(module, "original_name", None)
    weight = getattr(module, "weight", None)
    if kind in ("Linear", "Conv2d") and isinstance(weight, Tensor):
        if kind == "Linear" and weight.ndim == 2:
            return int(weight.shape[0])
        if kind == "Conv2d" and weight.ndim == 4 and tuple(weight.shape[-2:]) == (1, 1):
            return int(weight.shape[0])
    bare = type(module) is nn.Module and isinstance(weight, Tensor)
    if bare and (weight.ndim == 2 or (weight.ndim == 4 and tuple(weight.shape[-2:]) == (1, 1))):
        return int(weight.shape[0])
    return None


def head_module_name(model: nn.Module, num_classes: int | None = None) -> str:
    """Dotted name of the classifier head: the last Linear / 1x1 conv giving ``num_classes``.

    ``num_classes`` defaults to ``model.num_classes`` when the model has it, else to the width of
    the last candidate layer. Registration order is used as layer order (true for the built-in
    models and for graphs converted by onnx2torch / torch.export).
    """
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    candidates = [(name, out) for name, m in model.named_modules() if (out := _head_out(m))]
    if num_classes is not None:
        candidates = [(name, out) for name, out in candidates if out == int(num_classes)]
    if not candidates:
        want = f" with {num_classes} outputs" if num_classes is not None else ""
        raise ModelError(
            f"cannot find a classifier head (Linear or 1x1 Conv2d{want}) in {type(model).__name__}",
            hint="the model's last layer must be a Linear or 1x1 convolution",
        )
    return candidates[-1][0]


def build(card: ModelCard) -> nn.Module:
    """A freshly initialised module for ``card`` (architecture, channels, classes, kwargs)."""
    if card.architecture in OPAQUE_ARCHITECTURES:
        raise ModelError(
            f"a {card.architecture} model cannot be built from its card alone",
            hint="load it with revise.models.io.load_model(PATH)",
        )
    ctor = ARCHITECTURES.get(card.architecture)
    args = (card.in_channels, card.num_classes)
    try:
        _check_size(card, ctor, args)
        return ctor(*args, **dict(card.arch_kwargs))
    except TypeError as exc:
        raise ModelError(
            f"architecture {card.architecture!r} does not accept arch_kwargs "
            f"{dict(card.arch_kwargs)}: {exc}",
            hint="fix arch_kwargs in the model card",
        ) from exc


MAX_PARAMETERS = 2_000_000_000  # 8 GB of fp32 weights: no card of a deployed classifier asks more


def _check_size(card: ModelCard, ctor, args: tuple[int, int]) -> None:
    """Count the network's weights on the meta device (no memory) before building it for real:
    arch_kwargs such as ``widths: [1000000000]`` would otherwise try to allocate tens of GB."""
    try:
        with torch.device("meta"):
            net = ctor(*args, **dict(card.arch_kwargs))
    except Exception:  # not buildable on the meta device, or bad kwargs the real build names
        return
    count = sum(p.numel() for p in net.parameters())
    if count > MAX_PARAMETERS:
        raise ModelError(
            f"model card: architecture {card.architecture!r} with arch_kwargs "
            f"{dict(card.arch_kwargs)} has {count:,} weights, more than {MAX_PARAMETERS:,}",
            hint="fix arch_kwargs in the model card",
        )
