"""The CycloneDX 1.6 ML-BOM of a revised model (``attestations/model.cdx.json`` of a bundle).

The BOM describes (``metadata.component``) one component of type ``machine-learning-model`` -
the bundle's model, with the sha256 of model.onnx, the base model as its pedigree, and a
``modelCard``: the task and architecture, the input and output formats from
the card, the candidate's accuracies from the validation report (per set, with their 95%
intervals; never per group: a group may be named for a patient) and the considerations a site
reads before deploying it. Its ``components`` are the model's files, each with its sha256.
Written as plain JSON (cyclonedx-python-lib has no modelCard); the
test suite validates it against CycloneDX's own 1.6 JSON schema.

The serial number is derived from the bundle (name, creation time, weights), so the BOM keeps it
when a validation report is attached, and its ``version`` counts up each time it is rewritten.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from revise._run_record import RunRecord
from revise._validation_record import ValidationReport
from revise.errors import DataError
from revise.export.manifest import MODEL_ONNX, BundleManifest

__all__ = ["BOM_FORMAT", "build_bom", "check_bom"]

BOM_FORMAT = "1.6"
_SCHEMA_URL = "http://cyclonedx.org/schema/bom-1.6.schema.json"
_NAMESPACE = uuid.UUID("6f0b1e52-3c1d-4f6e-9a57-72657669736a")  # revise's uuid5 namespace
_SETS = {
    "forget": "forget set (trained on, inside the forget selection)",
    "retain": "retain set (trained on, outside it)",
    "heldout_forget": "held-out images inside the forget selection",
    "heldout_retain": "held-out images outside it",
}
_HINT = "re-export the bundle (revise export), then validate it again: revise validate BUNDLE"


def build_bom(
    manifest: BundleManifest,
    card: Any,
    digests: Mapping[str, str],
    *,
    run: RunRecord | None = None,
    report: ValidationReport | None = None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The BOM of the bundle that ``manifest`` describes: ``card`` is its ModelCard,
    ``digests`` the sha256 of its model files (name -> digest, model.onnx among them),
    ``previous`` the BOM it held before (for the version)."""
    import revise

    serial = f"urn:uuid:{uuid.uuid5(_NAMESPACE, _identity(manifest))}"
    version = 1
    if previous and previous.get("serialNumber") == serial:
        earlier = previous.get("version")
        version = earlier + 1 if isinstance(earlier, int) and earlier >= 1 else 1
    ref = f"model:{manifest.name}"
    model: dict[str, Any] = {
        "type": "machine-learning-model",
        "bom-ref": ref,
        "name": manifest.name,
        "version": manifest.created_utc,
        "description": card.description or f"{card.architecture} image classifier, revised",
        "hashes": [{"alg": "SHA-256", "content": digests[MODEL_ONNX]}],
        "modelCard": _model_card(manifest, card, run, report, ref),
        "properties": _properties(manifest, run),
    }
    if run is not None and run.base_model_digest:
        model["pedigree"] = {
            "ancestors": [
                {
                    "type": "machine-learning-model",
                    "name": "base model",
                    "properties": [
                        {"name": "com.revise:weights_sha256", "value": run.base_model_digest}
                    ],
                }
            ],
            "notes": f"revised from the base model by machine unlearning ({run.method})",
        }
    return {
        "$schema": _SCHEMA_URL,
        "bomFormat": "CycloneDX",
        "specVersion": BOM_FORMAT,
        "serialNumber": serial,
        "version": version,
        "metadata": {
            "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {
                "components": [
                    {"type": "application", "name": "revise", "version": revise.__version__}
                ]
            },
            "component": model,
        },
        "components": [
            {
                "type": "file",
                "bom-ref": f"file:{name}",
                "name": name,
                "hashes": [{"alg": "SHA-256", "content": digests[name]}],
            }
            for name in sorted(digests)
        ],
        "dependencies": [{"ref": ref, "dependsOn": [f"file:{n}" for n in sorted(digests)]}],
    }


def _identity(manifest: BundleManifest) -> str:
    return f"{manifest.name}\0{manifest.created_utc}\0{manifest.weights_sha256}"


def _model_card(
    manifest: BundleManifest,
    card: Any,
    run: RunRecord | None,
    report: ValidationReport | None,
    ref: str,
) -> dict[str, Any]:
    height, width = card.input_size
    low, high = card.pixel_range
    output = manifest.onnx.output
    model_card: dict[str, Any] = {
        "bom-ref": f"{ref}:card",
        "modelParameters": {
            "approach": {"type": "supervised"},
            "task": "classification",
            "architectureFamily": str(card.architecture),
            "modelArchitecture": _architecture(card),
            "inputs": [
                {
                    "format": f"image: float32 tensor '{manifest.onnx.input}' (batch, "
                    f"{card.in_channels}, {height}, {width}), (pixels - mean) / std with pixels "
                    f"in [{low:g}, {high:g}], mean {list(card.mean)}, std {list(card.std)}"
                }
            ],
            "outputs": [
                {
                    "format": f"{output}: float32 tensor (batch, {card.num_classes}), classes "
                    + ", ".join(card.class_names)
                }
            ],
        },
        "considerations": _considerations(manifest, card, run),
    }
    metrics = _metrics(report)
    if metrics:
        model_card["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    return model_card


def _architecture(card: Any) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in sorted(card.arch_kwargs.items()))
    return f"{card.architecture}({settings})" if settings else str(card.architecture)


def _metrics(report: ValidationReport | None) -> list[dict[str, Any]]:
    """The candidate's accuracy on each set, and its agreement with the original (whole sets
    only: per-group figures stay in the report)."""
    if report is None:
        return []
    out = []
    for name, table in sorted((report.accuracy.get("candidate") or {}).items()):
        if table.value is None:
            continue
        out.append(_metric("accuracy", table.value, _SETS.get(name, name), table.ci95))
    for name, agreement in sorted(report.agreement.items()):
        if agreement.value is not None:
            slice_ = _SETS.get(name, name)
            out.append(_metric("agreement with the original", agreement.value, slice_))
    return out


def _metric(
    kind: str, value: float, slice_: str, interval: list[float] | None = None
) -> dict[str, Any]:
    metric: dict[str, Any] = {"type": kind, "value": f"{value:.4f}", "slice": slice_}
    if interval and len(interval) == 2:
        low, high = interval
        metric["confidenceInterval"] = {"lowerBound": f"{low:.4f}", "upperBound": f"{high:.4f}"}
    return metric


def _considerations(manifest: BundleManifest, card: Any, run: RunRecord | None) -> dict[str, Any]:
    verdict = manifest.verdict or "not run"
    limits = [
        "Takes normalised pixels, (pixels - mean) / std, as card.json says; no preprocessing "
        "is in the graph.",
        "Judged only on the site's own held-out images, by the acceptance criteria in "
        f"revision_report.json (verdict: {verdict}).",
    ]
    if manifest.verdict != "pass":
        limits.append("Not validated as passing: not for clinical use as it stands.")
    considerations: dict[str, Any] = {
        "users": ["the site's clinical engineering team", "the device or inference server"],
        "useCases": [
            f"{card.num_classes}-class image classification in place of the deployed model "
            "it revises"
        ],
        "technicalLimitations": limits,
        "ethicalConsiderations": [
            {
                "name": "Patient data in the model's provenance",
                "mitigationStrategy": "the forget selection is recorded as digests only; no "
                "patient name, ID or date is written into the bundle's records",
            }
        ],
    }
    if run is not None:
        considerations["performanceTradeoffs"] = [
            f"Unlearning ({run.method}) removes what the model learnt from the forget set; "
            "accuracy on the data it keeps may drop slightly (see quantitativeAnalysis)."
        ]
        considerations["ethicalConsiderations"].append(
            {
                "name": "Residual memorisation of the forgotten data",
                "mitigationStrategy": "membership-inference measurements and acceptance gates "
                "in revision_report.json",
            }
        )
    return considerations


def _properties(manifest: BundleManifest, run: RunRecord | None) -> list[dict[str, str]]:
    props = [
        {"name": "com.revise:weights_sha256", "value": manifest.weights_sha256},
        {"name": "com.revise:validation_verdict", "value": manifest.verdict or "not run"},
    ]
    criteria = manifest.validation.criteria_sha256 if manifest.validation else None
    if criteria:
        props.append({"name": "com.revise:criteria_sha256", "value": criteria})
    if run is not None:
        props.append({"name": "com.revise:method", "value": run.method})
    return props


def check_bom(bom: Mapping[str, Any], where: Path, onnx_sha256: str | None) -> dict[str, Any]:
    """The machine-learning-model component that ``bom`` (read from ``where``) describes, once
    it is shown to be a CycloneDX 1.6 BOM whose model hash is ``onnx_sha256`` (model.onnx's); a
    DataError naming the file otherwise. (The full schema check is in the test suite.)"""
    if bom.get("bomFormat") != "CycloneDX" or bom.get("specVersion") != BOM_FORMAT:
        raise DataError(f"{where} is not a CycloneDX {BOM_FORMAT} BOM", hint=_HINT)
    metadata = bom.get("metadata")
    model = metadata.get("component") if isinstance(metadata, dict) else None
    if not isinstance(model, dict) or model.get("type") != "machine-learning-model":
        raise DataError(f"{where} does not describe a machine-learning-model", hint=_HINT)
    if not isinstance(model.get("modelCard"), dict):
        raise DataError(f"{where} has no modelCard for its model", hint=_HINT)
    hashes = model.get("hashes")
    recorded = [
        h.get("content")
        for h in (hashes if isinstance(hashes, list) else [])
        if isinstance(h, dict) and h.get("alg") == "SHA-256"
    ]
    if onnx_sha256 is None or recorded != [onnx_sha256]:
        raise DataError(
            f"{where} records another SHA-256 for the model ({str(recorded)[:30]}) than "
            f"{MODEL_ONNX} has ({str(onnx_sha256)[:12]}...)",
            hint=_HINT,
        )
    return model
