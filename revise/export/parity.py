"""The parity check: ONNX Runtime (CPU, fp32) runs an ONNX file on the images PyTorch runs the
model on, and the outputs must agree (:func:`check_parity`). `revise export` gates every ONNX
file it writes on it; `revise validate --onnx` reports it."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from revise.errors import ExportError
from revise.export.onnx_file import load_proto
from revise.models._final_activation import onnx_output_kind
from revise.models.outputs import deployed, kind_of_output_name

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, put back in training mode after if it was."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters (or buffers) are; CPU for a model with none."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """PyTorch's fp32 outputs for one batch (the reference side of the parity check): logits,
    or what the deployed network returns where ``model`` is :func:`deployed`."""
    with torch.no_grad():
        out = model(x.to(device_of(model), torch.float32))
    if not isinstance(out, torch.Tensor):
        raise ExportError(
            f"the model returns {type(out).__name__}, not one tensor",
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


def _file_output_kind(onnx_path: str | os.PathLike, names: list[str]) -> tuple[str, str]:
    """(the output to compare, what it holds): revise's output names say it; otherwise the node
    that produces the first output (a vendor's graph ending in Softmax); otherwise logits."""
    for name in names:
        kind = kind_of_output_name(name)
        if kind is not None:
            return name, kind
    return names[0], onnx_output_kind(load_proto(onnx_path, external_data=False)) or "logits"


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    samples: torch.Tensor,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    batch_size: int = 64,
    output: str | None = None,
) -> ParityReport:
    """Compare ONNX Runtime (CPUExecutionProvider) outputs with ``model(samples)`` in eval mode.

    Like is compared with like: ``model`` returns logits (as revise trains it), and where the
    file returns probabilities (``output``, else read from the file: its output's name, or the
    Softmax / LogSoftmax / Sigmoid that produces it) the activation is applied to ``model``'s
    side (:func:`revise.models.outputs.deployed`).

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
    out_name, kind = _file_output_kind(onnx_path, [o.name for o in session.get_outputs()])
    model = deployed(model, output or kind)
    ref_parts, got_parts = [], []
    with eval_mode(model):
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
