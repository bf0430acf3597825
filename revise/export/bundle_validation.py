"""A bundle and its validation report: what the report records of the bundle's files, what the
bundle records of the report (bundle.json's ``validation``, the ONNX files' VALIDATION_PROPS),
and the checks that the two are of each other.

`revise validate BUNDLE` records in its report the digest of every file of the bundle but those
written after validation (bundle.json, the report files, the signature files), see
:func:`validated_files`; `revise sign` refuses a bundle whose files differ from that record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from revise._io.digests import sha256_file
from revise._io.outputs import REPORT_JSON
from revise._schema import problems, refusal
from revise._validation_record import ValidationReport, read_validation_report
from revise.errors import DataError, ExportError, UsageError
from revise.export.manifest import (
    AFTER_VALIDATION,
    REPORT_FILES,
    VALIDATION_PROPS,
    VALIDATION_PROPS_LEGACY,
    OnnxVariant,
    ValidationSummary,
)


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


def check_validated_files(folder: str | Path, report: ValidationReport) -> bool:
    """Whether ``report`` records the files of the bundle ``folder`` (False: it validated a
    model folder, or was written before revise recorded them). Raises DataError naming the
    first file changed, added or removed since."""
    folder = Path(folder)
    bundle = report.inputs.bundle if report.inputs is not None else None
    recorded = bundle.files if bundle is not None else None
    if not recorded:
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


def validation_summary(report: ValidationReport, path: str | Path) -> ValidationSummary:
    """What bundle.json records of the validation ``report`` read from ``path`` (its
    ``validation`` entry); a report whose verdict, summary or gates are not what `revise
    validate` writes is a DataError naming the file."""
    criteria = report.inputs.criteria if report.inputs is not None else None
    as_written = json.dumps(report.to_json(), sort_keys=True)  # the file round-trips to this
    try:
        return ValidationSummary(
            verdict=report.verdict,
            summary=report.summary,
            criteria_sha256=criteria.sha256 if criteria is not None else None,
            report_sha256=hashlib.sha256(as_written.encode("utf-8")).hexdigest(),
            failed_gates=[gate.name for gate in report.gates if not gate.passed],
        )
    except ValidationError as exc:
        found = problems(exc, ValidationSummary)
        message, _ = refusal(f"{path} is not a report of `revise validate`", found)
        raise DataError(message, hint="validate the model again: revise validate ...") from None


def validation_props(summary: ValidationSummary | None) -> dict[str, str]:
    """The VALIDATION_PROPS that a bundle's ONNX files carry for the validation ``summary``
    (None: no validation ran)."""
    verdict_key, criteria_key = VALIDATION_PROPS
    if summary is None:
        return {verdict_key: "not run"}
    return {verdict_key: str(summary.verdict), criteria_key: str(summary.criteria_sha256)}


def read_report(folder: str | Path, digest: str) -> ValidationReport:
    """The report of the `revise validate` output ``folder``, which must validate the weights
    of digest ``digest`` (the model being exported, or the bundle's)."""
    folder = Path(folder)
    missing = [f for f in REPORT_FILES if not (folder / f).is_file()]
    if missing:
        raise UsageError(
            f"{folder} is not a validation report folder (missing {', '.join(missing)})",
            hint="pass the -o folder of `revise validate`",
        )
    report = read_validation_report(
        folder / REPORT_JSON, hint="validate the model again: revise validate ...", kind=DataError
    )
    validated = candidate_digest(report)
    if validated != digest:
        raise ExportError(
            f"the report in {folder} validates other weights ({str(validated)[:12]}...) than "
            f"this model ({digest[:12]}...)",
            hint="validate the model being exported (or the bundle itself)",
        )
    return report


def check_parity_graph(report: ValidationReport, shipped: OnnxVariant) -> None:
    """A report whose parity gate ran on an ONNX file must have run on the graph shipped (the
    export is deterministic; only metadata may differ)."""
    checked = parity_graph(report)
    if checked and checked != shipped.graph_sha256:
        raise ExportError(
            "the report's parity check ran on another ONNX graph than the bundle's model.onnx",
            hint="validate the bundle itself: revise validate BUNDLE ...",
        )


def candidate_digest(report: ValidationReport) -> str | None:
    """The weights digest of the model the report validated (its ``candidate``)."""
    candidate = report.models.get("candidate")
    return candidate.sha256 if candidate is not None else None


def parity_graph(report: ValidationReport) -> str | None:
    """The digest of the ONNX graph the report's parity check ran on (None: it ran on none)."""
    onnx = report.inputs.onnx if report.inputs is not None else None
    return onnx.graph_sha256 if onnx is not None else None


def read_bundle_report(bundle: Path) -> ValidationReport | None:
    """The bundle's revision_report.json (None: it has none); a damaged one is a DataError
    naming the file and each wrong field."""
    path = bundle / REPORT_JSON
    if not path.is_file():
        return None
    hint = "re-run `revise validate` on the bundle"
    return read_validation_report(path, hint=hint, kind=DataError)


def _onnx_content_digest(path: Path) -> str:
    """sha256 of an ONNX model as serialised without the VALIDATION_PROPS, under either
    namespace (the graph, the weights and every other metadata entry: the card, the
    provenance)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: protobuf's errors share no base class
        raise DataError(
            f"{path} is not a readable ONNX model ({type(exc).__name__})",
            hint="re-export the bundle",
        ) from exc
    rewritten = (*VALIDATION_PROPS, *VALIDATION_PROPS_LEGACY)
    kept = [p for p in proto.metadata_props if p.key not in rewritten]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()
