"""The INT8 variant of a bundle, ``model.int8.onnx``, for CPUs and edge accelerators: the fp32
graph statically quantized with ONNX Runtime's quantization tools, calibrated on retain images
(never forget-set images), gated on its label agreement with the model in PyTorch.

How it is quantized (:data:`QUANTIZATION`, recorded in bundle.json):

* QDQ format: QuantizeLinear / DequantizeLinear pairs around the float operators, one file that
  every ONNX Runtime execution provider runs and that TensorRT, OpenVINO and edge compilers
  fuse into int8 kernels;
* int8 activations (per tensor) and int8 weights (per output channel), ranges from MinMax
  calibration, after ONNX Runtime's pre-processing (shape inference, constant folding; a graph
  it cannot process is quantized as exported);
* weights in 7 bits (``reduce_range``): x86 CPUs without VNNI (AVX2 only) multiply 8-bit
  operands in 16-bit pairs that saturate on full-range weights. On the demo model on an AVX2
  EPYC, 8-bit per-channel weights agreed with fp32 on 0.91 of the held-out images (0.53 on the
  forgotten device) in ONNX Runtime's optimised session against 1.00 in its reference kernels;
  7-bit weights agree on 0.99 / 0.96 in both. A bundle goes to CPUs of every kind.

Calibration images (:func:`calibration_from_manifest`) are retain rows: the training rows of
the manifest outside the forget selection, i.e. the retain set of the revision
(:func:`revise.data.split.partition`); held-out rows are left to validation, which judges the
variant on them. The forget selection is the one given (``revise export --forget``, a recipe's),
else the run record's of the model folder (run.json), which must parse (a record hides patient
values and list files) and must pick on this manifest the very forget set the run recorded (its
digest); otherwise the export stops and asks for the selection. Up to ``n`` rows are drawn at
random (fixed seed), so that every class and device is represented; bundle.json records how
many, from where, and the digest of their sample keys.

The gate: the share of the parity images on which the variant and the model in PyTorch (fp32)
predict the same class, at least :data:`INT8_MIN_AGREEMENT` unless told otherwise. Its largest
logit difference is recorded, not judged: int8 logits differ by design. Per class and per
device, the acceptance criteria judge it on the held-out sets (``int8_label_agreement``,
``int8_accuracy_change``: :mod:`revise.validate.int8`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from revise._io.atomic import atomic_path
from revise._io.digests import sha256_bytes
from revise._io.outputs import RUN_RECORD
from revise.errors import ExportError, SelectionError
from revise.export.manifest import INT8_ONNX, MODEL_ONNX, OnnxVariant, Parity
from revise.export.onnx_file import (
    check_file,
    graph_digest,
    load_proto,
    merge_props,
    read_metadata,
    serialize_one_file,
)
from revise.export.parity import check_parity
from revise.models.io import LoadedModel

log = logging.getLogger(__name__)

# A sound quantization of the demo model agrees with fp32 on 0.96-0.99 of held-out images (the
# lower end on the forgotten device, where the model sits on near ties); a broken one (kernel
# saturation, calibration on the wrong images) falls far below. Per class and per device the
# acceptance criteria judge it.
INT8_MIN_AGREEMENT = 0.95
CALIBRATION_SAMPLES = 256  # ONNX Runtime's examples calibrate on a few hundred images
CALIBRATION_SEED = 0
QUANTIZATION = {
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "activations": "int8, per tensor",
    "weights": "int8 in 7 bits (reduce_range), per output channel",
    "calibration": "MinMax",
}


@dataclass(frozen=True)
class CalibrationImages:
    """The images a quantization is calibrated on: normalised, with the sample keys of the rows
    they come from and words saying which rows those are."""

    x: torch.Tensor  # (N, C, H, W), normalised as the model takes them
    keys: tuple[str, ...]
    source: str

    def record(self) -> dict[str, Any]:
        """What bundle.json says of them: how many, from where, the digest of their keys
        (:func:`revise.data.manifest.digest` of their rows: keys, never patient data)."""
        digest = sha256_bytes("\n".join(sorted(self.keys)).encode())
        return {"n": len(self.keys), "source": self.source, "sample_keys_sha256": digest}


def calibration_set(
    decoded: Any, card: Any, n: int = CALIBRATION_SAMPLES, *, source: str
) -> CalibrationImages:
    """Up to ``n`` images of a decoded set (a :class:`revise.data.sets.DecodedSet` with its
    rows, pixel space), drawn at random with a fixed seed, normalised for ``card``."""
    from revise.models.pixel import normalize

    if decoded.rows is None or len(decoded) == 0:
        raise ExportError("no retain image to calibrate the INT8 variant on", hint=_NO_RETAIN)
    order = np.random.default_rng(CALIBRATION_SEED).permutation(len(decoded))[:n]
    take = torch.as_tensor(np.sort(order))
    keys = tuple(decoded.rows["sample_key"].astype(str).iloc[take.numpy()])
    return CalibrationImages(normalize(decoded.x[take], card), keys, source)


_NO_RETAIN = "give a manifest with training rows outside the forget selection ({forget})"


def retain_rows(manifest: pd.DataFrame, forget: str, n: int = CALIBRATION_SAMPLES) -> pd.DataFrame:
    """Up to ``n`` retain rows of ``manifest`` for ``forget``: labelled training rows outside the
    selection (the revision's retain set), drawn at random with a fixed seed. A selection that
    leaves no retain row is a SelectionError saying so."""
    from revise.data.split import partition

    retain = partition(manifest, forget)["retain"]
    if retain.empty:  # partition refuses this; a guard for what it may allow one day
        raise ExportError("no retain row to calibrate the INT8 variant on", hint=_NO_RETAIN)
    if len(retain) > n:
        retain = retain.sample(n=n, random_state=CALIBRATION_SEED).sort_index()
    return retain.reset_index(drop=True)


def forget_selection(model: Path, manifest: pd.DataFrame, given: str | None) -> tuple[str, str]:
    """(the forget selection that keeps calibration off forget-set images, where it comes from):
    ``given``, else the run record's of ``model`` when it parses and picks on ``manifest`` the
    forget set the run recorded."""
    from revise.data import manifest as manifest_mod
    from revise.data.calibration import run_record
    from revise.data.select import describe, parse
    from revise.data.split import partition

    if given is not None:
        return given, "the forget selection given"
    run = run_record(model)
    selection = run.forget_selection if run is not None else None
    ask = "give the revision's forget selection ({forget})"
    if not selection:
        raise ExportError(
            f"the INT8 variant is calibrated on retain images only, and {model} records no "
            f"forget selection (no {RUN_RECORD} with one)",
            hint=ask,
            options=("forget",),
        )
    try:
        parse(selection)
    except SelectionError:
        raise ExportError(
            f"{model / RUN_RECORD} holds the forget selection with its patient values or list "
            f"files hidden ({selection}): it cannot tell forget-set images from retain images",
            hint=ask,
            options=("forget",),
        ) from None
    recorded = (run.selection_digests or {}).get("forget") if run is not None else None
    if recorded and manifest_mod.digest(partition(manifest, selection)["forget"]) != recorded:
        raise ExportError(
            f"the forget selection of {model / RUN_RECORD} ({describe(selection)}) picks other "
            "training rows of this manifest than the run forgot (their digest differs)",
            hint="give the manifest the run used, or " + ask,
            options=("forget",),
        )
    return selection, f"the forget selection of {RUN_RECORD}"


def calibration_from_manifest(
    model: Path,
    manifest_path: Path,
    card: Any,
    n: int = CALIBRATION_SAMPLES,
    *,
    forget: str | None = None,
    cache: Path | None = None,
) -> CalibrationImages:
    """The calibration images of ``model`` from the manifest ``manifest_path``: up to ``n``
    retain rows (:func:`retain_rows` of :func:`forget_selection`), decoded and normalised."""
    from revise.data import manifest as manifest_mod
    from revise.data import tensors
    from revise.data.select import describe

    df = manifest_mod.load(manifest_path)
    selection, whence = forget_selection(Path(model), df, forget)
    rows = retain_rows(df, selection, n)
    decoded = tensors.load_tensors(rows, card, cache_dir=cache)
    source = (
        f"retain rows of {Path(manifest_path).name}: training rows outside "
        f"'{describe(selection)}' ({whence})"
    )
    return calibration_set(decoded, card, n, source=source)


class _Reader:
    """The calibration images in batches, as ONNX Runtime's CalibrationDataReader reads them."""

    def __init__(self, name: str, images: np.ndarray, batch: int = 32) -> None:
        self.batches = [{name: images[i : i + batch]} for i in range(0, len(images), batch)]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def quantize(source: Path, target: Path, images: torch.Tensor) -> None:
    """Write ``target``: ``source`` statically quantized (:data:`QUANTIZATION`), calibrated on
    ``images`` (normalised), one file with ``source``'s metadata_props, checked by onnx.checker."""
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Reader, q.CalibrationDataReader):
        pass

    name = load_proto(source, external_data=False).graph.input[0].name
    calibration = Reader(name, images.detach().to("cpu", torch.float32).numpy())
    with tempfile.TemporaryDirectory(prefix="revise-int8-") as work:
        graph, quantized = Path(work) / "pre.onnx", Path(work) / "int8.onnx"
        try:
            quant_pre_process(str(source), str(graph))
        except Exception as exc:  # a graph its shape inference cannot follow
            log.warning("ONNX Runtime cannot pre-process %s (%s): quantizing it as is", source, exc)
            graph = source
        try:
            q.quantize_static(
                str(graph),
                str(quantized),
                calibration,
                quant_format=q.QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=q.QuantType.QInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=q.CalibrationMethod.MinMax,
            )
        except Exception as exc:
            first = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ExportError(
                f"ONNX Runtime cannot quantize {source}: {first}",
                hint="ship fp32 only (leave out {int8})",
                options=("int8",),
            ) from exc
        proto = load_proto(quantized)
    used = {node.domain for node in proto.graph.node} | {""}
    kept = [entry for entry in proto.opset_import if entry.domain in used]
    del proto.opset_import[:]  # pre-processing imports ONNX Runtime's domains the graph never uses
    proto.opset_import.extend(kept)
    del proto.metadata_props[:]  # the source's exactly (pre-processing adds its own)
    merge_props(proto, read_metadata(source))
    data = serialize_one_file(proto)
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
        check_file(tmp)


def int8_variant(
    model: LoadedModel,
    folder: Path,
    samples: torch.Tensor,
    calibration: CalibrationImages,
    *,
    min_agreement: float = INT8_MIN_AGREEMENT,
) -> OnnxVariant:
    """``folder/model.int8.onnx`` from ``folder/model.onnx``, gated on its label agreement with
    ``model`` in PyTorch on ``samples`` (normalised held-out images); its bundle.json entry."""
    target = folder / INT8_ONNX
    quantize(folder / MODEL_ONNX, target, calibration.x)
    found = check_parity(model.module, target, samples, rtol=0.0, atol=0.0)
    passed = found.label_agreement >= min_agreement
    if not passed:
        raise ExportError(
            f"the INT8 variant predicts another class than PyTorch too often (label agreement "
            f">= {min_agreement:g} wanted): {found.summary()}",
            hint="calibrate on more retain images ({calibration_samples}), or ship fp32 only "
            "(leave out {int8})",
            options=("calibration_samples", "int8"),
        )
    parity = {**found.to_dict(), "passed": passed, "rtol": None, "atol": None}  # labels judged
    return OnnxVariant(
        precision="int8",
        graph_sha256=graph_digest(target),
        parity=Parity.model_validate(parity),
        tolerance={"min_label_agreement": min_agreement},
        quantization=dict(QUANTIZATION),
        calibration=calibration.record(),
    )
