from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from revise.errors import ExportError, ModelError
from revise.export import parity as rx_parity
from revise.export.onnx import export_onnx
from revise.export.onnx_file import read_metadata, set_metadata
from revise.export.parity import check_parity
from revise.export.triton import triton_config
from revise.models.architectures import build
from revise.models.card import ModelCard
from revise.models.io import load_model

SHAPE = (1, 16, 16)


def _card() -> ModelCard:
    return ModelCard(
        "small_cnn",
        num_classes=3,
        in_channels=1,
        input_size=(16, 16),
        mean=(0.5,),
        std=(0.25,),
        arch_kwargs={"widths": [8, 16]},
    )


def _trained(seed: int = 0) -> torch.nn.Module:
    """A briefly trained small CNN: real BatchNorm statistics and non-trivial logits."""
    torch.manual_seed(seed)
    model = build(_card())
    x = torch.randn(64, *SHAPE)
    y = torch.randint(0, 3, (64,))
    x = x + y.view(-1, 1, 1, 1).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _samples(n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, *SHAPE, generator=g) + torch.randint(0, 3, (n, 1, 1, 1), generator=g)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    model = _trained()
    result = export_onnx(
        model, _card(), folder / "model.onnx", samples=_samples(), metadata={"site": "test"}
    )
    return model, result, folder


def test_export_writes_one_checked_file(exported):
    _, result, folder = exported
    assert os.listdir(folder) == ["model.onnx"]  # no model.onnx.data, no .part left over
    onnx.checker.check_model(str(result.path), full_check=True)
    proto = onnx.load(str(result.path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert result.exporter == "dynamo" and result.opset == 18 and result.fallback_reason == ""
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    (inp,) = proto.graph.input
    assert inp.name == "input" and proto.graph.output[0].name == "logits"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 16, 16]


def test_dynamic_batch_in_onnxruntime(exported):
    model, result, _ = exported
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = _samples(n)
        (out,) = session.run(["logits"], {"input": x.numpy()})
        assert out.shape == (n, 3)
        with torch.no_grad():
            np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-3, atol=1e-5)


def test_parity_report(exported):
    _, result, _ = exported
    parity = result.parity
    assert parity is not None and parity.passed and parity.n == 24
    assert parity.label_agreement == 1.0 and parity.max_abs_diff < 1e-5
    assert parity.providers == ["CPUExecutionProvider"]
    assert result.to_dict()["parity"]["passed"] is True


def test_metadata_is_merged_not_replaced(exported, tmp_path):
    _, result, _ = exported
    props = read_metadata(result.path)
    assert props["site"] == "test" and props["com.revise.exporter"] == "dynamo"
    assert json.loads(props["com.revise.card"])["std"] == [0.25]
    copy = tmp_path / "signed.onnx"
    copy.write_bytes(result.path.read_bytes())
    merged = set_metadata(copy, {"signature": "abc", "site": "other"})
    after = read_metadata(copy)
    assert after == merged
    assert after["signature"] == "abc" and after["site"] == "other"
    assert after["com.revise.card"] == props["com.revise.card"]  # pre-existing prop preserved
    onnx.checker.check_model(str(copy), full_check=True)


def test_check_parity_against_a_different_model_fails(exported):
    model, result, _ = exported
    other, x = _trained(seed=1), _samples()
    report = check_parity(other, result.path, x)
    assert not report.passed and report.max_abs_diff > 1e-3
    with torch.no_grad():  # the file computes ``model``: agreement is the two models' argmax
        agree = float((model(x).argmax(1) == other(x).argmax(1)).float().mean())
    assert agree < 1.0 and report.label_agreement == pytest.approx(agree)


def test_broken_parity_raises_with_numbers_and_leaves_no_file(tmp_path, monkeypatch):
    real = rx_parity._torch_logits
    monkeypatch.setattr(rx_parity, "_torch_logits", lambda m, x: real(m, x) + 0.01)
    target = tmp_path / "model.onnx"
    with pytest.raises(ExportError) as err:
        export_onnx(_trained(), _card(), target, samples=_samples())
    msg = str(err.value)
    assert "disagrees" in msg and "max |diff|=0.01" in msg and "label agreement=1.0000" in msg
    assert "no file was written" in msg
    assert os.listdir(tmp_path) == []


def test_opset16_is_written_by_the_dynamo_exporter_and_loads_back(tmp_path):
    model = _trained().train()
    result = export_onnx(model, _card(), tmp_path / "m16.onnx", samples=_samples(), opset=16)
    assert model.training  # exported and compared in eval mode, then restored
    model.eval()
    # torch writes opset 18 and cannot take this graph down; ONNX's converter can
    assert result.opset == 16 and result.exporter == "dynamo" and result.fallback_reason == ""
    assert result.parity.passed and read_metadata(result.path)["com.revise.exporter"] == "dynamo"
    loaded = load_model(result.path, card=_card())  # onnx2torch handles opset 16
    x = _samples(5)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), model(x), atol=1e-4)


def test_export_checks_samples(tmp_path):
    with pytest.raises(ExportError, match=r"\(N, 1, H, W\)"):
        export_onnx(_trained(), _card(), tmp_path / "x.onnx", samples=torch.zeros(4, 3, 16, 16))
    assert not (tmp_path / "x.onnx").exists()


# ---------------------------------------------------------------- what the graph returns

ACTIVATIONS = {
    "softmax": torch.nn.Softmax(1),
    "log_softmax": torch.nn.LogSoftmax(1),
    "sigmoid": torch.nn.Sigmoid(),
}
NAMES = {"softmax": "probabilities", "log_softmax": "log_probabilities"}
NAMES["sigmoid"] = "sigmoid_probabilities"


def _run(path, x: torch.Tensor) -> tuple[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.get_outputs()
    return out.name, session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("kind", ["softmax", "log_softmax", "sigmoid"])
def test_an_activation_the_card_names_is_put_back_and_named(tmp_path, kind):
    model, x = _trained(), _samples()
    card = dataclasses.replace(_card(), output=kind)
    result = export_onnx(model, card, tmp_path / "m.onnx", samples=x)
    assert result.output_name == NAMES[kind] and result.parity.passed
    name, out = _run(result.path, x)
    assert name == NAMES[kind]
    with torch.no_grad():
        want = ACTIVATIONS[kind](model(x)).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-6)
    if kind == "softmax":
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)  # rows of probabilities
    assert json.loads(read_metadata(result.path)["com.revise.card"])["output"] == kind
    # the file loads back as what it is: the card agrees with its final node
    loaded = load_model(result.path, card=dataclasses.replace(card, architecture="onnx"))
    with torch.no_grad():
        got = loaded.module(x)
    if kind == "log_softmax":
        got, want = got, model(x).log_softmax(1)
    else:
        want = model(x)
    assert torch.allclose(got, want, atol=1e-4)


def _vendor_softmax(path) -> torch.nn.Module:
    """A vendor's ONNX classifier whose graph ends in Softmax, output named "out"."""
    net = torch.nn.Sequential(_trained(), torch.nn.Softmax(1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net, (_samples(2),), dynamo=True, dynamic_shapes=({0: torch.export.Dim("b")},)
        )
    program.save(str(path))
    return net


def test_a_vendor_softmax_model_is_exported_as_probabilities_by_the_dynamo_exporter(tmp_path):
    vendor = tmp_path / "vendor.onnx"
    _vendor_softmax(vendor)
    loaded = load_model(vendor, card=dataclasses.replace(_card(), architecture="onnx"))
    assert loaded.card.output == "softmax"  # found: the graph ends in Softmax
    x = _samples()
    # the loaded module returns logits; the vendor's file, probabilities: compared like with like
    assert check_parity(loaded.module, vendor, x).passed
    result = export_onnx(loaded.module, loaded.card, tmp_path / "m.onnx", samples=x)
    # onnx2torch's graph (its Reshape asks its shape tensor a question torch.export refuses)
    # goes through the modern exporter, with no fallback
    assert result.exporter == "dynamo" and result.fallback_reason == ""
    name, out = _run(result.path, x)
    assert name == "probabilities"
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, _run(vendor, x)[1], rtol=1e-4, atol=1e-6)


def test_a_network_ending_in_softmax_is_never_exported_as_logits(tmp_path, caplog):
    net = torch.nn.Sequential(_trained(), torch.nn.Softmax(1)).eval()
    with pytest.raises(ModelError, match=r'card says "output": "logits".*"output": "softmax"'):
        export_onnx(net, dataclasses.replace(_card(), output="logits"), tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()
    caplog.set_level(logging.INFO)
    result = export_onnx(net, _card(), tmp_path / "b.onnx", samples=_samples())  # card silent
    assert result.output_name == "probabilities" and result.parity.passed
    said = [r.getMessage() for r in caplog.records if r.name == "revise.export.onnx"]
    assert any("does not say (field output)" in m and "'probabilities'" in m for m in said)
    _, out = _run(result.path, _samples())
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)  # not softmax twice


def test_triton_config_names_the_output_for_what_it_is():
    softmax = dataclasses.replace(_card(), output="softmax")
    assert 'name: "probabilities"' in triton_config("m", softmax)
    assert 'name: "logits"' in triton_config("m", _card())
    assert 'name: "x"' in triton_config("m", _card(), output="x")


# ---------------------------------------------------------------- falling back, quietly


class _DataDependent(torch.nn.Module):
    """A branch on a value: torch.export refuses it (and prints the graph it failed on); the
    legacy tracer warns and follows the branch taken (the same either way here)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e30:
            return self.net(x)
        return self.net(x) * 1.0


@pytest.mark.parametrize("which", ["torchscript", "data_dependent"])
def test_a_fallback_is_one_plain_line(tmp_path, capfd, which):
    net, model = _trained(), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace says it is deprecated
        model = torch.jit.trace(net, _samples(2)) if which == "torchscript" else _DataDependent(net)
    capfd.readouterr()
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # as the CLI logs: to stderr, from INFO
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        result = export_onnx(model, _card(), tmp_path / "m.onnx", samples=_samples())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    out, err = capfd.readouterr()
    assert result.exporter == "torchscript" and result.parity.passed
    assert out == "" and "\x1b" not in err
    fallback, exported = err.splitlines()  # nothing else: no tracer warnings, no graph dumps
    assert fallback == (
        "WARNING revise.export.onnx: ONNX export: the dynamo exporter cannot export this model "
        f"({result.fallback_reason}); using the legacy TorchScript exporter instead"
    )
    assert exported.startswith("INFO revise.export.onnx: exported ")
    reason = {"torchscript": "ValueError: Exporting a ScriptModule is not supported."}
    reason["data_dependent"] = "GuardOnDataDependentSymNode: Could not guard on data-dependent"
    assert result.fallback_reason.startswith(reason[which])
