"""Opening a model file must never run code from it (issue 13, class 1: code execution).

Probes kept here: what an attacker put in a torch.export archive (.pt2), and what revise must do.
Each payload writes a marker file; every probe first shows that plain torch runs it.

* sample inputs (data/sample_inputs/model.pt) that are a malicious pickle: torch.export.load
  unpickles them, falling back to weights_only=False. revise never reads sample inputs: the
  model loads and works, and the marker is never written;
* a weight or a tensor constant stored with use_pickle, an opaque Python object among the
  constants, a legacy pickled state dict (data/weights/model.pt, data/constants/model.pt), an
  archive in the old layout (serialized_*.pt beside the folder, which torch.export.load falls
  back to when the new layout fails): refused with one ModelError naming the file and the
  member, before torch sees the file;
* Python code in the program's JSON: a symbolic size (expr_str, which torch.export.load feeds
  to sympy.sympify, an eval) and a guard (guards_code, exec'd as the module's input check and
  run on its first call): refused, naming the expression;
* what torch would load but revise does not read, so cannot show harmless: a TorchScript custom
  object, an AOTInductor package (native code), an unknown member, a graph node calling a
  higher-order operator with a Python function: refused, naming the member or operator;
* a deflate bomb (a program member that inflates to 300 MB from a few hundred kB): refused by
  its declared size before it is read;
* the ways in from the command line: `revise evaluate --model`, `revise validate --original`,
  and `revise merge` of runs whose run.json names the archive as their base model: exit 1,
  one line naming the file, nothing written.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from revise.errors import ModelError
from revise.models.architectures import build
from revise.models.card import ModelCard
from revise.models.io import load_model

SHAPE = (1, 8, 8)  # the export site's images: 8x8 digits, 10 classes


class _WritesMarker:
    """Unpickling this opens (creates) the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _code(marker: Path) -> str:
    """A Python expression that creates the marker (and is true)."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch() is None"


@pytest.fixture(scope="module")
def clean_pt2(tmp_path_factory) -> Path:
    """torch.export.save of a small CNN with a dynamic batch: what a vendor would hand over."""
    card = ModelCard("small_cnn", 10, input_size=SHAPE[1:], arch_kwargs={"widths": [4]})
    torch.manual_seed(0)
    program = torch.export.export(
        build(card).eval(),
        (torch.zeros(2, *SHAPE),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    torch.export.save(program, str(path))
    return path


def _rewrite(
    clean: Path,
    out: Path,
    *,
    change: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    top: dict[str, bytes] | None = None,
) -> None:
    """A copy of ``clean`` with members (named inside its folder) changed, added or dropped, and
    ``top`` members added beside the folder."""
    change = dict(change or {})
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(out, "w") as dst:
        root = src.namelist()[0].split("/")[0]
        for name in src.namelist():
            inner = name.split("/", 1)[1]
            if inner not in drop:
                dst.writestr(name, change.pop(inner, None) or src.read(name))
        for inner, data in change.items():
            dst.writestr(f"{root}/{inner}", data)
        for name, data in (top or {}).items():
            dst.writestr(name, data)


def _member(clean: Path, inner: str) -> bytes:
    with zipfile.ZipFile(clean) as archive:
        return archive.read(f"{archive.namelist()[0].split('/')[0]}/{inner}")


def _config(clean: Path, kind: str) -> dict:
    return json.loads(_member(clean, f"data/{kind}/model_{kind}_config.json"))


def _with_constant(clean: Path, out: Path, path_name: str, payload: bytes) -> None:
    config = _config(clean, "constants")
    config["config"]["injected"] = {
        "path_name": path_name,
        "is_param": False,
        "use_pickle": True,
        "tensor_meta": None,
    }
    _rewrite(
        clean,
        out,
        change={
            "data/constants/model_constants_config.json": json.dumps(config).encode(),
            f"data/constants/{path_name}": payload,
        },
    )


def _pickled_weight(clean: Path, out: Path, marker: Path) -> None:
    config = _config(clean, "weights")
    meta = config["config"]["fc.weight"]
    meta["use_pickle"] = True
    _rewrite(
        clean,
        out,
        change={
            "data/weights/model_weights_config.json": json.dumps(config).encode(),
            f"data/weights/{meta['path_name']}": pickle.dumps(_WritesMarker(marker)),
        },
    )


def _program(clean: Path, out: Path, edit: Callable[[dict], None]) -> None:
    program = json.loads(_member(clean, "models/model.json"))
    edit(program)
    _rewrite(clean, out, change={"models/model.json": json.dumps(program).encode()})


def _sympy_expression(clean: Path, out: Path, marker: Path) -> None:
    """The batch size's symbol becomes code: torch.export.load evaluates it with sympify."""
    text = _member(clean, "models/model.json").decode()
    symbol = json.dumps("Symbol(")[:-1]
    found = re.search(rf'"expr_str": ({re.escape(symbol)}[^"]*")', text)
    assert found, "the clean program has a symbolic batch size"
    code = json.dumps(_code(marker))
    _rewrite(clean, out, change={"models/model.json": text.replace(found.group(1), code).encode()})


def _guard(clean: Path, out: Path, marker: Path) -> None:
    _program(clean, out, lambda program: program.update(guards_code=[_code(marker)]))


def _old_layout(clean: Path, out: Path, marker: Path) -> None:
    """Without archive_version the new layout fails; torch.export.load then reads torch 2.7's
    layout: serialized_*.pt members at the top of the zip, unpickled with a fallback."""
    from torch._export.serde.schema import SCHEMA_VERSION

    evil = pickle.dumps(_WritesMarker(marker))
    top = {
        "version": ".".join(map(str, SCHEMA_VERSION)).encode(),
        "serialized_exported_program.json": _member(clean, "models/model.json"),
        "serialized_state_dict.pt": evil,
        "serialized_constants.pt": evil,
        "serialized_example_inputs.pt": evil,
    }
    _rewrite(clean, out, drop=("archive_version",), top=top)


# kind -> (build the archive, what the refusal must name)
RUNS_IN_TORCH: dict[str, tuple[Callable[[Path, Path, Path], None], str]] = {
    "pickled weight": (_pickled_weight, "fc.weight"),
    "pickled tensor constant": (
        lambda c, o, m: _with_constant(c, o, "tensor_0", pickle.dumps(_WritesMarker(m))),
        "injected",
    ),
    "opaque object": (
        lambda c, o, m: _with_constant(c, o, "opaque_obj_0", pickle.dumps(_WritesMarker(m))),
        "injected",
    ),
    "legacy weights": (
        lambda c, o, m: _rewrite(
            c, o, change={"data/weights/model.pt": pickle.dumps(_WritesMarker(m))}
        ),
        "data/weights/model.pt",
    ),
    "legacy constants": (
        lambda c, o, m: _rewrite(
            c, o, change={"data/constants/model.pt": pickle.dumps(_WritesMarker(m))}
        ),
        "data/constants/model.pt",
    ),
    "old layout": (_old_layout, "serialized_"),
    "sympy expression": (_sympy_expression, "expression"),
    "guard code": (_guard, "guard"),
}


def _plain_torch(path: Path) -> None:
    """What a plain torch user does with the file: load it and run the model once."""
    with contextlib.suppress(Exception):
        torch.export.load(str(path)).module()(torch.zeros(2, *SHAPE))


def _evil(clean: Path, folder: Path, kind: str) -> tuple[Path, Path, str]:
    """(archive, marker, what the refusal names) for ``kind``, shown to run code in torch."""
    make, names = RUNS_IN_TORCH[kind]
    marker, path = folder / "code-ran", folder / "evil.pt2"
    make(clean, path, marker)
    _plain_torch(path)
    assert marker.exists(), f"plain torch did not run the {kind} payload: the probe is broken"
    marker.unlink()
    return path, marker, names


@pytest.mark.parametrize("kind", list(RUNS_IN_TORCH))
def test_code_plain_torch_runs_is_refused_and_never_runs(tmp_path, clean_pt2, kind):
    path, marker, names = _evil(clean_pt2, tmp_path, kind)
    with pytest.raises(ModelError) as caught:
        load_model(path)
    message = str(caught.value)
    assert not marker.exists(), f"revise ran the {kind} payload"
    assert message.startswith(f"{path}: refusing to load") and "\n" not in message, message
    assert names in message, message
    assert load_model(clean_pt2).format == "torch_export"  # the clean archive still loads


def test_pickled_sample_inputs_are_never_read(tmp_path, clean_pt2):
    """The probe's archive: sample inputs that run code. revise does not need them: the model
    loads without them, computes what the clean one does, and the marker is never written."""
    marker, path = tmp_path / "code-ran", tmp_path / "evil.pt2"
    evil = pickle.dumps(_WritesMarker(marker))
    _rewrite(clean_pt2, path, change={"data/sample_inputs/model.pt": evil})
    _plain_torch(path)
    assert marker.exists(), "plain torch did not unpickle the sample inputs: the probe is broken"
    marker.unlink()
    loaded = load_model(path)
    assert not marker.exists(), "revise unpickled the sample inputs"
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.module(x), load_model(clean_pt2).module(x))
    assert loaded.card.input_size == SHAPE[1:] and loaded.card.num_classes == 10


def _with_member(inner: str, data: bytes) -> Callable[[Path, Path], None]:
    return lambda clean, out: _rewrite(clean, out, change={inner: data})


def _wrapped_python_function(clean: Path, out: Path) -> None:
    """A node calling a higher-order operator that takes a Python function (os.system)."""
    node = {
        "target": "torch.ops.higher_order.wrap",
        "inputs": [
            {"name": "", "arg": {"as_operator": "torch.os.system"}, "kind": 1},
            {"name": "", "arg": {"as_string": "true"}, "kind": 1},
        ],
        "outputs": [{"as_none": True}],
        "metadata": {},
    }
    _program(clean, out, lambda program: program["graph_module"]["graph"]["nodes"].insert(0, node))


REFUSED_UNREAD: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "torchscript custom object": (
        lambda c, o: _with_constant(c, o, "custom_obj_0", b"PK\x03\x04"),
        "injected",
    ),
    "aotinductor package": (
        _with_member("data/aotinductor/model/model.so", b"\x7fELF"),
        "data/aotinductor/model/model.so",
    ),
    "unknown member": (_with_member("data/weights/notes.bin", b"x"), "data/weights/notes.bin"),
    "python function in the graph": (_wrapped_python_function, "torch.ops.higher_order.wrap"),
}


@pytest.mark.parametrize("kind", list(REFUSED_UNREAD))
def test_parts_revise_does_not_read_are_refused(tmp_path, clean_pt2, kind):
    make, names = REFUSED_UNREAD[kind]
    path = tmp_path / "odd.pt2"
    make(clean_pt2, path)
    with pytest.raises(ModelError) as caught:
        load_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: refusing to load") and names in message, message


def test_a_member_that_would_inflate_to_gigabytes_is_refused_before_it_is_read(tmp_path, clean_pt2):
    """A deflate bomb: the program member declares 300 MB of spaces, stored in about 300 kB."""
    from revise.models._pt2 import MAX_JSON_BYTES

    bomb = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(clean_pt2) as src, zipfile.ZipFile(bomb, "w") as dst:
        for name in src.namelist():
            if not name.endswith("/models/model.json"):
                dst.writestr(name, src.read(name))
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(info, "w", force_zip64=True) as f:
                for _ in range(300):
                    f.write(b" " * (1 << 20))
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(ModelError) as caught:
        load_model(bomb)
    message = str(caught.value)
    assert message.startswith(f"{bomb}: refusing to load") and "would inflate to" in message
    assert f"at most {MAX_JSON_BYTES:,}" in message, message


# --- the command line --------------------------------------------------------------------------


def _runs_naming_base(folder: Path, model: Path, base: Path) -> list[Path]:
    """Two run folders (a model + run.json) whose run.json names ``base`` as the base model."""
    runs = []
    for name in ("a", "b"):
        run = Path(shutil.copytree(model, folder / name))
        record = {"method": "psg", "base_model": {"path": str(base)}, "base_model_digest": "0" * 64}
        (run / "run.json").write_text(json.dumps(record))
        runs.append(run)
    return runs


@pytest.mark.parametrize("route", ["evaluate --model", "validate --original", "merge base"])
def test_every_command_line_route_refuses_the_archive(cli, export_site, tmp_path, clean_pt2, route):
    evil_dir = tmp_path / "vendor"
    evil_dir.mkdir()
    path, marker, _ = _evil(clean_pt2, evil_dir, "sympy expression")
    out = tmp_path / "out"
    model, manifest = export_site.models[0], export_site.manifest
    if route == "evaluate --model":
        args = ["evaluate", "--model", path, "--data", manifest, "--json", out, "--device", "cpu"]
    elif route == "validate --original":
        gates = tmp_path / "gates.yaml"
        gates.write_text("gates:\n  - {metric: accuracy, set: heldout_retain, at_least: 0.0}\n")
        args = ["validate", model, "--original", path, "--data", manifest, "--forget"]
        args += ["label == 0", "--criteria", gates, "-o", out, "--device", "cpu"]
    else:
        runs = _runs_naming_base(tmp_path / "runs", model, path)
        args = ["merge", *runs, "--strengths", "0.5,0.5", "-o", out, "--device", "cpu"]
    result = cli(*args, code=1)
    line = cli.one_line_error(result)
    assert f"error: {path}: refusing to load" in line and "expression" in line, line
    assert not marker.exists()
    assert not out.exists() and cli.leftovers(tmp_path) == []


def test_evaluate_with_pickled_sample_inputs_runs_no_code(cli, export_site, tmp_path, clean_pt2):
    """The probe's exact case through `--model`: the model is evaluated, nothing else runs."""
    marker, path = tmp_path / "code-ran", tmp_path / "vendor.pt2"
    _rewrite(
        clean_pt2, path, change={"data/sample_inputs/model.pt": pickle.dumps(_WritesMarker(marker))}
    )
    result = cli("evaluate", "--model", path, "--data", export_site.manifest, "--device", "cpu")
    assert not marker.exists(), "revise unpickled the sample inputs"
    assert result.exit_code == 0 and "heldout" in result.stdout, cli.describe(result)
