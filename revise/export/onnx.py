"""Export a revised model to ONE self-contained ONNX file and prove it computes the same outputs.

The exported graph takes ``input`` of shape ``(batch, C, H, W)`` - *normalised* pixels, exactly
what the PyTorch model takes (no preprocessing is baked in; the card in the metadata says how to
normalise) - and returns what the deployed network returned, of shape ``(batch, num_classes)``,
named for what it is: ``logits``, or - where the card's ``output`` says the network ends in an
activation, which revise took off to train on logits - the activation put back and the output
named ``probabilities`` (softmax), ``log_probabilities`` or ``sigmoid_probabilities``
(:data:`revise.models.outputs.OUTPUT_NAMES`).

The dynamo exporter (torch.export based) is tried first; the legacy TorchScript exporter is used
only when it fails, and the result says which one ran. What the exporters print on the way
(tracer warnings, graph dumps, colour codes) is kept from the user: a fallback is one plain
warning line with its root cause.

The parity check is :mod:`revise.export.parity`; reading an ONNX file, its metadata and its
graph digest, :mod:`revise.export.onnx_file`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from revise._io.atomic import atomic_path
from revise._io.digests import sha256_file
from revise._logs import loggers_silenced
from revise.errors import ExportError, OptionError
from revise.export.onnx_file import check_file, merge_props, serialize_one_file
from revise.export.onnx_metadata import image_props, key
from revise.export.parity import ParityReport, check_parity, device_of, eval_mode
from revise.models._final_activation import final_activation
from revise.models._output_wrappers import LogitsOf
from revise.models.card import ModelCard
from revise.models.outputs import OUTPUT_NAMES, deployed

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = OUTPUT_NAMES["logits"]  # a network that returns logits; see OUTPUT_NAMES
BATCH_AXIS = "batch"
LEGACY_MAX_OPSET = 20
MIN_OPSET = 7  # the oldest opset ONNX Runtime runs


@dataclass
class ExportResult:
    path: Path
    opset: int
    exporter: str  # "dynamo" or "torchscript" (the legacy exporter)
    sha256: str
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    metadata: dict[str, str] = field(default_factory=dict)
    parity: ParityReport | None = None
    fallback_reason: str = ""  # why the dynamo exporter was not used

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


# The libraries whose loggers speak while exporting, of what revise reports itself: a warning
# for every torchvision op the exporter cannot register, the version converter's traceback,
# symbolic-shape warnings, the optimizer's progress.
_EXPORTER_LOG_ROOTS = ("torch", "onnxscript", "onnx_ir")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _exporter_loggers() -> list[str]:
    known = list(logging.Logger.manager.loggerDict)
    return [*_EXPORTER_LOG_ROOTS, *(n for n in known if n.split(".")[0] in _EXPORTER_LOG_ROOTS)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' own output from the user: their loggers, every warning (the legacy
    tracer's TracerWarnings among them), and what they print (torch.export prints the graph
    it failed on); export_onnx reports the outcome itself."""
    sink = io.StringIO()
    with (
        loggers_silenced(*_exporter_loggers()),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        yield


def _plain_reason(exc: BaseException) -> str:
    """Why an exporter failed, on one plain line: the root cause's first line, without the
    colour codes and next-steps advice torch wraps it in."""
    root, seen = exc, {id(exc)}
    while root.__cause__ is not None and id(root.__cause__) not in seen:
        root = root.__cause__
        seen.add(id(root))
    lines = [ln.strip() for ln in _ANSI.sub("", str(root)).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if len(first) > 120 and ". " in first:  # the statement, not the advice after it
        first = first[: first.index(". ") + 1]
    text = f"{type(root).__name__}: {first}" if first else type(root).__name__
    if isinstance(root, ExportError):
        text = first
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def max_opset() -> int:
    """The newest ONNX opset the installed onnx package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def check_opset(opset: Any, name: str = "opset") -> int:
    """``opset`` if revise can export it; otherwise a UsageError stating the supported range
    (``name``: what the caller calls it, e.g. the ``--opset`` option)."""
    top = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise OptionError(
            name,
            f"{opset} is not an ONNX opset revise can export",
            hint=f"give {MIN_OPSET} to {top}: ONNX Runtime runs opsets from {MIN_OPSET}, and "
            f"{top} is the newest the installed onnx knows",
        )
    return opset


def _example_input(card: ModelCard, samples: torch.Tensor | None) -> torch.Tensor:
    shape = (card.in_channels, *card.input_size)
    if samples is None:
        gen = torch.Generator().manual_seed(0)
        return torch.randn(2, *shape, generator=gen)
    samples = torch.as_tensor(samples).detach().to("cpu", torch.float32)
    if samples.ndim != 4 or samples.shape[1] != card.in_channels or len(samples) == 0:
        raise ExportError(
            f"samples must be (N, {card.in_channels}, H, W) normalised images, "
            f"got {tuple(samples.shape)}",
            hint="pass held-out images preprocessed exactly as for the PyTorch model",
        )
    x = samples[:2]
    return x if len(x) == 2 else torch.cat([x, x])  # trace with batch >= 2


def _opset_of(proto: Any) -> int:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return -1


def _export_dynamo(model: nn.Module, x: torch.Tensor, opset: int, output: str) -> Any:
    from revise.models._onnx_import import for_torch_export

    batch = torch.export.Dim(BATCH_AXIS)
    with _quiet():
        program = torch.onnx.export(
            for_torch_export(model),
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[output],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
    proto = program.model_proto
    if _opset_of(proto) != opset:
        proto = _convert_opset(proto, opset)
    return proto


def _convert_opset(proto: Any, opset: int) -> Any:
    """The dynamo exporter writes opset 18 and leaves it there where its own converter fails:
    ONNX's converter takes the graph to ``opset`` (dropping the reductions' default
    noop_with_empty_axes, which it carries into opsets that lack it)."""
    import onnx
    from onnx import version_converter

    from revise.models._onnx_import import _drop_default_noop_with_empty_axes

    wrote = _opset_of(proto)
    try:
        with _quiet():
            older = version_converter.convert_version(proto, opset)
            _drop_default_noop_with_empty_axes(older)
            onnx.checker.check_model(older, full_check=True)
    except Exception as exc:
        raise ExportError(
            f"the dynamo exporter wrote opset {wrote} and ONNX cannot convert it to opset "
            f"{opset}: {_plain_reason(exc)}"
        ) from None
    return older


def _export_legacy(model: nn.Module, x: torch.Tensor, opset: int, output: str) -> Any:
    import onnx

    if opset > LEGACY_MAX_OPSET:
        raise ExportError(f"the legacy exporter supports opset <= {LEGACY_MAX_OPSET}, not {opset}")
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            model,
            (x,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[output],
            dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, output: {0: BATCH_AXIS}},
            opset_version=opset,
        )
    return onnx.load_from_string(buffer.getvalue())


def _output_kind(model: nn.Module, card: ModelCard) -> str:
    """What the exported graph returns: the card's ``output``; where the card does not say, what
    the network shows (a network revise loaded knows; one built in Python may end in Softmax)."""
    if card.output is not None:
        return card.output
    if isinstance(model, LogitsOf):
        return model.kind
    found = final_activation(model)
    if found is None:
        return "logits"
    log.warning(
        "the network returns %s (%s) and its model card does not say (field output): exported "
        "as it is, output %r",
        found.kind,
        found.where,
        OUTPUT_NAMES[found.kind],
    )
    return found.kind


def export_onnx(
    model: nn.Module,
    card: ModelCard,
    path: str | os.PathLike,
    *,
    samples: torch.Tensor | None = None,
    opset: int = 18,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export ``model`` to one ONNX file at ``path``, check it, and gate it on parity.

    ``model`` returns logits, as revise trains it; where ``card.output`` says the deployed
    network ended in an activation, the exported graph has it back and its output is named for
    what it returns (see the module docstring). ``samples`` are normalised held-out images; when
    given, :func:`check_parity` must pass or an :class:`~revise.errors.ExportError` is raised and
    nothing is written at ``path``. The card (as JSON under ``com.revise.card``), ONNX's image
    metadata for it (:func:`revise.export.onnx_metadata.image_props`) and ``metadata`` are
    merged into the model's metadata_props.
    """
    path = Path(path)
    opset = check_opset(opset)
    x = _example_input(card, samples)
    src = model if device_of(model).type == "cpu" else copy.deepcopy(model).to("cpu")
    kind = _output_kind(src, card)
    if card.output_kind != kind:  # the card in the metadata says what the graph returns
        card = dataclasses.replace(card, output=kind)
    net, output_name = deployed(src, kind), OUTPUT_NAMES[kind]
    exporter, reason = "dynamo", ""
    with eval_mode(src), eval_mode(net):
        try:
            proto = _export_dynamo(net, x, opset, output_name)
        except Exception as exc:
            reason = _plain_reason(exc)
            log.warning(
                "ONNX export: the dynamo exporter cannot export this model (%s); using the "
                "legacy TorchScript exporter instead",
                reason,
            )
            exporter = "torchscript"
            try:
                proto = _export_legacy(net, x, opset, output_name)
            except Exception as exc2:
                raise ExportError(
                    f"ONNX export failed with both exporters: dynamo: {reason}; "
                    f"legacy: {_plain_reason(exc2)}",
                    hint="check that forward() takes one image tensor and returns one "
                    "(N, num_classes) tensor",
                ) from exc2
    opset_written = _opset_of(proto)
    props = {key("card"): json.dumps(card.to_dict(), sort_keys=True, default=str)}
    props[key("exporter")] = exporter
    props.update(image_props(card))  # ONNX's own image metadata, for runtimes and viewers
    props.update(metadata or {})
    merged = merge_props(proto, props)
    data = serialize_one_file(proto)
    parity = None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        check_file(tmp)
        if samples is not None:
            parity = check_parity(src, tmp, samples, output=kind)
            if not parity.passed:
                raise ExportError(
                    f"the ONNX model disagrees with PyTorch: {parity.summary()}; "
                    f"no file was written at {path}",
                    hint="check for ops that differ between PyTorch and ONNX Runtime, "
                    "or nondeterministic layers",
                )
    log.info("exported %s (opset %d, %s exporter)", path, opset_written, exporter)
    return ExportResult(
        path=path,
        opset=opset_written,
        exporter=exporter,
        sha256=sha256_file(path),
        output_name=output_name,
        metadata=merged,
        parity=parity,
        fallback_reason=reason,
    )
