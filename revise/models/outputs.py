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
  rows that are non-negative and sum to 1), :class:`~revise.models._output_wrappers.LogitsOf`
  inverts it: ``log p`` for softmax (the logits up to a constant per row: the same
  cross-entropy, the same gradients), ``log(p / (1 - p))`` for sigmoid;
* log-probabilities already are logits in that sense, so a ``log_softmax`` network is kept.

:func:`deployed` gives the network that returns what the card says again, for export and for
comparing with an exported file.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from revise.errors import ModelError
from revise.models._final_activation import _strip, final_activation
from revise.models._output_probe import (
    _in_unit_interval,
    _probe_count,
    _probe_evidence,
    probe_outputs,
)
from revise.models._output_wrappers import _OP_NAMES, LogitsOf, WithActivation
from revise.models.card import OUTPUT_KINDS, ModelCard

# Log under the public module's name: users see revise.models.io, not this module.
log = logging.getLogger("revise.models.io")

__all__ = [
    "OUTPUT_KINDS",
    "OUTPUT_NAMES",
    "deployed",
    "kind_of_output_name",
    "settle",
]

# The name of the exported graph's output for each kind: what a deployer reads.
OUTPUT_NAMES = {
    "logits": "logits",
    "softmax": "probabilities",
    "log_softmax": "log_probabilities",
    "sigmoid": "sigmoid_probabilities",
}
_SHORT = {
    "softmax": "class probabilities",
    "log_softmax": "log class probabilities",
    "sigmoid": "per-class sigmoid probabilities",
}


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
