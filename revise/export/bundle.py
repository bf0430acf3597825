"""The revision bundle: the one folder a site hands to a device or an inference server, written
by `revise export` (:func:`write_bundle`) and given its validation report by `revise validate
BUNDLE` (:func:`attach_validation`).

A bundle is also a model folder: ``load_model(bundle)`` reads model.safetensors + card.json.
Metadata goes into the ONNX files before anything signs them; attaching a validation report
to an existing bundle rewrites the folder atomically and drops any signature (it no longer
covers the bundle). The layout and bundle.json are :mod:`revise.export.manifest`; the checks
that a bundle is the one exported and validated, :mod:`revise.export.bundle_checks`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from revise._io.atomic import atomic_dir, write_json_atomic, write_text_atomic
from revise._io.digests import sha256_file
from revise._io.outputs import BUNDLE_MANIFEST, REPORT_JSON, RUN_RECORD
from revise._run_record import RunRecord, read_run_record
from revise.errors import ExportError, OptionError, UsageError
from revise.export.attestations import write_attestations
from revise.export.bundle_validation import (
    check_parity_graph,
    check_validated_files,
    read_report,
    validation_props,
    validation_summary,
)
from revise.export.manifest import (
    FP16_ONNX,
    INT8_ONNX,
    MODEL_ONNX,
    RECIPE_FILE,
    REPORT_FILES,
    SCHEMA,
    SIGNATURE_FILES,
    UNLISTED,
    VALIDATION_PROPS_LEGACY,
    BundleManifest,
    FileEntry,
    OnnxEntry,
    OnnxVariant,
    Parity,
    ValidationSummary,
    is_bundle,
    read_bundle_manifest,
)
from revise.export.onnx import INPUT_NAME, export_onnx
from revise.export.onnx_file import graph_digest, set_metadata
from revise.export.onnx_metadata import key
from revise.export.parity import check_parity
from revise.export.quantize import INT8_MIN_AGREEMENT, CalibrationImages, int8_variant
from revise.export.triton import write_triton
from revise.models.io import LoadedModel, save_model, weights_digest

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18  # what the dynamo exporter writes best; ONNX Runtime >= 1.14 runs it
# fp16 rounds every activation: small logit differences and a rare flip of a near tie are
# expected, so the variant has its own gate instead of the fp32 one (rtol 1e-3, atol 1e-5,
# identical labels).
FP16_TOLERANCE = {"max_abs_diff": 0.1, "min_label_agreement": 0.99}


@dataclass
class Bundle:
    path: Path
    manifest: BundleManifest  # bundle.json

    @property
    def verdict(self) -> str | None:
        return self.manifest.verdict


def check_name(name: str, what: str) -> None:
    """Run and bundle names become folder names (runs/<name>, triton/<name>): letters, digits,
    '-' and '_' only, so that none reaches outside its folder (Triton's rule)."""
    if not name.replace("_", "").replace("-", "").isalnum():
        raise OptionError(what, f"{name!r}: use letters, digits, '-' and '_' (Triton's rule)")


def write_bundle(
    model: LoadedModel,
    out: str | Path,
    *,
    samples: torch.Tensor,
    name: str = "revised_model",
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    int8: CalibrationImages | None = None,
    int8_min_agreement: float = INT8_MIN_AGREEMENT,
    validation: str | Path | None = None,
    recipe: str | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Write the bundle of ``model`` (typically a run folder) to ``out``, atomically.

    ``samples`` are *normalised* held-out images for the parity gates. ``int8``: also ship
    model.int8.onnx, calibrated on these retain images and gated on its label agreement with
    PyTorch (:mod:`revise.export.quantize`). ``validation`` is a report folder from `revise
    validate` of this very model (checked by weights digest); ``recipe`` the resolved recipe
    text of `revise run`."""
    check_name(name, "bundle name")
    digest = weights_digest(model.module)
    report = read_report(validation, digest) if validation else None
    summary = validation_summary(report, Path(validation) / REPORT_JSON) if report else None
    run = _run_record(model.path)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_model(model.module, model.card, tmp)
        metadata = _provenance(model, digest, run, summary)
        exported = export_onnx(
            model.module,
            model.card,
            tmp / MODEL_ONNX,
            samples=samples,
            opset=opset,
            metadata=metadata,
        )
        parity = exported.parity
        variants = {
            MODEL_ONNX: OnnxVariant(
                precision="fp32",
                graph_sha256=graph_digest(tmp / MODEL_ONNX),
                opset=exported.opset,
                exporter=exported.exporter,
                parity=Parity.model_validate(parity.to_dict()) if parity else None,
            )
        }
        if report is not None:
            check_parity_graph(report, variants[MODEL_ONNX])
        if fp16:
            variants[FP16_ONNX] = _fp16_variant(model, tmp, samples)
        if int8 is not None:  # revise.export.quantize
            variants[INT8_ONNX] = int8_variant(
                model, tmp, samples, int8, min_agreement=int8_min_agreement
            )
        if run is not None:
            shutil.copyfile(Path(model.path) / RUN_RECORD, tmp / RUN_RECORD)
        if recipe is not None:
            write_text_atomic(tmp / RECIPE_FILE, recipe)
        if validation is not None:
            for file in REPORT_FILES:
                shutil.copyfile(Path(validation) / file, tmp / file)
        manifest = BundleManifest(
            schema=SCHEMA,
            name=name,
            created_utc=_now(),
            weights_sha256=digest,
            provenance=metadata,
            validation=summary,
            onnx=OnnxEntry(input=INPUT_NAME, output=exported.output_name, variants=variants),
            triton=write_triton(tmp, name, model.card, exported.output_name),
        )
        _finish(tmp, manifest)
    return load_bundle(out)


def load_bundle(path: str | Path) -> Bundle:
    """The bundle ``path``; a damaged bundle.json is a ModelError naming each wrong field."""
    path = Path(path)
    if not is_bundle(path):
        raise UsageError(
            f"{path} is not a revise bundle (no {BUNDLE_MANIFEST})", hint="revise export"
        )
    return Bundle(path, read_bundle_manifest(path, hint="re-export the bundle: revise export"))


def attach_validation(bundle: str | Path, validation: str | Path) -> Bundle:
    """Put a validation report of the bundle's model into the bundle: the report files, the
    criteria digest and verdict in bundle.json and in every ONNX file's metadata. The bundle is
    rewritten atomically; an existing signature is dropped (it would no longer verify)."""
    current = load_bundle(bundle)
    report = read_report(validation, current.manifest.weights_sha256)
    shipped = current.manifest.onnx.variants.get(MODEL_ONNX)
    if shipped is None:
        raise ExportError(
            f"{current.path / BUNDLE_MANIFEST} records no {MODEL_ONNX}", hint="revise export"
        )
    check_parity_graph(report, shipped)
    check_validated_files(current.path, report)  # a report of this bundle as it is now
    summary = validation_summary(report, Path(validation) / REPORT_JSON)
    with atomic_dir(current.path, overwrite=True) as tmp:
        shutil.copytree(current.path, tmp, dirs_exist_ok=True)
        for file in SIGNATURE_FILES:
            (tmp / file).unlink(missing_ok=True)
        for file in REPORT_FILES:
            shutil.copyfile(Path(validation) / file, tmp / file)
        props = validation_props(summary)
        for onnx_file in sorted(tmp.rglob("*.onnx")):
            # an older bundle's keys (revise.*) give way to the com.revise. ones
            set_metadata(onnx_file, props, drop=VALIDATION_PROPS_LEGACY)
        manifest = current.manifest.model_copy(deep=True)
        kept = {k: v for k, v in manifest.provenance.items() if k not in VALIDATION_PROPS_LEGACY}
        manifest.provenance = {**kept, **props}
        manifest.validation = summary
        _finish(tmp, manifest)
    return load_bundle(current.path)


# -- parts ------------------------------------------------------------------------------------


def _run_record(path: Path) -> RunRecord | None:
    record = Path(path) / RUN_RECORD if Path(path).is_dir() else None
    if record is None or not record.is_file():
        return None
    return read_run_record(record, hint="the run folder is damaged: unlearn again (or restore it)")


def _provenance(
    model: LoadedModel, digest: str, run: RunRecord | None, summary: ValidationSummary | None
) -> dict[str, str]:
    """What the ONNX metadata_props say of where the model comes from (no patient data: the
    forget selection is the run record's text, patient values already hidden)."""
    import onnx
    import onnxruntime

    import revise

    props = {
        key("weights_sha256"): digest,
        key("source_format"): model.format,
        key("versions"): json.dumps(
            {
                "revise": revise.__version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "python": platform.python_version(),
            },
            sort_keys=True,
        ),
    }
    if run is not None:
        selection = run.forget_selection or ""
        props.update(
            {
                key("method"): run.method,
                key("base_model_digest"): run.base_model_digest or "",
                key("forget_selection"): selection,
                key("forget_selection_sha256"): hashlib.sha256(selection.encode()).hexdigest(),
                key("forget_set_digest"): (run.selection_digests or {}).get("forget", ""),
            }
        )
    props.update(validation_props(summary))
    return props


def _fp16_variant(model: LoadedModel, folder: Path, samples: torch.Tensor) -> OnnxVariant:
    """model.fp16.onnx: the fp32 graph with fp16 weights and arithmetic (fp32 inputs and
    outputs), gated on its own tolerance and label agreement."""
    import onnx
    from onnxconverter_common import float16

    proto = float16.convert_float_to_float16(
        onnx.load(str(folder / MODEL_ONNX)), keep_io_types=True
    )
    target = folder / FP16_ONNX
    onnx.save(proto, str(target))
    parity = check_parity(model.module, target, samples, rtol=0.0, atol=0.1)
    if (
        parity.max_abs_diff > FP16_TOLERANCE["max_abs_diff"]
        or parity.label_agreement < FP16_TOLERANCE["min_label_agreement"]
    ):
        raise ExportError(
            f"the fp16 variant disagrees with PyTorch beyond its tolerance "
            f"(max |diff| <= {FP16_TOLERANCE['max_abs_diff']}, label agreement >= "
            f"{FP16_TOLERANCE['min_label_agreement']}): {parity.summary()}",
            hint="ship fp32 only (leave out {fp16})",
            options=("fp16",),
        )
    return OnnxVariant(
        precision="fp16",
        graph_sha256=graph_digest(target),
        parity=Parity.model_validate(parity.to_dict()),
        tolerance=dict(FP16_TOLERANCE),
    )


def _finish(folder: Path, manifest: BundleManifest) -> None:
    """Write the attestations (revise.export.attestations: they record the verdict), record
    every file's sha256 and size in bundle.json (but the UNLISTED: itself, the signature's),
    then write it; make the folder readable by the server that will load it (atomic writes
    create 0600)."""
    write_attestations(folder, manifest)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in UNLISTED:
            continue
        files[rel] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
    manifest.files = files
    write_json_atomic(folder / BUNDLE_MANIFEST, manifest.to_json())
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
