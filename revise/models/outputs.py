"""What a classifier network returns, and the logits revise trains on.

A deployed classifier may end in an activation: ``softmax`` (each row non-negative, summing to
1), ``log_softmax`` or ``sigmoid`` (the card's ``output``, see :data:`OUTPUT_KINDS`). Everything
in revise - the losses of every method, evaluation, the boundary attack - reads a network's
outputs as logits, and cross-entropy on probabilities trains something else: it has a floor
(with 4 classes no sample's loss goes below ``log(e + 3) - 1 = 0.744``) and its gradients
vanish as the model gets sure. So :func:`settle` makes a loaded network return logits:

* where the graph shows its final activation (the last module of a Sequential, the node that
  produces the output of an fx graph from ONNX or torch.export), it is taken off in place: exact
  logits and gradients, the same weights, the same state dict;
* where it cannot be taken off (TorchScript) or only the numbers tell (a few test inputs give
  rows that are non-negative and sum to 1), :class:`LogitsOf` inverts it: ``log p`` for softmax
  (the logits up to a constant per row: the same cross-entropy, the same gradients),
  ``log(p / (1 - p))`` for sigmoid;
* log-probabilities already are logits in that sense, so a ``log_softmax`` network is kept.

:func:`deployed` gives the network that returns what the card says again, for export and for
comparing with an exported file.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from revise.errors import ModelError
from revise.models.card import OUTPUT_KINDS, ModelCard

# Log under the public module's name: users see revise.models.io, not this module.
log = logging.getLogger("revise.models.io")

__all__ = [
    "OUTPUT_KINDS",
    "OUTPUT_NAMES",
    "FinalActivation",
    "LogitsOf",
    "WithActivation",
    "deployed",
    "final_activation",
    "kind_of_output_name",
    "onnx_output_kind",
    "probe_outputs",
    "settle",
]

# The name of the exported graph's output for each kind: what a deployer reads.
OUTPUT_NAMES = {
    "logits": "logits",
    "softmax": "probabilities",
    "log_softmax": "log_probabilities",
    "sigmoid": "sigmoid_probabilities",
}
_OP_NAMES = {"softmax": "Softmax", "log_softmax": "LogSoftmax", "sigmoid": "Sigmoid"}
_SHORT = {
    "softmax": "class probabilities",
    "log_softmax": "log class probabilities",
    "sigmoid": "per-class sigmoid probabilities",
}
# Probabilities are clamped away from 0 (and 1) before the log: an underflowed probability
# gives a large negative logit and no gradient, where log(0) would give -inf and NaN.
_TINY = torch.finfo(torch.float32).tiny
_PROBE_IMAGES = 8  # at most; fewer of large images (the load's trial run feeds 3)
_PROBE_VALUES = 2**24  # 64 MiB of float32 input
_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class FinalActivation:
    """A network's final activation, as its structure shows it."""

    kind: str  # "softmax", "log_softmax" or "sigmoid"
    where: str  # for messages: "its graph ends in Softmax (node 4/Softmax)"


# --------------------------------------------------------------------------------------------
# structure


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


# --------------------------------------------------------------------------------------------
# wrappers that keep the network's own state-dict keys


def _drop_prefix(module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
    inner = f"{prefix}net."
    for key in [k for k in state if k.startswith(inner)]:
        state[prefix + key[len(inner) :]] = state.pop(key)


def _add_prefix(
    module: nn.Module, state: dict, prefix: str, local_metadata: Any, *args: Any
) -> None:
    # every key under the wrapper is the network's (its own state dict never says "net.")
    for key in [k for k in state if k.startswith(prefix)]:
        state[f"{prefix}net.{key[len(prefix) :]}"] = state.pop(key)


class _Around(nn.Module):
    """``net`` with something after it. Its state dict is ``net``'s, key for key: saved
    weights, digests and checkpoints are those of the network itself."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        if kind not in _OP_NAMES:
            raise ValueError(f"kind must be one of {', '.join(_OP_NAMES)}, not {kind!r}")
        self.net = net
        self.kind = kind
        self.training = net.training  # a fresh module would say train mode whatever net is in
        self.register_state_dict_post_hook(_drop_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)


class LogitsOf(_Around):
    """The logits of a network whose outputs are ``kind`` (softmax or sigmoid) and whose final
    activation cannot be taken off: ``log p`` (softmax) or ``log(p / (1 - p))`` (sigmoid),
    with ``p`` kept away from 0 and 1 so that neither the value nor its gradient is infinite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.net(x)
        if self.kind == "softmax":
            return p.float().clamp_min(_TINY).log()
        if self.kind == "sigmoid":
            p = p.float().clamp(_TINY, 1.0 - torch.finfo(torch.float32).eps)
            return torch.log(p) - torch.log1p(-p)
        return p  # log-probabilities are logits


class WithActivation(_Around):
    """``net`` (which returns logits) with its final activation put back: what the deployed
    network returned."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        if self.kind == "softmax":
            return torch.softmax(z, dim=1)
        if self.kind == "log_softmax":
            return torch.log_softmax(z, dim=1)
        return torch.sigmoid(z)


# --------------------------------------------------------------------------------------------
# numbers


def _probe_count(card: ModelCard) -> int:
    per_image = card.in_channels * card.input_size[0] * card.input_size[1]
    return max(3, min(_PROBE_IMAGES, _PROBE_VALUES // per_image))


def _probe_batch(card: ModelCard) -> torch.Tensor:
    """A few normalised images in the card's pixel range: uniform noise and flat images."""
    low, high = card.pixel_range
    shape = (card.in_channels, *card.input_size)
    gen = torch.Generator().manual_seed(0)
    x = low + (high - low) * torch.rand(_probe_count(card) - 2, *shape, generator=gen)
    flat = torch.tensor([low + 0.5 * (high - low), high]).view(2, 1, 1, 1).expand(2, *shape)
    x = torch.cat([x, flat])
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    return (x - mean) / std


def _probe_run(module: nn.Module, card: ModelCard) -> torch.Tensor | None:
    """The module's outputs on the probe images (eval mode), or None where it cannot run them."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(_probe_batch(card))
    except Exception:
        return None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or not out.is_floating_point():
        return None
    out = out.detach().float().cpu()
    return out if bool(torch.isfinite(out).all()) else None


def probe_outputs(module: nn.Module, card: ModelCard) -> str | None:
    """``"softmax"`` when the module's outputs on a few images in the card's pixel range are
    non-negative and sum to 1 per row, ``"log_softmax"`` when their exponentials do, else None
    (logits, or a model whose numbers say nothing, e.g. one class). Sigmoid outputs are not
    told from logits this way: values in [0, 1] can be either."""
    out = _probe_run(module, card)
    if out is None or out.shape[1] < 2:
        return None
    if bool((out >= 0).all()) and float((out.sum(1) - 1).abs().max()) < _SUM_TOLERANCE:
        return "softmax"
    if bool((out <= 0).all()) and float(out.logsumexp(1).abs().max()) < _SUM_TOLERANCE:
        return "log_softmax"
    return None


def _in_unit_interval(module: nn.Module, card: ModelCard) -> bool:
    out = _probe_run(module, card)
    return out is not None and bool(((out >= 0) & (out <= 1)).all())


def _probe_evidence(kind: str, card: ModelCard) -> str:
    n = _probe_count(card)
    return {
        "softmax": f"its outputs on {n} test images are non-negative and sum to 1 per row",
        "log_softmax": f"the exponentials of its outputs on {n} test images sum to 1 per row",
        "sigmoid": f"its outputs on {n} test images lie in [0, 1]",
    }[kind]


# --------------------------------------------------------------------------------------------
# settling a loaded network


def _to_logits(module: nn.Module, kind: str, structural: bool) -> tuple[nn.Module, str]:
    """``module`` made to return logits, and how (for the log line)."""
    if kind in ("logits", "log_softmax"):
        return module, "its log-probabilities serve as logits"
    if structural and _strip(module):
        return module, f"the final {_OP_NAMES[kind]} is taken off"
    how = "log p" if kind == "softmax" else "log(p / (1 - p))"
    return LogitsOf(module, kind), f"it computes them from the probabilities as {how}"


def settle(
    module: nn.Module, card: ModelCard, source: str, *, opaque: bool = True
) -> tuple[nn.Module, ModelCard]:
    """``module`` made to return logits, and ``card`` with ``output`` saying what the network
    returned where it ends in an activation (a card that says nothing of a logits model is
    left as it is: ``output_kind`` reads it as logits).

    What the network returns is read from its structure (:func:`final_activation`) and, for an
    opaque graph (``opaque``) whose structure does not show it, from its outputs on a few test
    images (:func:`probe_outputs`). A card that says nothing gets what was found, with one log
    line; a card that contradicts it is a :class:`~revise.errors.ModelError` naming the card's
    ``output`` field. Built-in architectures (``opaque=False``) return logits."""
    declared = card.output
    found = final_activation(module)
    kind: str | None = None
    evidence = ""
    if found is not None:
        kind, evidence = found.kind, found.where
    elif opaque:
        kind = probe_outputs(module, card)
        evidence = _probe_evidence(kind, card) if kind else ""
    if kind is not None and declared is not None and declared != kind:
        raise ModelError(
            f"{source}: the network returns {_SHORT[kind]} ({evidence}), but its model card "
            f'says "output": "{declared}"',
            hint=f'set "output": "{kind}" in the card, or leave the field out and revise finds it',
        )
    if kind is None and declared not in (None, "logits"):
        kind, evidence = _confirm(module, card, source, declared, opaque)
    if kind is None:
        return module, card  # logits: a card that does not say stays as it is
    module, how = _to_logits(module, kind, found is not None)
    if declared is None:
        log.warning(
            "%s returns %s, not logits (%s): revise trains and evaluates on its logits (%s) "
            'and exports it with the %s back, output %r. Say "output": "%s" in the model card '
            "to make this explicit",
            source,
            _SHORT[kind],
            evidence,
            how,
            _OP_NAMES[kind],
            OUTPUT_NAMES[kind],
            kind,
        )
    return module, dataclasses.replace(card, output=kind)


def _confirm(
    module: nn.Module, card: ModelCard, source: str, declared: str, opaque: bool
) -> tuple[str, str]:
    """A card that says the network ends in an activation its structure does not show: the
    numbers must agree."""
    if not opaque:
        raise ModelError(
            f'{source}: the model card says "output": "{declared}", but architecture '
            f"{card.architecture!r} returns logits (field output)",
            hint='set "output": "logits" in the card, or leave the field out',
        )
    if declared == "sigmoid" and _in_unit_interval(module, card):
        return declared, _probe_evidence(declared, card)
    if declared != "sigmoid" and probe_outputs(module, card) == declared:
        return declared, _probe_evidence(declared, card)  # a structure revise did not know
    told = {
        "softmax": "non-negative rows summing to 1",
        "log_softmax": "rows whose exponentials sum to 1",
        "sigmoid": "values in [0, 1]",
    }[declared]
    raise ModelError(
        f'{source}: the model card says "output": "{declared}" (field output), but the '
        f"network does not end in {_OP_NAMES[declared]} and its outputs on {_probe_count(card)} "
        f"test images in pixel_range are not {told}: they look like logits",
        hint='set "output": "logits" in the card (or leave the field out), or check its mean, '
        "std and pixel_range",
    )


# --------------------------------------------------------------------------------------------
# putting the activation back


def deployed(module: nn.Module, kind: str) -> nn.Module:
    """The network that returns ``kind`` again, from one revise trains (which returns logits):
    the activation appended, or - where ``module`` still has it - ``module`` itself."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(OUTPUT_KINDS)}, not {kind!r}")
    if isinstance(module, LogitsOf):
        if module.kind != kind:
            raise ModelError(
                f"the network returns {module.kind} outputs, not {kind}",
                hint=f'its model card must say "output": "{module.kind}"',
            )
        return module.net
    found = final_activation(module)
    if found is not None:
        if found.kind != kind:
            raise ModelError(
                f"the network returns {_SHORT.get(found.kind, found.kind)} ({found.where}), but "
                f'its model card says "output": "{kind}"',
                hint=f'set "output": "{found.kind}" in the card, or load the model with '
                "revise.models.io.load_model, which takes the activation off",
            )
        return module
    if kind == "logits":
        return module
    return WithActivation(module, kind)


def kind_of_output_name(name: str) -> str | None:
    """The kind revise's export names ``name`` for (``"probabilities"`` -> softmax), or None."""
    return {v: k for k, v in OUTPUT_NAMES.items()}.get(name)


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
