"""ONNX models, converted to PyTorch with onnx2torch (imported behind a torchvision stub), with
the operators it cannot convert reported before trying.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revise.errors import ModelError
from revise.models._graphs import _quiet
from revise.models._sniff import _looks_like_onnx, _sniff, _wrong_claim

_ONNX2TORCH: Any = None


def _import_onnx2torch() -> Any:
    """Import onnx2torch; it imports torchvision at import time, which revise does not need."""
    global _ONNX2TORCH
    if _ONNX2TORCH is not None:
        return _ONNX2TORCH
    stubbed: list[str] = []
    if importlib.util.find_spec("torchvision") is None:

        def _needs_torchvision(*args: Any, **kwargs: Any) -> Any:
            raise ModelError(
                "this ONNX graph uses a torchvision operator (NMS / RoIAlign)",
                hint="install torchvision, or provide safetensors + {arch}",
                options=("arch",),
            )

        tv = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        for name in ("roi_align", "nms", "box_convert", "batched_nms", "roi_pool"):
            setattr(ops, name, _needs_torchvision)
        tv.ops = ops  # type: ignore[attr-defined]
        for name, mod in (("torchvision", tv), ("torchvision.ops", ops)):
            sys.modules[name] = mod
            stubbed.append(name)
    try:
        with _quiet():
            import onnx2torch
    except ImportError as exc:
        raise ModelError(
            f"loading ONNX needs onnx2torch, which is not importable: {exc}",
            hint="pip install --no-deps onnx2torch, or provide safetensors + {arch}",
            options=("arch",),
        ) from None
    finally:
        # The stub served onnx2torch's own imports; leave no fake torchvision behind for others.
        for name in stubbed:
            sys.modules.pop(name, None)
    _ONNX2TORCH = onnx2torch
    return onnx2torch


def _unsupported_onnx_ops(proto: Any) -> list[str]:
    """Node op types onnx2torch has no converter for (empty if its registry is not readable)."""
    try:
        from onnx2torch.node_converters import get_converter
    except ImportError:
        return []
    versions = {(o.domain or ""): o.version for o in proto.opset_import}
    missing: dict[str, None] = {}
    for node in proto.graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        try:
            get_converter(node.op_type, versions.get(domain, 1), domain)
        except NotImplementedError:
            label = f"{domain}::{node.op_type}" if domain else node.op_type
            missing[f"{label} (opset {versions.get(domain, '?')})"] = None
        except Exception:
            continue
    return list(missing)


def _for_onnx2torch(proto: Any) -> Any:
    """The same graph in a form onnx2torch converts, where a lossless rewrite exists.

    Today's torch.onnx exporter (and revise's own export) writes opset 18, whose ReduceMean takes
    its axes as an input that onnx2torch does not read, and Reshape with allowzero=1, which it
    refuses. An older opset from ONNX's own version converter, and allowzero=0 where the target
    shape is a constant without zeros (where the two mean the same), load unchanged models."""
    import onnx
    from onnx import version_converter

    if _unsupported_onnx_ops(proto):
        for opset in (17, 16):
            try:
                older = version_converter.convert_version(proto, opset)
                _drop_default_noop_with_empty_axes(older)
                onnx.checker.check_model(older)
            except Exception:
                continue
            if not _unsupported_onnx_ops(older):
                proto = older
                break
    _relax_allowzero(proto)
    return proto


# Reductions whose axes moved from an attribute to an input at opset 18 (ReduceSum did at 13).
_REDUCE_AXES_AT_18 = {
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
}


def _drop_default_noop_with_empty_axes(proto: Any) -> None:
    """ONNX's 18 -> 17 converter keeps noop_with_empty_axes, which opset 17 reductions lack; at
    its default 0 it means what opset 17 does anyway. (At 1 the node is left to fail the check.)"""
    for node in proto.graph.node:
        if node.op_type in _REDUCE_AXES_AT_18:
            default = [a for a in node.attribute if a.name == "noop_with_empty_axes" and a.i == 0]
            keep = [a for a in node.attribute if a not in default]
            del node.attribute[:]
            node.attribute.extend(keep)


def _relax_allowzero(proto: Any) -> None:
    """Reshape allowzero=1 -> 0 where the shape is a constant with no 0 (no behaviour change)."""
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
    for node in proto.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        shape = constants.get(node.input[1])
        if shape is None or (shape == 0).any():
            continue
        for attr in node.attribute:
            if attr.name == "allowzero" and attr.i == 1:
                attr.i = 0


def _onnx_input_shape(proto: Any) -> tuple[int, ...] | None:
    inits = {i.name for i in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    return None


def _load_onnx(path: Path) -> tuple[nn.Module, tuple[int, ...] | None]:
    import onnx

    kind = _sniff(path)
    if kind not in ("unknown", "text") or not _looks_like_onnx(path):
        raise _wrong_claim(path, ("onnx",), kind)
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ModelError(
            f"{path} is not a valid ONNX model: {str(exc).splitlines()[0]}",
            hint="re-export it, and keep any external data file (X.onnx.data) beside it",
        ) from None
    o2t = _import_onnx2torch()
    fix = "export with opset <= 16 (torch.onnx.export(..., dynamo=False, opset_version=16)) or "
    fix += "provide safetensors weights + {arch}"
    proto = _for_onnx2torch(proto)
    missing = _unsupported_onnx_ops(proto)
    if missing:
        raise ModelError(
            f"{path}: onnx2torch cannot convert operator(s) {', '.join(missing)}",
            hint=fix,
            options=("arch",),
        )
    try:
        with _quiet():
            module = o2t.convert(proto)
    except Exception as exc:
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelError(
            f"{path}: onnx2torch cannot convert this graph: {message}", hint=fix, options=("arch",)
        ) from None
    return module, _onnx_input_shape(proto)


def for_torch_export(module: nn.Module) -> nn.Module:
    """``module``, or a copy of it that torch.export (and so the dynamo ONNX exporter) can
    trace: onnx2torch's Reshape asks ``torch.any(shape == 0)`` of its shape tensor, a
    data-dependent branch torch.export refuses, even where the shape is a constant of the
    graph. Each such Reshape becomes ``torch.reshape(x, shape)`` with the constant's values
    (without zeros, which would mean "keep this dimension": those are left as they are)."""
    if not any(_static_reshapes(m, dry_run=True) for m in module.modules()):
        return module
    module = copy.deepcopy(module)
    for m in module.modules():
        _static_reshapes(m)
    return module


def _static_reshapes(module: nn.Module, *, dry_run: bool = False) -> bool:
    """Rewrite the constant-shape onnx2torch Reshapes of an fx graph in place (True if any)."""
    if not isinstance(module, torch.fx.GraphModule):
        return False
    found = False
    for node in list(module.graph.nodes):
        if node.op != "call_module" or len(node.args) != 2 or node.kwargs:
            continue
        if type(module.get_submodule(str(node.target))).__name__ != "OnnxReshape":
            continue
        shape_node = node.args[1]
        if not isinstance(shape_node, torch.fx.Node) or shape_node.op != "get_attr":
            continue
        try:
            shape = _attr(module, str(shape_node.target))
        except AttributeError:
            continue
        if not isinstance(shape, torch.Tensor) or shape.ndim != 1 or bool((shape == 0).any()):
            continue
        found = True
        if dry_run:
            return True
        with module.graph.inserting_before(node):
            new = module.graph.call_function(
                torch.reshape, (node.args[0], tuple(int(v) for v in shape.tolist()))
            )
        node.replace_all_uses_with(new)
        module.graph.erase_node(node)
    if found:
        module.graph.lint()
        module.recompile()
    return found


def _attr(module: nn.Module, target: str) -> Any:
    for part in target.split("."):
        module = getattr(module, part)
    return module
