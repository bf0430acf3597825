from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from revise.errors import ExportError
from revise.export import onnx as rx
from revise.export.onnx import check_parity, export_onnx, read_metadata, set_metadata
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
    assert props["site"] == "test" and props["revise.exporter"] == "dynamo"
    assert json.loads(props["revise.card"])["std"] == [0.25]
    copy = tmp_path / "signed.onnx"
    copy.write_bytes(result.path.read_bytes())
    merged = set_metadata(copy, {"signature": "abc", "site": "other"})
    after = read_metadata(copy)
    assert after == merged
    assert after["signature"] == "abc" and after["site"] == "other"
    assert after["revise.card"] == props["revise.card"]  # pre-existing prop preserved
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
    real = rx._torch_logits
    monkeypatch.setattr(rx, "_torch_logits", lambda m, x: real(m, x) + 0.01)
    target = tmp_path / "model.onnx"
    with pytest.raises(ExportError) as err:
        export_onnx(_trained(), _card(), target, samples=_samples())
    msg = str(err.value)
    assert "disagrees" in msg and "max |diff|=0.01" in msg and "label agreement=1.0000" in msg
    assert "no file was written" in msg
    assert os.listdir(tmp_path) == []


def test_opset16_falls_back_to_legacy_exporter_and_loads_back(tmp_path):
    model = _trained().train()
    result = export_onnx(model, _card(), tmp_path / "m16.onnx", samples=_samples(), opset=16)
    assert model.training  # exported and compared in eval mode, then restored
    model.eval()
    assert result.opset == 16 and result.exporter == "torchscript"
    assert "opset" in result.fallback_reason and result.parity.passed
    assert read_metadata(result.path)["revise.exporter"] == "torchscript"
    loaded = load_model(result.path, card=_card())  # onnx2torch handles opset 16
    x = _samples(5)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), model(x), atol=1e-4)


def test_export_checks_samples(tmp_path):
    with pytest.raises(ExportError, match=r"\(N, 1, H, W\)"):
        export_onnx(_trained(), _card(), tmp_path / "x.onnx", samples=torch.zeros(4, 3, 16, 16))
    assert not (tmp_path / "x.onnx").exists()
