"""Provenance as attestations inside the bundle: an in-toto Statement of the revision and a
CycloneDX ML-BOM of the model (:mod:`revise.export.mlbom`), both written by revise itself.

```
attestations/revision.intoto.json   in-toto Statement v1, predicateType PREDICATE_TYPE
attestations/model.cdx.json         CycloneDX 1.6 BOM: the model as a machine-learning-model
```
Both are (re)written by :func:`write_attestations` whenever bundle.json is - when the bundle is
exported and when a validation report is attached - from the bundle's own files: bundle.json's
record (:mod:`revise.export.manifest`), run.json (:mod:`revise._run_record`) and
revision_report.json (:mod:`revise._validation_record`). They are listed in bundle.json and
covered by the signature, but, like the report, not by the report's file digests (they record
its verdict). The statement's subjects are the bundle's model files (every ONNX file,
model.safetensors, card.json) with their sha256; its predicate (docs/attestations.md) records
the base model's digest, the method and its settings, the forget selection *as digests only*
(never a patient value: no selection text, no sample keys), the criteria digest and the verdict,
the software versions and the run's builder.

:func:`check_attestations` reads them back: `revise sign` refuses a bundle whose attestations
do not describe its files, and `revise verify` prints their summary once the signature holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revise._io.atomic import write_json_atomic
from revise._io.digests import sha256_file
from revise._io.outputs import BUNDLE_MANIFEST, REPORT_JSON, RUN_RECORD
from revise._run_record import RunRecord, read_run_record
from revise._validation_record import ValidationReport, read_validation_report
from revise.errors import DataError
from revise.export.manifest import (
    ATTESTATION_FILES,
    BOM_FILE,
    MODEL_ONNX,
    STATEMENT_FILE,
    BundleManifest,
    read_bundle_manifest,
)
from revise.export.mlbom import BOM_FORMAT, build_bom, check_bom
from revise.export.onnx_metadata import revise_props

__all__ = [
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "AttestationSummary",
    "build_statement",
    "check_attestations",
    "subject_files",
    "write_attestations",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://revise.dev/attestations/revision/v1"
BUILDER_ID = "https://revise.dev/builder/revise"
CARD_FILE = "card.json"
# The files a statement is about: what a runtime loads, and how to feed it.
_MODEL_SUFFIXES = (".onnx", ".onnx.data", ".safetensors")
_HINT = "re-export the bundle (revise export), then validate it again: revise validate BUNDLE"


@dataclass(frozen=True)
class AttestationSummary:
    """What `revise verify` prints of a bundle's attestations, once they are checked."""

    subjects: int
    method: str | None
    verdict: str
    base_model: str | None
    component: str
    version: str
    sha256: str

    def lines(self) -> list[str]:
        base = f"{self.base_model[:16]}..." if self.base_model else "not recorded"
        return [
            f"attestations: revision statement ({PREDICATE_TYPE}), {self.subjects} subjects, "
            "each digest matches the signed file",
            f"  revision: method {self.method or 'none (exported as given)'}, "
            f"verdict {self.verdict}, base model {base}",
            f"  ML-BOM (CycloneDX {BOM_FORMAT}): {self.component} {self.version}, "
            f"sha256 {self.sha256[:16]}... ({MODEL_ONNX})",
        ]


def subject_files(folder: str | Path) -> list[str]:
    """The model files of the bundle ``folder`` that a statement is about (relative names)."""
    folder = Path(folder)
    names = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == CARD_FILE or name.endswith(_MODEL_SUFFIXES):
            names.append(name)
    return names


# -- writing ----------------------------------------------------------------------------------


def write_attestations(folder: str | Path, manifest: BundleManifest) -> None:
    """Write the statement and the BOM of the bundle ``folder`` (being finished: every model
    file in place, ``manifest`` its bundle.json to be)."""
    folder = Path(folder)
    digests = {name: sha256_file(folder / name) for name in subject_files(folder)}
    run, report = _run(folder), _report(folder)
    statement = build_statement(manifest, digests, run, report)
    _check_statement(statement, folder / STATEMENT_FILE)
    previous = _previous(folder / BOM_FILE)
    card = _card(folder)
    bom = build_bom(manifest, card, digests, run=run, report=report, previous=previous)
    (folder / STATEMENT_FILE).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / STATEMENT_FILE, statement)
    write_json_atomic(folder / BOM_FILE, bom)


def build_statement(
    manifest: BundleManifest,
    digests: Mapping[str, str],
    run: RunRecord | None,
    report: ValidationReport | None,
) -> dict[str, Any]:
    """The in-toto Statement v1 of the bundle: ``digests`` (name -> sha256) are its subjects."""
    subject = [{"name": name, "digest": {"sha256": digests[name]}} for name in sorted(digests)]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": _predicate(manifest, run, report),
    }


def _predicate(
    manifest: BundleManifest, run: RunRecord | None, report: ValidationReport | None
) -> dict[str, Any]:
    props = revise_props(manifest.provenance)
    validation = manifest.validation
    fp32 = manifest.onnx.variants.get(MODEL_ONNX)
    predicate: dict[str, Any] = {
        "bundle": {
            "name": manifest.name,
            "created_utc": manifest.created_utc,
            "weights_sha256": manifest.weights_sha256,
        },
        "base_model": None,
        "revision": None,  # None: the model was exported as given, not revised by a run
        "validation": {
            "verdict": validation.verdict if validation else "not run",
            "summary": validation.summary if validation else None,
            "criteria_sha256": validation.criteria_sha256 if validation else None,
            "report_sha256": validation.report_sha256 if validation else None,
            "failed_gates": list(validation.failed_gates) if validation else [],
            "software": dict(report.software) if report else {},
        },
        "export": {
            "exporter": fp32.exporter if fp32 else None,
            "variants": {
                name: {
                    "precision": variant.precision,
                    "graph_sha256": variant.graph_sha256,
                    "opset": variant.opset,
                    "parity_passed": variant.parity.passed if variant.parity else None,
                }
                for name, variant in sorted(manifest.onnx.variants.items())
            },
        },
        "software": _versions(props.get("versions")),
        "builder": {"id": BUILDER_ID},
    }
    if run is not None:
        base = run.base_model
        predicate["base_model"] = {
            "weights_sha256": run.base_model_digest,
            "format": base.format if base else None,
            "source_sha256": base.sha256 if base else None,
        }
        selection = run.forget_selection or ""
        predicate["revision"] = {
            "method": run.method,
            "settings": dict(run.hyperparameters),
            "seed": run.seed,
            # the selection only as digests: its text (even redacted) and its rows stay out
            "forget_selection_sha256": props.get("forget_selection_sha256")
            or hashlib.sha256(selection.encode()).hexdigest(),
            "set_digests": dict(run.selection_digests or {}),
            "samples": {"forget": run.forget_samples, "retain": run.retain_samples},
        }
        version = run.versions.get("revise")
        predicate["builder"] = {
            "id": f"{BUILDER_ID}@{version}" if version else BUILDER_ID,
            "versions": dict(run.versions),
            "device": run.device,
            "world_size": run.world_size,
        }
    return predicate


def _versions(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _check_statement(statement: dict[str, Any], where: Path) -> None:
    """The statement, checked by in-toto's own bindings (in-toto-attestation, which
    model-signing depends on): type, subjects with digests, predicate type and predicate."""
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    try:
        proto = json_format.ParseDict(statement, statement_pb2.Statement())
        Statement.copy_from_pb(proto).validate()
    except (ValueError, json_format.ParseError) as exc:
        raise DataError(f"{where} is not a valid in-toto Statement v1: {exc}", hint=_HINT) from exc


# -- reading ----------------------------------------------------------------------------------


def check_attestations(
    folder: str | Path, signed: Mapping[str, str] | None = None
) -> AttestationSummary | None:
    """Check the attestations of the bundle ``folder`` describe it, and summarise them; None
    where the bundle has none (written before revise wrote them). ``signed`` (name -> sha256)
    are the files a signature covers, with their digests as it records them: then the
    attestations and their subjects must be among them; by default each file is hashed. A
    statement or BOM that is damaged, or whose subjects are not the bundle's model files with
    their digests, or whose verdict is not bundle.json's, is a DataError naming the file."""
    folder = Path(folder)
    present = [name for name in ATTESTATION_FILES if (folder / name).is_file()]
    if not present:
        return None
    missing = [name for name in ATTESTATION_FILES if name not in present]
    if missing:
        raise DataError(
            f"{folder / missing[0]} is missing (the bundle has {present[0]})", hint=_HINT
        )
    uncovered = [name for name in present if signed is not None and name not in signed]
    if uncovered:
        raise DataError(
            f"{folder / uncovered[0]} is not covered by the signature",
            hint="sign the bundle again: revise sign BUNDLE ...",
        )

    def digest_of(name: str) -> str | None:
        if signed is not None:
            return signed.get(name)
        return sha256_file(folder / name) if (folder / name).is_file() else None

    where = folder / STATEMENT_FILE
    statement = _read(where)
    _check_statement(statement, where)
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise DataError(f"{where} has predicateType {statement.get('predicateType')!r}", hint=_HINT)
    attested = {s.get("name"): (s.get("digest") or {}).get("sha256") for s in statement["subject"]}
    for name in sorted(set(subject_files(folder)) | set(attested)):
        if name not in attested:
            raise DataError(
                f"{folder / name} is a model file that {where} does not attest", hint=_HINT
            )
        actual = digest_of(name)
        if actual is None:
            held = "the signature does not cover" if signed is not None else "is not in the bundle"
            raise DataError(f"{where} attests {name}, which {held}", hint=_HINT)
        if actual != attested[name]:
            raise DataError(
                f"{where} attests {name} with sha256 {str(attested[name])[:12]}..., but the "
                f"file is {actual[:12]}...",
                hint=_HINT,
            )
    predicate = statement.get("predicate") or {}
    revision = predicate.get("revision") or {}
    verdict = str((predicate.get("validation") or {}).get("verdict"))
    recorded = read_bundle_manifest(folder, hint=_HINT, kind=DataError).verdict or "not run"
    if verdict != recorded:
        raise DataError(
            f"{where} records verdict {verdict!r} but {BUNDLE_MANIFEST} {recorded!r}", hint=_HINT
        )
    component = check_bom(_read(folder / BOM_FILE), folder / BOM_FILE, digest_of(MODEL_ONNX))
    return AttestationSummary(
        subjects=len(attested),
        method=revision.get("method"),
        verdict=verdict,
        base_model=(predicate.get("base_model") or {}).get("weights_sha256"),
        component=str(component.get("name")),
        version=str(component.get("version")),
        sha256=str(digest_of(MODEL_ONNX)),
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}", hint=_HINT) from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object", hint=_HINT)
    return data


def _previous(path: Path) -> dict[str, Any] | None:
    """The BOM a bundle already holds (its version is counted on), if it is readable."""
    try:
        return _read(path) if path.is_file() else None
    except DataError:
        return None


def _run(folder: Path) -> RunRecord | None:
    path = folder / RUN_RECORD
    return read_run_record(path, hint=_HINT) if path.is_file() else None


def _report(folder: Path) -> ValidationReport | None:
    path = folder / REPORT_JSON
    return read_validation_report(path, hint=_HINT) if path.is_file() else None


def _card(folder: Path) -> Any:
    from revise.models.card import ModelCard

    return ModelCard.load(folder / CARD_FILE)
