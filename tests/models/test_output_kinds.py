"""Models that end in softmax, log_softmax or sigmoid: found when loaded, said once, trained on
their logits (not on probabilities), refused where the card contradicts them."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from revise.data.sets import DecodedSet
from revise.errors import ModelError
from revise.models._final_activation import final_activation
from revise.models._output_wrappers import LogitsOf
from revise.models.card import ModelCard
from revise.models.io import load_model, save_model, weights_digest
from revise.models.outputs import deployed, settle
from revise.models.pixel import PixelSpaceModel
from revise.unlearn.train import TrainConfig, train_classifier

CLASSES = 4
SHAPE = (1, 8, 8)
# Cross-entropy read off softmax outputs as if they were logits cannot go below this, whatever
# the model: the best it can do is p = one-hot, and then the loss is log(e + 3) - 1.
FLOOR = math.log(math.e + CLASSES - 1) - 1  # 0.7437
ACTIVATIONS = {"softmax": nn.Softmax(1), "log_softmax": nn.LogSoftmax(1), "sigmoid": nn.Sigmoid()}
ARCHITECTURE = {".onnx": "onnx", ".pt2": "torch_export", ".ts": "torchscript"}


class Softmax(nn.Module):
    """A softmax written out of smaller operations: its graph shows Exp, ReduceSum and Div."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        e = torch.exp(z - z.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)


def _body(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, CLASSES)
    ).eval()
    with torch.no_grad():
        body[3].weight.mul_(4.0)  # logits spread wide enough that probabilities differ a lot
    return body


def _card(architecture: str = "onnx", **changes) -> ModelCard:
    return ModelCard(architecture, num_classes=CLASSES, in_channels=1, input_size=(8, 8), **changes)


def _x(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _write(net: nn.Module, path: Path, how: str = "legacy16") -> Path:
    """``net`` saved at ``path`` the way a vendor would hand it over."""
    x = _x(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how.startswith("legacy"):
            torch.onnx.export(
                net,
                (x,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["out"],
                dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}},
                opset_version=int(how.removeprefix("legacy")),
            )
        elif how == "dynamo":
            program = torch.onnx.export(
                net, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},)
            )
            program.save(str(path))
        elif how == "pt2":
            dims = ({0: torch.export.Dim("batch")},)
            torch.export.save(torch.export.export(net, (x,), dynamic_shapes=dims), str(path))
        else:
            torch.jit.save(torch.jit.trace(net, x), str(path))
    return path


def _load(path: Path, **card_changes):
    return load_model(path, card=_card(ARCHITECTURE[path.suffix], **card_changes))


def _warnings(caplog) -> list[str]:
    """What revise warned of (torch's own loggers speak while the test writes its models)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("revise")
    ]


# ------------------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    ("how", "suffix", "kind"),
    [
        ("legacy16", ".onnx", "softmax"),
        ("legacy16", ".onnx", "log_softmax"),
        ("legacy16", ".onnx", "sigmoid"),
        ("legacy11", ".onnx", "softmax"),  # onnx2torch's Softmax of opsets 1-11
        ("dynamo", ".onnx", "softmax"),
        ("pt2", ".pt2", "softmax"),
    ],
)
def test_a_final_activation_is_found_taken_off_and_said_once(tmp_path, caplog, how, suffix, kind):
    body = _body()
    path = _write(nn.Sequential(body, ACTIVATIONS[kind]).eval(), tmp_path / f"m{suffix}", how)
    caplog.set_level(logging.INFO)
    loaded = _load(path)
    assert loaded.card.output == kind
    (said,) = _warnings(caplog)
    assert f"{path} returns" in said and "not logits" in said
    assert f'"output": "{kind}"' in said and "\n" not in said
    x = _x()
    with torch.no_grad():
        got, want = loaded.module(x), body(x)
    if kind == "log_softmax":  # log-probabilities are kept: they are logits up to a row constant
        want = want.log_softmax(1)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert final_activation(loaded.module) is None or kind == "log_softmax"


def test_torchscript_is_found_from_its_graph_and_inverted(tmp_path, caplog):
    body = _body()
    path = _write(nn.Sequential(body, nn.Softmax(1)).eval(), tmp_path / "m.ts", "ts")
    caplog.set_level(logging.INFO)
    loaded = _load(path)
    assert loaded.card.output == "softmax" and isinstance(loaded.module, LogitsOf)
    (said,) = _warnings(caplog)
    assert "TorchScript graph ends in aten::softmax" in said and "log p" in said
    x = _x()
    with torch.no_grad():  # log p: the logits up to a constant per row
        assert torch.allclose(loaded.module(x).log_softmax(1), body(x).log_softmax(1), atol=1e-5)


def test_a_softmax_that_only_the_numbers_show_is_found_by_a_probe(tmp_path, caplog):
    body = _body()
    path = _write(nn.Sequential(body, Softmax()).eval(), tmp_path / "m.onnx")
    caplog.set_level(logging.INFO)
    loaded = _load(path)
    assert loaded.card.output == "softmax" and isinstance(loaded.module, LogitsOf)
    (said,) = _warnings(caplog)
    assert "non-negative and sum to 1 per row" in said
    x = _x()
    with torch.no_grad():
        assert torch.allclose(loaded.module(x).log_softmax(1), body(x).log_softmax(1), atol=1e-5)


def test_a_logits_model_and_its_card_are_left_as_they_are(tmp_path, caplog):
    body = _body()
    caplog.set_level(logging.INFO)
    loaded = _load(_write(body, tmp_path / "m.onnx"))
    assert loaded.card.output is None and loaded.card.output_kind == "logits"
    assert not _warnings(caplog)
    assert _load(tmp_path / "m.onnx", output="logits").card.output == "logits"
    x = _x()
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), body(x), atol=1e-5)


# --------------------------------------------------------------- cards that contradict the model


def test_a_card_that_says_logits_for_a_softmax_graph_is_refused(tmp_path):
    path = _write(nn.Sequential(_body(), nn.Softmax(1)).eval(), tmp_path / "m.onnx")
    with pytest.raises(ModelError) as err:
        _load(path, output="logits")
    msg = str(err.value)
    assert msg.startswith(f"{path}: the network returns class probabilities (its graph ends in ")
    assert 'model card says "output": "logits"' in msg and 'set "output": "softmax"' in msg


def test_a_card_that_says_softmax_for_a_logits_graph_is_refused(tmp_path):
    path = _write(_body(), tmp_path / "m.onnx")
    with pytest.raises(ModelError) as err:
        _load(path, output="softmax")
    msg = str(err.value)
    assert 'the model card says "output": "softmax" (field output)' in msg
    assert "they look like logits" in msg and 'set "output": "logits"' in msg


def test_a_card_that_names_another_activation_is_refused(tmp_path):
    path = _write(nn.Sequential(_body(), nn.Sigmoid()).eval(), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r'says "output": "softmax".*set "output": "sigmoid"'):
        _load(path, output="softmax")


def test_a_card_that_agrees_is_quiet(tmp_path, caplog):
    path = _write(nn.Sequential(_body(), nn.Softmax(1)).eval(), tmp_path / "m.onnx")
    caplog.set_level(logging.INFO)
    assert _load(path, output="softmax").card.output == "softmax"
    assert not _warnings(caplog)


def test_a_sigmoid_only_the_card_tells_is_checked_against_the_numbers(tmp_path):
    class Sigmoid(nn.Module):
        def forward(self, z):
            return 1 / (1 + torch.exp(-z))

    body = _body()
    path = _write(nn.Sequential(body, Sigmoid()).eval(), tmp_path / "m.onnx")
    loaded = _load(path, output="sigmoid")  # nothing to tell it from logits but the card
    assert isinstance(loaded.module, LogitsOf)
    with torch.no_grad():
        assert torch.allclose(loaded.module(_x()), body(_x()), atol=1e-4)
    with pytest.raises(ModelError, match=r"are not values in \[0, 1\]"):
        _load(_write(body, tmp_path / "logits.onnx"), output="sigmoid")


def test_a_built_in_architecture_returns_logits(tmp_path):
    card = ModelCard("small_cnn", num_classes=3, output="softmax", arch_kwargs={"widths": [4, 8]})
    from revise.models.architectures import build

    with pytest.raises(ModelError, match=r"architecture 'small_cnn' returns logits"):
        settle(build(card), card, "net", opaque=False)


def test_an_unknown_output_kind_is_refused_with_a_suggestion():
    with pytest.raises(ModelError, match=r"output must be one of .*not 'probabilities' \(did "):
        ModelCard.from_dict({"architecture": "onnx", "num_classes": 2, "output": "probabilities"})


# --------------------------------------------------------------- training sees logits


def _separable(n: int = 64) -> DecodedSet:
    g = torch.Generator().manual_seed(3)
    y = torch.arange(n) % CLASSES
    x = 0.1 * torch.rand(n, *SHAPE, generator=g)
    for c in range(CLASSES):  # each class lights its own quadrant
        r, q = divmod(c, 2)
        x[y == c, :, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 0.8
    return DecodedSet(x, y)


@pytest.mark.parametrize("suffix", [".onnx", ".ts"])
def test_training_a_softmax_model_goes_far_below_the_probability_floor(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    how = "legacy16" if suffix == ".onnx" else "ts"
    _write(nn.Sequential(_body(), nn.Softmax(1)).eval(), path, how)
    loaded = _load(path)
    data = _separable()
    config = TrainConfig(epochs=40, batch_size=32, lr=0.05, cosine=False)
    net = train_classifier(loaded.module, loaded.card, data, config, device="cpu")
    model = PixelSpaceModel(net, loaded.card).eval()
    with torch.no_grad():
        logits = model(data.x)
        loss = F.cross_entropy(logits, data.y, reduction="none")
        wrong = F.cross_entropy(logits.softmax(1), data.y, reduction="none")
    assert float(loss.max()) < 0.25 < FLOOR  # per sample, well below what probabilities allow
    assert float(wrong.min()) >= FLOOR - 1e-4  # the wrong reading: stuck above the floor


@pytest.mark.parametrize(
    ("how", "suffix"), [("legacy16", ".onnx"), ("pt2", ".pt2"), ("ts", ".ts"), ("probe", ".onnx")]
)
def test_gradients_are_those_of_the_logits(tmp_path, how, suffix):
    body = _body()
    head = Softmax() if how == "probe" else nn.Softmax(1)
    written = "legacy16" if how == "probe" else how
    path = _write(nn.Sequential(body, head).eval(), tmp_path / f"m{suffix}", written)
    loaded = _load(path)
    x, y = _x(8).requires_grad_(True), torch.arange(8) % CLASSES
    F.cross_entropy(PixelSpaceModel(loaded.module, loaded.card)(x), y).backward()
    got = x.grad.clone()
    x.grad = None
    F.cross_entropy(PixelSpaceModel(body, loaded.card)(x), y).backward()
    assert torch.allclose(got, x.grad, rtol=1e-4, atol=1e-7), (got - x.grad).abs().max()
    if how == "pt2":  # the same weights under the same names: compare their gradients too
        for (name, p), (_, q) in zip(
            loaded.module.named_parameters(), body.named_parameters(), strict=True
        ):
            assert name.startswith("0.")
            assert p.grad is not None and torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7)


def test_an_unlearning_run_on_a_softmax_model_saves_what_reloads(tmp_path):
    from revise.unlearn.api import unlearn

    path = _write(nn.Sequential(_body(), nn.Softmax(1)).eval(), tmp_path / "m.onnx")
    loaded = _load(path)
    data = _separable()
    forget = DecodedSet(data.x[:8], data.y[:8])
    retain = DecodedSet(data.x[8:], data.y[8:])
    config = {"epochs": 2, "batch_size": 16, "lr": 0.05}
    result = unlearn(
        loaded.module, loaded.card, forget, retain, method="finetune", config=config, device="cpu"
    )
    folder = save_model(result.model, result.card, tmp_path / "run")
    again = load_model(folder)
    assert again.card.output == "softmax"
    assert weights_digest(again.module) == weights_digest(result.model)
    with torch.no_grad():
        assert torch.allclose(again.module(_x()), result.model(_x()), atol=1e-5)


# --------------------------------------------------------------- saving, wrappers, PixelSpaceModel


@pytest.mark.parametrize(("how", "suffix"), [("legacy16", ".onnx"), ("ts", ".ts")])
def test_a_saved_softmax_model_ships_its_graph_and_reloads_the_same(tmp_path, how, suffix):
    path = _write(nn.Sequential(_body(), nn.Softmax(1)).eval(), tmp_path / f"m{suffix}", how)
    loaded = _load(path)
    with torch.no_grad():
        for p in loaded.module.parameters():
            p.add_(0.01)
    again = load_model(save_model(loaded.module, loaded.card, tmp_path / "saved"))
    assert again.card.output == "softmax"
    wrapped = how == "ts"  # TorchScript cannot be edited: its probabilities are inverted
    assert isinstance(again.module, LogitsOf) == isinstance(loaded.module, LogitsOf) == wrapped
    assert weights_digest(again.module) == weights_digest(loaded.module)
    with torch.no_grad():
        assert torch.allclose(again.module(_x()), loaded.module(_x()), atol=1e-6)


class _Named(nn.Module):
    """A network with a child called ``net``, as the wrapper calls its own."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(_body(seed), nn.Softmax(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("make", [lambda s: nn.Sequential(_body(s), nn.Softmax(1)), _Named])
def test_logits_of_keeps_the_networks_state_dict_keys(make):
    net = make(0).eval()
    wrapped = LogitsOf(net, "softmax")
    assert list(wrapped.state_dict()) == list(net.state_dict())
    other = make(5)
    wrapped.load_state_dict(other.state_dict())
    assert weights_digest(wrapped) == weights_digest(other)
    assert not wrapped.training  # follows the network's mode
    outer = PixelSpaceModel(wrapped, _card())  # inside another module, too
    assert list(outer.state_dict()) == ["mean", "std", *(f"net.{k}" for k in net.state_dict())]
    outer.load_state_dict(outer.state_dict())


def test_pixel_space_model_refuses_probabilities_but_takes_log_probabilities():
    card = _card()
    with pytest.raises(ModelError, match=r"returns softmax probabilities .*settle"):
        PixelSpaceModel(nn.Sequential(_body(), nn.Softmax(1)), card)
    PixelSpaceModel(nn.Sequential(_body(), nn.LogSoftmax(1)), card)
    net, settled = settle(nn.Sequential(_body(), nn.Softmax(1)), card, "net")
    assert settled.output == "softmax" and isinstance(net[1], nn.Identity)
    PixelSpaceModel(net, settled)


def test_deployed_puts_the_activation_back_and_refuses_a_mismatch():
    body = _body()
    x = _x()
    with torch.no_grad():
        for kind, act in ACTIVATIONS.items():
            assert torch.allclose(deployed(body, kind)(x), act(body(x)))
        assert deployed(body, "logits") is body
    with pytest.raises(ModelError, match=r'card says "output": "logits"'):
        deployed(nn.Sequential(body, nn.Softmax(1)), "logits")
