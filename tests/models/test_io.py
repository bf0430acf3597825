from __future__ import annotations

import copy
import io
import json
import os
import random
import warnings
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file

from revise._io.digests import sha256_file
from revise.errors import ModelError, UnknownNameError
from revise.models._onnx_import import _import_onnx2torch
from revise.models._sniff import _sniff
from revise.models.architectures import build, head_module_name
from revise.models.card import ModelCard
from revise.models.io import LoadedModel, load_model, save_model, weights_digest

SHAPE = (1, 16, 16)


@pytest.fixture
def card() -> ModelCard:
    return ModelCard(
        "small_cnn",
        num_classes=3,
        in_channels=1,
        input_size=(16, 16),
        mean=(0.5,),
        std=(0.25,),
        arch_kwargs={"widths": [8, 16]},
        class_names=["a", "b", "c"],
    )


@pytest.fixture
def model(card) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(card)
    m.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            m(torch.randn(8, *SHAPE) * 2 + 0.3)
    return m.eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))


def _perturbed(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05)


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, atol: float = 0.0) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert torch.allclose(ya, yb, atol=atol, rtol=0), (ya - yb).abs().max()


def _legacy_onnx(module: torch.nn.Module, path, opset: int = 16) -> None:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(2, *SHAPE),),
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
    path.write_bytes(buf.getvalue())


# ---------------------------------------------------------------------------- safetensors


def test_save_load_folder_round_trip(tmp_path, model, card, x):
    folder = save_model(model, card, tmp_path / "out")
    assert sorted(os.listdir(folder)) == ["card.json", "model.safetensors"]
    loaded = load_model(folder)
    assert isinstance(loaded, LoadedModel) and loaded.format == "revise_folder"
    assert not loaded.module.training
    _same(model, loaded.module, x)
    assert weights_digest(loaded.module) == weights_digest(model)
    assert loaded.card.class_names == ["a", "b", "c"] and loaded.card.std == (0.25,)
    # a card without a source digest gets the weights file's
    assert loaded.card.source_sha256 == sha256_file(folder / "model.safetensors")
    # saving again keeps the card's digest of the original source
    again = save_model(loaded.module, loaded.card, tmp_path / "again")
    assert load_model(again).card.source_sha256 == loaded.card.source_sha256


def test_weights_digest_tracks_weights(model):
    d = weights_digest(model)
    assert d == weights_digest(copy.deepcopy(model)) == weights_digest(model.state_dict())
    _perturbed(model)
    assert weights_digest(model) != d


def test_safetensors_file_with_card_beside_or_given(tmp_path, model, card, x):
    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(ModelError, match=r"weights only.*pass card CARD\.json"):
        load_model(path)
    loaded = load_model(path, card=card)
    _same(model, loaded.module, x)
    assert loaded.card.source_format == "safetensors"
    assert loaded.card.source_sha256 == sha256_file(path)
    card.save(tmp_path / "net.card.json")
    _same(model, load_model(path).module, x)
    _same(model, load_model(path, card=str(tmp_path / "net.card.json")).module, x)


def test_safetensors_with_wrong_shapes_names_the_keys(tmp_path, model, card):
    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    narrow = ModelCard("small_cnn", 3, in_channels=1, arch_kwargs={"widths": [4, 16]})
    with pytest.raises(ModelError) as err:
        load_model(path, card=narrow)
    msg = str(err.value)
    assert str(path) in msg and "wrong shape" in msg and "features.0.weight" in msg
    assert "(file (8, 1, 3, 3), model (4, 1, 3, 3))" in msg
    plain = ModelCard("small_cnn", 3, in_channels=1)
    with pytest.raises(ModelError, match=r"missing: .*unexpected: .* and \d+ more"):
        load_model(path, card=plain, architecture="allcnn")


def test_sniffing_safetensors_whose_header_length_looks_like_a_pickle(tmp_path):
    path = tmp_path / "w.safetensors"
    for pad in range(1000):
        save_file({"w": torch.zeros(2)}, str(path), metadata={"p": "x" * pad})
        if path.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03"):
            break
    else:
        pytest.skip("no header length with the pickle-like prefix")
    assert _sniff(path) == "safetensors"


def test_unknown_architecture_says_did_you_mean(tmp_path, model, card):
    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(UnknownNameError, match="did you mean small_cnn"):
        load_model(path, card=card, architecture="smal_cnn")


def test_text_file_named_safetensors(tmp_path, card):
    path = tmp_path / "model.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    with pytest.raises(ModelError) as err:
        load_model(path, card=card)
    msg = str(err.value)
    assert str(path) in msg and "safetensors" in msg and "text file" in msg
    assert "git-lfs" in msg and "copy it again" in msg
    card.save(tmp_path / "card.json")  # the same file inside a revise folder
    with pytest.raises(ModelError, match="text file"):
        load_model(tmp_path)


# ---------------------------------------------------------------------------- torch.save


def test_state_dict_pt_is_loaded_weights_only(tmp_path, model, card, x, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path
    )
    with pytest.raises(ModelError, match="architecture"):
        load_model(path)
    loaded = load_model(path, card=card)
    _same(model, loaded.module, x)
    assert loaded.format == "state_dict" and loaded.card.source_format == "state_dict"
    # architecture only: channels and classes come from the weights, widths from the defaults
    plain = tmp_path / "plain.pth"
    default = build(ModelCard("small_cnn", 3, in_channels=1))
    torch.save(default.state_dict(), plain)
    inferred = load_model(plain, architecture="small_cnn")
    assert (inferred.card.in_channels, inferred.card.num_classes) == (1, 3)
    assert calls and all(c is True for c in calls)


def test_pickled_whole_model_is_refused(tmp_path, model):
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(ModelError, match=r"pickled.*not unpickle.*state_dict"):
        load_model(path, architecture="small_cnn")


# ---------------------------------------------------------------------------- TorchScript


def _torchscript(model, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, torch.randn(2, *SHAPE)).save(str(path))


def test_torchscript_load_and_save_round_trip(tmp_path, model, card, x):
    path = tmp_path / "model.ts"
    _torchscript(model, path)
    with pytest.raises(ModelError, match=r"pass card CARD\.json"):
        load_model(path)
    loaded = load_model(path, card=card)
    assert loaded.format == "torchscript" and loaded.card.architecture == "torchscript"
    assert loaded.card.source_sha256 == sha256_file(path)
    assert loaded.card.mean == (0.5,)
    _same(model, loaded.module, x)
    probed = load_model(path, input_shape=SHAPE)
    assert probed.card.num_classes == 3 and probed.card.in_channels == 1
    assert head_module_name(loaded.module, 3) == "fc"
    # a .pt that is TorchScript is fine too
    pt = tmp_path / "model.pt"
    pt.write_bytes(path.read_bytes())
    _same(model, load_model(pt, card=card).module, x)

    _perturbed(loaded.module)
    folder = save_model(loaded.module, loaded.card, tmp_path / "revised")
    assert (folder / "graph.ts").read_bytes() == path.read_bytes()  # the original graph
    back = load_model(folder)
    _same(loaded.module, back.module, x)
    assert back.card.source_sha256 == sha256_file(path)
    # a deep copy forgets where it came from: the graph is re-serialised instead
    clone = copy.deepcopy(loaded.module)
    folder2 = save_model(clone, loaded.card, tmp_path / "revised2")
    _same(clone, load_model(folder2).module, x)


def test_file_named_ts_that_is_not_torchscript(tmp_path, model):
    path = tmp_path / "model.ts"
    torch.save(model.state_dict(), path)
    with pytest.raises(ModelError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg and "TorchScript" in msg and "torch.save checkpoint" in msg
    assert "rename it to model.pt" in msg
    path.write_text("not a model")
    with pytest.raises(ModelError, match=r"should be a TorchScript archive.*text file"):
        load_model(path)


# ---------------------------------------------------------------------------- torch.export


def test_torch_export_pt2_load_and_save_round_trip(tmp_path, model, x):
    path = tmp_path / "model.pt2"
    program = torch.export.export(
        model, (torch.randn(2, *SHAPE),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(path))
    loaded = load_model(path)  # input shape comes from the program itself
    assert loaded.format == "torch_export"
    assert (loaded.card.in_channels, loaded.card.input_size, loaded.card.num_classes) == (
        1,
        (16, 16),
        3,
    )
    _same(model, loaded.module, x, atol=1e-6)
    assert head_module_name(loaded.module, 3) == "fc"
    loaded.module.train()
    loaded.module.eval()  # torch.export's module() refuses these; revise's does not
    _perturbed(loaded.module)
    folder = save_model(loaded.module, loaded.card, tmp_path / "revised")
    assert (folder / "graph.pt2").is_file()
    _same(loaded.module, load_model(folder).module, x)


class _RunsOnUnpickle:
    """Unpickling this object writes a file: proof that code from the archive ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tampered_pt2(clean: Path, out: Path, entry: str, payload: bytes) -> str:
    """A copy of ``clean`` with one pickled payload torch.export.load would unpickle: a weight
    flagged use_pickle, or an opaque Python object among the constants. Returns its name."""
    import zipfile

    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(out, "w") as dst:
        kind = "weights" if entry == "weight" else "constants"
        config_name = next(n for n in src.namelist() if n.endswith(f"_{kind}_config.json"))
        config = json.loads(src.read(config_name))
        if entry == "weight":
            name, meta = next(iter(config["config"].items()))
            meta["use_pickle"] = True
        else:
            name = "injected"
            meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}
            meta["tensor_meta"] = None
            config["config"][name] = meta
        root = config_name.split("/")[0]
        payload_name = f"{root}/data/{kind}/{meta['path_name']}"
        for member in src.namelist():
            if member != payload_name:
                data = json.dumps(config).encode() if member == config_name else src.read(member)
                dst.writestr(member, data)
        dst.writestr(payload_name, payload)
    return name


@pytest.mark.parametrize("entry", ["weight", "constant"])
def test_torch_export_archive_with_pickled_payload_is_refused_before_loading(
    tmp_path, model, entry
):
    """A .pt2 with a payload torch.export.load would unpickle is refused; nothing in it runs."""
    import pickle

    clean = tmp_path / "clean.pt2"
    batch = {0: torch.export.Dim("batch")}  # revise refuses fixed-batch programs
    program = torch.export.export(model, (torch.randn(2, *SHAPE),), dynamic_shapes=(batch,))
    torch.export.save(program, str(clean))
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt2"
    name = _tampered_pt2(clean, evil, entry, pickle.dumps(_RunsOnUnpickle(str(marker))))
    with pytest.raises(ModelError, match=rf"refusing to load.*{name}"):
        load_model(evil)
    assert not marker.exists()
    assert load_model(clean).format == "torch_export"  # the clean archive still loads


# ---------------------------------------------------------------------------- ONNX


def test_onnx_opset16_load_and_save_round_trip(tmp_path, model, card, x):
    path = tmp_path / "model.onnx"
    _legacy_onnx(model, path)
    loaded = load_model(path)
    assert loaded.format == "onnx" and loaded.card.num_classes == 3
    assert loaded.card.input_size == (16, 16)
    _same(model, loaded.module, x, atol=1e-4)
    head = head_module_name(loaded.module, 3)
    assert isinstance(loaded.module.get_submodule(head), torch.nn.Linear)
    with_card = load_model(path, card=card)
    assert with_card.card.class_names == ["a", "b", "c"]

    _perturbed(loaded.module)
    folder = save_model(loaded.module, loaded.card, tmp_path / "revised")
    assert (folder / "graph.onnx").read_bytes() == path.read_bytes()
    back = load_model(folder)
    _same(loaded.module, back.module, x)
    with pytest.raises(ModelError, match="graph="):
        save_model(torch.nn.Linear(2, 2), loaded.card, tmp_path / "nograph")


def test_onnx_from_todays_exporter_opset_18_loads_like_the_model(tmp_path, model, card, x):
    """torch.onnx's default exporter (and revise's own bundles) write opset 18 with ReduceMean
    axes as an input and Reshape allowzero=1, which onnx2torch refuses as they are; the loader
    rewrites them losslessly, so a revised model can be revised again from its bundle."""
    import onnx

    from revise.export.onnx import export_onnx

    path = tmp_path / "model.onnx"
    export_onnx(model.eval(), card, path)
    proto = onnx.load(str(path))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
    assert any(n.op_type == "ReduceMean" for n in proto.graph.node)
    loaded = load_model(path)
    assert loaded.format == "onnx" and loaded.card.input_size == (16, 16)
    _same(model, loaded.module, x, atol=1e-4)


def test_random_bytes_named_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(random.Random(0).randbytes(2048) + b"\0")
    with pytest.raises(ModelError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg and "should be an ONNX model" in msg
    assert "re-export" in msg


def test_onnx_with_an_op_onnx2torch_cannot_convert(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["input"], ["logits"], axis=1)],
        "hardmax",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(proto, full_check=True)
    path = tmp_path / "odd.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelError) as err:
        load_model(path, input_shape=(4, 1, 1))
    msg = str(err.value)
    assert "Hardmax" in msg and str(path) in msg
    assert "opset <= 16" in msg and "safetensors" in msg


def test_onnx2torch_import_leaves_no_fake_torchvision():
    import sys

    _import_onnx2torch()
    assert "torchvision" not in sys.modules or hasattr(sys.modules["torchvision"], "__version__")


# ---------------------------------------------------------------------------- other


def test_missing_path_and_unknown_folder(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="MONAI bundle"):
        load_model(tmp_path / "empty")


def test_monai_like_bundle(tmp_path, model, x):
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    meta = {
        "name": "toy classifier",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16]}},
            "outputs": {"pred": {"num_channels": 3, "channel_def": {"0": "x", "1": "y", "2": "z"}}},
        },
    }
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    _torchscript(model, bundle / "models" / "model.ts")
    loaded = load_model(bundle)
    assert loaded.format == "monai_bundle"
    assert loaded.card.class_names == ["x", "y", "z"] and loaded.card.input_size == (16, 16)
    _same(model, loaded.module, x)


def test_resolve_device_refuses_what_this_machine_cannot_run():
    """The one check behind --device and the Python API's device= arguments."""
    from revise.errors import UsageError
    from revise.models.pixel import resolve_device

    assert resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(UsageError, match="'gpu' is not a device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device is available"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(UsageError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
