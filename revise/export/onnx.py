"""Export a revised model to ONE self-contained ONNX file and prove it computes the same logits.

The exported graph takes ``input`` of shape ``(batch, C, H, W)`` - *normalised* pixels, exactly
what the PyTorch model takes (no preprocessing is baked in; the card in the metadata says how to
normalise) - and returns ``logits`` of shape ``(batch, num_classes)``.

The dynamo exporter (torch.export based) is tried first; the legacy TorchScript exporter is used
only when it fails (or cannot honour the requested opset), and the result says which one ran.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from revise._io import atomic_path, sha256_file
from revise._logs import loggers_silenced
from revise.errors import ExportError, UsageError
from revise.models.card import ModelCard

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
LEGACY_MAX_OPSET = 20
MIN_OPSET = 7  # the oldest opset ONNX Runtime runs
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class ParityReport:
    """ONNX Runtime (CPU, fp32) against PyTorch on the same normalised inputs."""

    n: int
    max_abs_diff: float
    max_rel_diff: float
    label_agreement: float
    passed: bool
    providers: list[str] = field(default_factory=list)
    rtol: float = 1e-3
    atol: float = 1e-5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"n={self.n}, max |diff|={self.max_abs_diff:.3g}, max rel diff={self.max_rel_diff:.3g}"
            f", label agreement={self.label_agreement:.4f} (rtol={self.rtol:g}, atol={self.atol:g})"
        )


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


# Loggers of the exporter that speak of what revise reports itself: a warning for every
# torchvision op it cannot register, and (below opset 18) the exporter raising the opset and
# failing to convert back, with a traceback; export_onnx then says that it fell back.
_EXPORTER_LOGGERS = (
    "torch.onnx._internal.exporter._registration",
    "torch.onnx._internal.exporter._compat",
    "onnxscript.version_converter",
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with loggers_silenced(*_EXPORTER_LOGGERS), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def max_opset() -> int:
    """The newest ONNX opset the installed onnx package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def check_opset(opset: Any, name: str = "opset") -> int:
    """``opset`` if revise can export it; otherwise a UsageError stating the supported range
    (``name``: what the caller calls it, e.g. the ``--opset`` option)."""
    top = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        raise UsageError(
            f"{name} {opset} is not an ONNX opset revise can export",
            hint=f"give {MIN_OPSET} to {top}: ONNX Runtime runs opsets from {MIN_OPSET}, and "
            f"{top} is the newest the installed onnx knows",
        )
    return opset


def _load_proto(path: str | os.PathLike, *, external_data: bool = True) -> Any:
    """The ONNX model at ``path``, or an ExportError naming the file."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ExportError(
            f"{path} is not a readable ONNX model: {first}",
            hint="give the model.onnx of a bundle from `revise export`, copied whole",
        ) from None


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def _device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """PyTorch's fp32 logits for one batch (the reference side of the parity check)."""
    with torch.no_grad():
        out = model(x.to(_device(model), torch.float32))
    if not isinstance(out, torch.Tensor):
        raise ExportError(
            f"the model returns {type(out).__name__}, not a logits tensor",
            hint="export a model whose forward returns one (N, num_classes) tensor",
        )
    return out.detach().to("cpu", torch.float32).numpy()


def require_onnxruntime() -> Any:
    """The onnxruntime module, or an ExportError saying how to install it (the bare install,
    without the cpu or gpu extra, has none)."""
    try:
        import onnxruntime
    except ImportError as exc:  # a missing package, or one that cannot load
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime"
        what = "is not installed" if missing else f"cannot be imported ({exc})"
        raise ExportError(
            f"ONNX Runtime (onnxruntime) {what}; the ONNX parity check needs it",
            hint='install it: pip install -e ".[cpu]", or ".[gpu]" for onnxruntime-gpu on a GPU',
        ) from None
    return onnxruntime


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    samples: torch.Tensor,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    batch_size: int = 64,
) -> ParityReport:
    """Compare ONNX Runtime (CPUExecutionProvider) logits with ``model(samples)`` in eval mode.

    ``passed`` needs ``np.allclose(onnx, torch, rtol, atol)`` and identical argmax for every
    sample. ``max_rel_diff`` is ``max |onnx - torch| / max(|torch|, 1e-12)``.
    """
    ort = require_onnxruntime()
    samples = torch.as_tensor(samples).detach().to("cpu", torch.float32)
    if samples.ndim != 4 or len(samples) == 0:
        raise ExportError(
            f"parity samples must be a non-empty (N, C, H, W) tensor, got {tuple(samples.shape)}"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ExportError(f"ONNX Runtime cannot load {onnx_path}: {first}") from exc
    in_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    out_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]
    ref_parts, got_parts = [], []
    with _eval_mode(model):
        for start in range(0, len(samples), batch_size):
            xb = samples[start : start + batch_size]
            ref_parts.append(_torch_logits(model, xb))
            got_parts.append(np.asarray(session.run([out_name], {in_name: xb.numpy()})[0]))
    ref = np.concatenate(ref_parts).astype(np.float32)
    got = np.concatenate(got_parts).astype(np.float32)
    providers = list(session.get_providers())
    n = len(samples)
    if ref.shape != got.shape:
        log.error("ONNX output shape %s differs from PyTorch's %s", got.shape, ref.shape)
        return ParityReport(n, float("inf"), float("inf"), 0.0, False, providers, rtol, atol)
    diff = np.abs(got - ref)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(ref), 1e-12)).max()) if diff.size else 0.0
    labels = float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1))) if ref.ndim == 2 else 0.0
    finite = bool(np.isfinite(ref).all() and np.isfinite(got).all())
    close = bool(np.allclose(got, ref, rtol=rtol, atol=atol))
    passed = finite and close and labels == 1.0
    return ParityReport(n, max_abs, max_rel, labels, passed, providers, rtol, atol)


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


def _export_dynamo(model: nn.Module, x: torch.Tensor, opset: int) -> Any:
    batch = torch.export.Dim(BATCH_AXIS)
    with _quiet():
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
    proto = program.model_proto
    got = _opset_of(proto)
    if got != opset:
        raise ExportError(f"the dynamo exporter wrote opset {got}, not the requested {opset}")
    return proto


def _export_legacy(model: nn.Module, x: torch.Tensor, opset: int) -> Any:
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
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
            opset_version=opset,
        )
    return onnx.load_from_string(buffer.getvalue())


def _merge_props(proto: Any, metadata: dict[str, str]) -> dict[str, str]:
    """Merge into metadata_props by hand (onnx.helper.set_model_props drops existing ones)."""
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({str(k): str(v) for k, v in metadata.items()})
    del proto.metadata_props[:]
    for key in sorted(props):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, props[key]
    return props


def _serialize_one_file(proto: Any) -> bytes:
    from onnx.external_data_helper import uses_external_data

    tensors = list(proto.graph.initializer)
    if any(uses_external_data(t) for t in tensors):
        raise ExportError("the exported graph still refers to external data; cannot ship one file")
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise ExportError(
            "the model is over 2 GiB, too large for a single-file ONNX model",
            hint="reduce the model or ship ONNX with external data",
        )
    return proto.SerializeToString()


def _check_file(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {exc}") from exc


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

    ``samples`` are normalised held-out images; when given, :func:`check_parity` must pass or an
    :class:`~revise.errors.ExportError` is raised and nothing is written at ``path``. The card
    (as JSON under ``revise.card``) and ``metadata`` are merged into the model's metadata_props.
    """
    path = Path(path)
    opset = check_opset(opset)
    x = _example_input(card, samples)
    src = model if _device(model).type == "cpu" else copy.deepcopy(model).to("cpu")
    exporter, reason = "dynamo", ""
    with _eval_mode(src):
        try:
            proto = _export_dynamo(src, x, opset)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:500] or type(exc).__name__
            log.warning("dynamo ONNX export failed (%s); using the legacy exporter", reason)
            exporter = "torchscript"
            try:
                proto = _export_legacy(src, x, opset)
            except Exception as exc2:
                raise ExportError(
                    f"ONNX export failed with both exporters: dynamo: {reason}; "
                    f"legacy: {' '.join(str(exc2).split())[:500]}",
                    hint="check that forward() takes one image tensor and returns logits",
                ) from exc2
    opset_written = _opset_of(proto)
    props = {"revise.card": json.dumps(card.to_dict(), sort_keys=True, default=str)}
    props["revise.exporter"] = exporter
    props.update(metadata or {})
    merged = _merge_props(proto, props)
    data = _serialize_one_file(proto)
    parity = None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        _check_file(tmp)
        if samples is not None:
            parity = check_parity(src, tmp, samples)
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
        metadata=merged,
        parity=parity,
        fallback_reason=reason,
    )


def set_metadata(path: str | os.PathLike, metadata: dict[str, str]) -> dict[str, str]:
    """Merge ``metadata`` into an ONNX file's metadata_props (existing keys kept), atomically."""
    path = Path(path)
    proto = _load_proto(path)
    merged = _merge_props(proto, metadata)
    data = _serialize_one_file(proto)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        _check_file(tmp)
    return merged


def graph_digest(path: str | os.PathLike) -> str:
    """sha256 of an ONNX model without its metadata_props: stays the same when provenance or
    a validation verdict is added, changes with any change to the graph or the weights."""
    import hashlib

    proto = _load_proto(path)
    del proto.metadata_props[:]
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata_props of an ONNX file."""
    proto = _load_proto(path, external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
