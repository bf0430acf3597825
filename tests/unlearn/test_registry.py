"""Every registered method, through the same checks: a new method is tested by registering it."""

from __future__ import annotations

import pytest
import torch

from revise.errors import UsageError
from revise.unlearn.api import make_config, unlearn
from revise.unlearn.base import METHODS
from revise.unlearn.evaluate import predict


def _forget_confidence(net, digits) -> float:
    """Mean probability of the forget images' own labels (the original's is about 0.99)."""
    logits = predict(net, digits["card"], digits["forget"].x, device="cpu")
    own = logits.softmax(1)[torch.arange(len(logits)), digits["forget"].y]
    return own.mean().item()


def _forget_loss(net, digits) -> float:
    logits = predict(net, digits["card"], digits["forget"].x, device="cpu")
    return torch.nn.functional.cross_entropy(logits, digits["forget"].y).item()


# Methods that only fine-tune on the retain set: one epoch need not raise the forget-set loss
# (the model already gets every forget image right, and retain training can sharpen it); they
# get three epochs, and a smaller rise (l1_sparse: x1.5, cf_k: x2.2).
RETAIN_ONLY = {"finetune", "cf_k", "l1_sparse"}


@pytest.mark.parametrize("name", METHODS.names())
def test_method_is_finite_lowers_forget_confidence_and_is_deterministic(digits, name):
    card, net = digits["card"], digits["net"]
    args = (net, card, digits["forget"], digits["retain"])
    config = {"epochs": 3 if name in RETAIN_ONLY else 1}
    runs = [unlearn(*args, method=name, config=config, device="cpu", seed=5) for _ in range(2)]
    first, second = (run.model.state_dict() for run in runs)
    assert all(torch.isfinite(v).all() for v in first.values() if v.is_floating_point())
    assert first.keys() == net.state_dict().keys()
    assert all(first[k].shape == v.shape for k, v in net.state_dict().items())
    assert all(torch.equal(first[k], second[k]) for k in first)
    # bounds the original fails: each method must move the forget images away from their labels
    assert _forget_confidence(runs[0].model, digits) < _forget_confidence(net, digits) - 1e-3
    assert runs[0].record.method == name and runs[0].record.steps >= 1
    before = net.state_dict()
    moved = max((first[k].float() - v.float()).abs().max().item() for k, v in before.items())
    assert moved > 1e-3, f"{name} left the weights as they were"
    rise = 1.25 if name in RETAIN_ONLY else 1.5
    assert _forget_loss(runs[0].model, digits) > rise * _forget_loss(net, digits)


@pytest.mark.parametrize("name", ["psg", "finetune", "neggrad_plus"])
def test_a_run_that_diverges_is_refused_not_handed_on(digits, name):
    from revise.errors import DivergedError

    args = (digits["net"], digits["card"], digits["forget"], digits["retain"])
    with pytest.raises(DivergedError, match=r"diverged: \d+ of \d+ weight tensors") as caught:
        unlearn(*args, method=name, config={"epochs": 1, "lr": 1e12}, device="cpu")
    assert "lower the learning rate (lr=1e+12)" in str(caught.value)


@pytest.mark.slow  # compiles C++ kernels
def test_compiled_run_agrees_with_eager(digits):
    """torch.compile changes how the passes run, not what they compute."""
    args = (digits["net"], digits["card"], digits["forget"], digits["retain"])
    config = {"epochs": 1, "phi": 1.0, "freeze_bn": True, "lr": 1e-3}
    eager = unlearn(*args, method="psg", config=config, device="cpu", seed=3)
    compiled = unlearn(*args, method="psg", config=config, device="cpu", seed=3, compile=True)
    assert compiled.record.compiled is True and eager.record.compiled is False
    e, c = eager.model.state_dict(), compiled.model.state_dict()
    assert e.keys() == c.keys()  # compiled in place: the weights keep their names
    moved = max((e[k] - digits["net"].state_dict()[k]).abs().max().item() for k in e)
    assert moved > 1e-3  # the run changed the weights, so agreement below is not vacuous
    for key in e:
        torch.testing.assert_close(c[key], e[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": "-0.1"}, "lr must be > 0"),
        ({"lr": "nan"}, "lr must be > 0 and finite"),
        ({"lr": "inf"}, "lr must be > 0 and finite"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1.5}, r"epochs must be a whole number, not 1\.5"),  # not silently 1
        ({"epochs": "inf"}, "epochs must be a whole number"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "many"}, "batch_size must be a number"),
    ],
)
def test_every_method_refuses_a_bad_learning_rate_epochs_or_batch_size(name, overrides, match):
    with pytest.raises(UsageError, match=match):
        make_config(name, overrides)


def test_a_misspelt_hyperparameter_gets_a_did_you_mean():
    with pytest.raises(UsageError, match=r"no hyperparameter\(s\) lamda \(did you mean lam"):
        make_config("psg", {"lamda": 0.1})
    assert make_config("psg", {"epochs": "3", "lr": "1e-3"}).epochs == 3
