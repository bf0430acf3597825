"""The revision bundle: the one folder a site hands to a device or an inference server.

```
bundle/
  bundle.json              what is inside: files and sha256, provenance, validation, parity
  model.onnx               fp32, one file (no external data), provenance in metadata_props
  model.fp16.onnx          optional fp16 variant with its own parity gate
  model.safetensors        the weights, and card.json: how to feed the model
  card.json
  run.json                 the unlearning run's record (when the model is a run folder)
  revision_report.json     validation (when it ran) and report.html
  report.html
  triton/<name>/config.pbtxt, triton/<name>/labels.txt, triton/<name>/1/model.onnx
  signing.json, revise.sig written by `revise sign` (see revise.export.signing)
```
A bundle is also a model folder: ``load_model(bundle)`` reads model.safetensors + card.json.
Metadata goes into the ONNX files before anything signs them; attaching a validation report
to an existing bundle rewrites the folder atomically and drops any signature (it no longer
covers the bundle).

`revise validate BUNDLE` records in its report the digest of every file of the bundle but those
written after validation (bundle.json, the report files, the signature files), see
:func:`validated_files`; `revise sign` refuses a bundle whose files differ from that record.
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
from typing import Any

import torch

from revise._io import (
    BUNDLE_MANIFEST,
    REPORT_HTML,
    REPORT_JSON,
    RUN_RECORD,
    atomic_dir,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from revise._run_record import RunRecord, read_run_record
from revise.errors import DataError, ExportError, OptionError, UsageError
from revise.export.onnx import (
    INPUT_NAME,
    OUTPUT_NAMES,
    export_onnx,
    graph_digest,
    set_metadata,
)
from revise.models.card import ModelCard
from revise.models.io import LoadedModel, save_model, weights_digest

log = logging.getLogger(__name__)

SCHEMA = "revise.bundle/1"
REPORT_FILES = (REPORT_JSON, REPORT_HTML)
SIGNING_RECORD = "signing.json"  # written by `revise sign`, then covered by the signature
SIGNATURE_NAME = "revise.sig"  # model-signing's signature of every other file
SIGNATURE_FILES = (SIGNING_RECORD, SIGNATURE_NAME)
# Written once the model is validated: the only files a validation report cannot bind.
AFTER_VALIDATION = (BUNDLE_MANIFEST, *REPORT_FILES, *SIGNATURE_FILES)
# The ONNX metadata that attaching a report writes (checked against the report on their own).
VALIDATION_PROPS = ("revise.validation_verdict", "revise.criteria_sha256")
DEFAULT_OPSET = 18  # what the dynamo exporter writes best; ONNX Runtime >= 1.14 runs it
# fp16 rounds every activation: small logit differences and a rare flip of a near tie are
# expected, so the variant has its own gate instead of the fp32 one (rtol 1e-3, atol 1e-5,
# identical labels).
FP16_TOLERANCE = {"max_abs_diff": 0.1, "min_label_agreement": 0.99}
TRITON_MAX_BATCH = 64


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]  # the content of bundle.json

    @property
    def verdict(self) -> str | None:
        return (self.manifest.get("validation") or {}).get("verdict")


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / BUNDLE_MANIFEST).is_file()


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
    validation: str | Path | None = None,
    recipe: str | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Write the bundle of ``model`` (typically a run folder) to ``out``, atomically.

    ``samples`` are *normalised* held-out images for the parity gates. ``validation`` is a
    report folder from `revise validate` of this very model (checked by weights digest);
    ``recipe`` the resolved recipe text of `revise run`."""
    check_name(name, "bundle name")
    digest = weights_digest(model.module)
    report = _read_report(validation, digest) if validation else None
    run = _run_record(model.path)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_model(model.module, model.card, tmp)
        metadata = _provenance(model, digest, run, report)
        exported = export_onnx(
            model.module,
            model.card,
            tmp / "model.onnx",
            samples=samples,
            opset=opset,
            metadata=metadata,
        )
        variants: dict[str, Any] = {
            "model.onnx": {
                "precision": "fp32",
                "graph_sha256": graph_digest(tmp / "model.onnx"),
                "opset": exported.opset,
                "exporter": exported.exporter,
                "parity": exported.parity.to_dict() if exported.parity else None,
            }
        }
        if report is not None:
            _check_parity_graph(report, variants["model.onnx"])
        if fp16:
            variants["model.fp16.onnx"] = _fp16_variant(model, tmp, samples)
        if run is not None:
            shutil.copyfile(Path(model.path) / RUN_RECORD, tmp / RUN_RECORD)
        if recipe is not None:
            write_text_atomic(tmp / "recipe.yaml", recipe)
        if validation is not None:
            for file in REPORT_FILES:
                shutil.copyfile(Path(validation) / file, tmp / file)
        triton = _write_triton(tmp, name, model.card, exported.output_name)
        manifest = {
            "schema": SCHEMA,
            "name": name,
            "created_utc": _now(),
            "weights_sha256": digest,
            "provenance": metadata,
            "validation": _validation_summary(report),
            "onnx": {"input": INPUT_NAME, "output": exported.output_name, "variants": variants},
            "triton": triton,
        }
        _finish(tmp, manifest)
    return load_bundle(out)


def load_bundle(path: str | Path) -> Bundle:
    path = Path(path)
    if not is_bundle(path):
        raise UsageError(
            f"{path} is not a revise bundle (no {BUNDLE_MANIFEST})", hint="revise export"
        )
    return Bundle(path, json.loads((path / BUNDLE_MANIFEST).read_text()))


def attach_validation(bundle: str | Path, validation: str | Path) -> Bundle:
    """Put a validation report of the bundle's model into the bundle: the report files, the
    criteria digest and verdict in bundle.json and in every ONNX file's metadata. The bundle is
    rewritten atomically; an existing signature is dropped (it would no longer verify)."""
    current = load_bundle(bundle)
    report = _read_report(validation, current.manifest["weights_sha256"])
    _check_parity_graph(report, current.manifest["onnx"]["variants"]["model.onnx"])
    check_validated_files(current.path, report)  # a report of this bundle as it is now
    summary = _validation_summary(report)
    with atomic_dir(current.path, overwrite=True) as tmp:
        shutil.copytree(current.path, tmp, dirs_exist_ok=True)
        for file in SIGNATURE_FILES:
            (tmp / file).unlink(missing_ok=True)
        for file in REPORT_FILES:
            shutil.copyfile(Path(validation) / file, tmp / file)
        props = _validation_props(summary)
        for onnx_file in sorted(tmp.rglob("*.onnx")):
            set_metadata(onnx_file, props)
        manifest = dict(current.manifest)
        manifest["provenance"] = {**manifest["provenance"], **props}
        manifest["validation"] = summary
        _finish(tmp, manifest)
    return load_bundle(current.path)


# -- parts ------------------------------------------------------------------------------------


def validated_files(folder: str | Path) -> dict[str, str]:
    """sha256 of every file of a bundle that bears on what its model outputs or means - all
    files but AFTER_VALIDATION - as a validation report records them. An ONNX file is digested
    without the VALIDATION_PROPS in its metadata: attaching the report rewrites those."""
    folder = Path(folder)
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name not in AFTER_VALIDATION:
            onnx_file = path.suffix.lower() == ".onnx"
            digests[name] = _onnx_content_digest(path) if onnx_file else sha256_file(path)
    return digests


def validation_record(folder: str | Path) -> dict[str, Any]:
    """What a validation report of the bundle ``folder`` records of it (``inputs.bundle``)."""
    files = validated_files(folder)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode("utf-8")).hexdigest()
    return {"path": str(folder), "sha256": digest, "files": files}


def check_validated_files(folder: str | Path, report: dict[str, Any]) -> bool:
    """Whether ``report`` records the files of the bundle ``folder`` (False: it validated a
    model folder, or was written before revise recorded them). Raises DataError naming the
    first file changed, added or removed since."""
    folder = Path(folder)
    recorded = ((report.get("inputs") or {}).get("bundle") or {}).get("files")
    if not isinstance(recorded, dict) or not recorded:
        return False
    actual = validated_files(folder)
    differ = sorted(n for n in set(actual) | set(recorded) if actual.get(n) != recorded.get(n))
    if not differ:
        return True
    name = differ[0]
    uncovered = f"the verdict of {REPORT_FILES[0]} does not cover it"
    if name not in recorded:
        what = f"was added after validation: {uncovered}"
    elif name not in actual:
        what = "was validated but is missing: the bundle is not the one validated"
    else:
        what = (
            f"changed after validation (sha256 {actual[name][:12]}..., validated "
            f"{str(recorded[name])[:12]}...): {uncovered}"
        )
    more = f" ({len(differ) - 1} more file(s) differ)" if len(differ) > 1 else ""
    raise DataError(
        f"{folder / name} {what}{more}",
        hint="edit nothing after validation; validate the bundle again: revise validate BUNDLE ...",
    )


def validation_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What bundle.json records of the validation ``report`` (its ``validation`` entry)."""
    return _validation_summary(report) or {}


def validation_props(report: dict[str, Any] | None) -> dict[str, str]:
    """The VALIDATION_PROPS that a bundle's ONNX files carry for ``report`` (None: no report)."""
    return _validation_props(_validation_summary(report))


def _onnx_content_digest(path: Path) -> str:
    """sha256 of an ONNX model as serialised without the VALIDATION_PROPS (the graph, the
    weights and every other metadata entry: the card, the provenance)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: protobuf's errors share no base class
        raise DataError(
            f"{path} is not a readable ONNX model ({type(exc).__name__})",
            hint="re-export the bundle",
        ) from exc
    kept = [p for p in proto.metadata_props if p.key not in VALIDATION_PROPS]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def _read_report(folder: str | Path, digest: str) -> dict[str, Any]:
    folder = Path(folder)
    missing = [f for f in REPORT_FILES if not (folder / f).is_file()]
    if missing:
        raise UsageError(
            f"{folder} is not a validation report folder (missing {', '.join(missing)})",
            hint="pass the -o folder of `revise validate`",
        )
    report = json.loads((folder / REPORT_JSON).read_text())
    validated = (report.get("models") or {}).get("candidate", {}).get("sha256")
    if validated != digest:
        raise ExportError(
            f"the report in {folder} validates other weights ({str(validated)[:12]}...) than "
            f"this model ({digest[:12]}...)",
            hint="validate the model being exported (or the bundle itself)",
        )
    return report


def _check_parity_graph(report: dict[str, Any], shipped: dict[str, Any]) -> None:
    """A report whose parity gate ran on an ONNX file must have run on the graph shipped (the
    export is deterministic; only metadata may differ)."""
    checked = ((report.get("inputs") or {}).get("onnx") or {}).get("graph_sha256")
    if checked and checked != shipped["graph_sha256"]:
        raise ExportError(
            "the report's parity check ran on another ONNX graph than the bundle's model.onnx",
            hint="validate the bundle itself: revise validate BUNDLE ...",
        )


def _validation_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    criteria = report.get("inputs", {}).get("criteria", {})
    return {
        "verdict": report.get("verdict"),
        "summary": report.get("summary"),
        "criteria_sha256": criteria.get("sha256"),
        "report_sha256": hashlib.sha256(
            json.dumps(report, sort_keys=True).encode("utf-8")
        ).hexdigest(),
        "failed_gates": [g["name"] for g in report.get("gates", []) if not g.get("passed")],
    }


def _validation_props(summary: dict[str, Any] | None) -> dict[str, str]:
    if summary is None:
        return {"revise.validation_verdict": "not run"}
    return {
        "revise.validation_verdict": str(summary["verdict"]),
        "revise.criteria_sha256": str(summary["criteria_sha256"]),
    }


def _run_record(path: Path) -> RunRecord | None:
    record = Path(path) / RUN_RECORD if Path(path).is_dir() else None
    if record is None or not record.is_file():
        return None
    return read_run_record(record, hint="the run folder is damaged: unlearn again (or restore it)")


def _provenance(
    model: LoadedModel, digest: str, run: RunRecord | None, report: dict[str, Any] | None
) -> dict[str, str]:
    """What the ONNX metadata_props say of where the model comes from (no patient data: the
    forget selection is the run record's text, patient values already hidden)."""
    import onnx
    import onnxruntime

    import revise

    props = {
        "revise.weights_sha256": digest,
        "revise.source_format": model.format,
        "revise.versions": json.dumps(
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
                "revise.method": run.method,
                "revise.base_model_digest": run.base_model_digest or "",
                "revise.forget_selection": selection,
                "revise.forget_selection_sha256": hashlib.sha256(selection.encode()).hexdigest(),
                "revise.forget_set_digest": (run.selection_digests or {}).get("forget", ""),
            }
        )
    props.update(_validation_props(_validation_summary(report)))
    return props


def _fp16_variant(model: LoadedModel, folder: Path, samples: torch.Tensor) -> dict[str, Any]:
    """model.fp16.onnx: the fp32 graph with fp16 weights and arithmetic (fp32 inputs and
    outputs), gated on its own tolerance and label agreement."""
    import onnx
    from onnxconverter_common import float16

    from revise.export.onnx import check_parity

    proto = float16.convert_float_to_float16(
        onnx.load(str(folder / "model.onnx")), keep_io_types=True
    )
    target = folder / "model.fp16.onnx"
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
    return {
        "precision": "fp16",
        "graph_sha256": graph_digest(target),
        "parity": parity.to_dict(),
        "tolerance": dict(FP16_TOLERANCE),
    }


def triton_config(
    name: str,
    card: ModelCard,
    *,
    max_batch_size: int = TRITON_MAX_BATCH,
    output: str | None = None,
) -> str:
    """config.pbtxt for Triton's ONNX Runtime backend: batch dimension implicit (dynamic
    batching), input (C, H, W) fp32 normalised pixels, output with class labels, named as the
    exported graph names it (``output``; by default the name for the card's ``output``:
    ``logits``, ``probabilities``, ...)."""
    c, (h, w) = card.in_channels, card.input_size
    output = output or OUTPUT_NAMES[card.output_kind]
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n"
        "  {\n"
        f'    name: "{INPUT_NAME}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {c}, {h}, {w} ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        f'    name: "{output}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {card.num_classes} ]\n"
        '    label_filename: "labels.txt"\n'
        "  }\n"
        "]\n"
        "dynamic_batching { }\n"
    )


def _write_triton(folder: Path, name: str, card: ModelCard, output: str) -> dict[str, Any]:
    """The Triton model repository ``triton/<name>/`` (version 1 = this bundle's model.onnx)."""
    root = folder / "triton" / name
    (root / "1").mkdir(parents=True)
    shutil.copyfile(folder / "model.onnx", root / "1" / "model.onnx")
    write_text_atomic(root / "config.pbtxt", triton_config(name, card, output=output))
    labels = list(card.class_names) or [str(i) for i in range(card.num_classes)]
    write_text_atomic(root / "labels.txt", "\n".join(labels) + "\n")
    return {"repository": "triton", "model": name, "version": 1}


def _finish(folder: Path, manifest: dict[str, Any]) -> None:
    """Record every file's sha256 and size in bundle.json (itself excluded), then write it;
    make the folder readable by the server that will load it (atomic writes create 0600)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (BUNDLE_MANIFEST, *SIGNATURE_FILES):
            continue
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    write_json_atomic(folder / BUNDLE_MANIFEST, {**manifest, "files": files})
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
