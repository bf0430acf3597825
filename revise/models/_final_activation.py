"""The final activation a network's structure shows, for :mod:`revise.models.outputs`: the last
module of a Sequential, the node producing the output of an fx graph (from ONNX or
torch.export), a TorchScript graph's return, or an ONNX graph's output node; and taking it off
in place where the structure allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from revise.models._output_wrappers import _OP_NAMES, LogitsOf, WithActivation


@dataclass(frozen=True)
class FinalActivation:
    """A network's final activation, as its structure shows it."""

    kind: str  # "softmax", "log_softmax" or "sigmoid"
    where: str  # for messages: "its graph ends in Softmax (node 4/Softmax)"


def _class_dim(dim: Any) -> bool:
    """A softmax over the class axis of an (N, classes) output (None: torch's legacy implicit
    dim, which is 1 for a 2-D tensor)."""
    return dim is None or dim in (1, -1)


def _module_kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Softmax) and _class_dim(m.dim):
        return "softmax"
    if isinstance(m, nn.LogSoftmax) and _class_dim(m.dim):
        return "log_softmax"
    if isinstance(m, nn.Sigmoid):
        return "sigmoid"
    # onnx2torch's Softmax / LogSoftmax of opsets 1-11 (softmax over the flattened tail)
    if type(m).__name__ == "OnnxSoftmaxV1V11" and getattr(m, "axis", None) in (1, -1):
        return "log_softmax" if getattr(m, "is_log", False) else "softmax"
    return None


def _function_kinds() -> dict[Any, str]:
    f = torch.nn.functional
    aten = torch.ops.aten
    kinds: dict[Any, str] = {
        torch.softmax: "softmax",
        f.softmax: "softmax",
        torch.log_softmax: "log_softmax",
        f.log_softmax: "log_softmax",
        torch.sigmoid: "sigmoid",
        f.sigmoid: "sigmoid",
        aten.softmax.int: "softmax",
        aten._softmax.default: "softmax",
        aten.log_softmax.int: "log_softmax",
        aten._log_softmax.default: "log_softmax",
        aten.sigmoid.default: "sigmoid",
    }
    return kinds


_METHOD_KINDS = {"softmax": "softmax", "log_softmax": "log_softmax", "sigmoid": "sigmoid"}


def _fx_node_kind(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str | None:
    if node.op == "call_module":
        try:
            return _module_kind(gm.get_submodule(str(node.target)))
        except AttributeError:
            return None
    if node.op == "call_function":
        kind = _function_kinds().get(node.target)
    elif node.op == "call_method":
        kind = _METHOD_KINDS.get(str(node.target))
    else:
        return None
    if kind in ("softmax", "log_softmax"):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if not _class_dim(dim):
            return None
    return kind


def _fx_output(gm: torch.fx.GraphModule) -> tuple[torch.fx.Node, Any, Any] | None:
    """(output node, the node producing the one returned tensor, how to put another in)."""
    out = next((n for n in gm.graph.nodes if n.op == "output"), None)
    if out is None or not out.args:
        return None
    value = out.args[0]
    if isinstance(value, torch.fx.Node):
        return out, value, lambda new: new
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], torch.fx.Node):
        return out, value[0], lambda new: type(value)([new])
    return None


def _script_kind(module: torch.jit.ScriptModule) -> str | None:
    try:
        graph = module.inlined_graph
        (value,) = list(graph.return_node().inputs())
        node = value.node()
        kind = {
            "aten::softmax": "softmax",
            "aten::_softmax": "softmax",
            "aten::log_softmax": "log_softmax",
            "aten::_log_softmax": "log_softmax",
            "aten::sigmoid": "sigmoid",
        }.get(node.kind())
        if kind in ("softmax", "log_softmax"):
            dim = node.inputsAt(1).toIValue()
            if not _class_dim(dim):
                return None
        return kind
    except Exception:  # a graph revise cannot read: the numbers will tell
        return None


def final_activation(module: nn.Module) -> FinalActivation | None:
    """The activation ``module`` visibly ends in (softmax, log_softmax or sigmoid over the
    classes), or None: none, or the structure does not show it."""
    if isinstance(module, LogitsOf):
        return None  # returns logits by construction
    if isinstance(module, WithActivation):
        return FinalActivation(module.kind, f"revise put its {_OP_NAMES[module.kind]} back")
    if isinstance(module, nn.Sequential) and len(module):
        name, last = list(module.named_children())[-1]
        kind = _module_kind(last)
        if kind is not None:
            return FinalActivation(kind, f"its last module ({name}) is {type(last).__name__}")
        inner = final_activation(last) if isinstance(last, nn.Sequential) else None
        if inner is not None:
            return FinalActivation(inner.kind, f"its last module ({name}) ends in it")
        return None
    if isinstance(module, torch.fx.GraphModule):
        found = _fx_output(module)
        if found is None:
            return None
        _, node, _ = found
        kind = _fx_node_kind(module, node)
        if kind is not None:
            return FinalActivation(kind, f"its graph ends in {_OP_NAMES[kind]} (node {node.name})")
        return None
    if isinstance(module, torch.jit.ScriptModule):
        kind = _script_kind(module)
        if kind is not None:
            return FinalActivation(kind, f"its TorchScript graph ends in aten::{kind}")
    return None


def _strip(module: nn.Module) -> bool:
    """Take the final activation off ``module`` in place (True), where its structure allows:
    the weights, and so the state dict, stay as they are."""
    if isinstance(module, nn.Sequential) and len(module):
        name, last = list(module.named_children())[-1]
        if _module_kind(last) is not None:
            setattr(module, name, nn.Identity())
            return True
        return isinstance(last, nn.Sequential) and _strip(last)
    if isinstance(module, torch.fx.GraphModule):
        found = _fx_output(module)
        if found is None:
            return False
        out, node, rebuild = found
        if _fx_node_kind(module, node) is None or not node.args:
            return False
        out.args = (rebuild(node.args[0]), *out.args[1:])
        if not node.users:
            module.graph.erase_node(node)
        module.graph.lint()
        module.recompile()
        return True
    return False


def onnx_output_kind(proto: Any) -> str | None:
    """The activation the node producing an ONNX graph's first output is (softmax, log_softmax
    or sigmoid over the class axis of a 2-D output), or None."""
    if not proto.graph.output:
        return None
    name = proto.graph.output[0].name
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    for node in proto.graph.node:
        if name not in node.output or node.domain not in ("", "ai.onnx"):
            continue
        kind = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "Sigmoid": "sigmoid"}.get(
            node.op_type
        )
        if kind in ("softmax", "log_softmax"):
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
            if axis not in (1, -1):
                return None
        return kind
    return None
