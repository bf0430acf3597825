"""The checks that a bundle is the one exported and validated, read from its own files: exactly
the files bundle.json lists, each with its recorded sha256, the weights, ONNX graphs and report
naming the same model, the verdict bound to the files it was reached on (see
:mod:`revise.export.manifest` for the layout, :mod:`revise.export.bundle_validation` for the
report's record of the files), and files that a signature can cover (see
:mod:`revise.export.signing` for their use)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from revise._io.digests import sha256_file
from revise._io.outputs import BUNDLE_MANIFEST, REPORT_JSON
from revise.errors import DataError, SignatureError, UsageError
from revise.export.bundle_validation import (
    candidate_digest,
    check_validated_files,
    parity_graph,
    read_bundle_report,
    validation_props,
    validation_summary,
)
from revise.export.manifest import (
    MODEL_ONNX,
    SIGNATURE_NAME,
    UNLISTED,
    BundleManifest,
    ValidationSummary,
    is_bundle,
    read_bundle_manifest,
)
from revise.export.onnx_file import graph_digest, read_metadata
from revise.export.onnx_metadata import LEGACY_PREFIX, PREFIX, read_prop
from revise.models.io import WEIGHTS_FILE

# model-signing's verifier always leaves these top-level names out of what it hashes, whatever
# the signer chose: a bundle holding one could not be fully covered by its signature.
_NEVER_COVERED = (".git", ".gitattributes", ".github", ".gitignore")
_HINT = "re-export the bundle"


def walk(bundle: Path) -> tuple[list[str], list[str], list[str]]:
    """Relative names of the regular files in ``bundle`` (but the signature), of the entries
    that are not regular files (symlinks, sockets...), and of the folders that hold neither
    (written ``name/``; only the outermost of nested empty folders). model-signing hashes files
    only: an empty folder is invisible to it."""
    files, odd, folders = [], [], []
    holding: set[str] = set()  # folders with a file or an odd entry somewhere below
    for root, dirs, names in os.walk(bundle):  # does not follow symlinked folders
        base = Path(root)
        for name in [*dirs, *names]:
            path = base / name
            rel = path.relative_to(bundle).as_posix()
            if name in dirs and not path.is_symlink():
                folders.append(rel)
                continue
            if rel == SIGNATURE_NAME:
                continue
            (files if path.is_file() and not path.is_symlink() else odd).append(rel)
            parts = rel.split("/")[:-1]
            holding.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    empty = [f for f in folders if f not in holding]
    outermost = [f for f in empty if "/".join(f.split("/")[:-1]) not in empty]
    return sorted(files), sorted(odd), sorted(f"{f}/" for f in outermost)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}", hint="re-export the bundle") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object", hint="re-export the bundle")
    return data


def manifest_of(bundle: Path) -> BundleManifest:
    """bundle.json of ``bundle``; a damaged one is a DataError naming the file and each field."""
    return read_bundle_manifest(bundle, hint=_HINT, kind=DataError)


def validation_verdict(bundle: Path) -> str | None:
    """The verdict of revision_report.json ("pass"/"fail"; None: no validation ran), checked
    against what bundle.json says about it."""
    manifest = manifest_of(bundle)
    report_path = bundle / REPORT_JSON
    verdict: str | None = None
    report = read_bundle_report(bundle)  # its verdict is "pass" or "fail", or it is refused
    if report is not None:
        verdict = report.verdict
        validated = candidate_digest(report)
        weights = manifest.weights_sha256
        if validated and weights and validated != weights:
            raise DataError(
                f"{report_path} validates other weights ({validated[:12]}...) than the bundle's "
                f"({weights[:12]}...)",
                hint="validate the bundle's own model and re-export",
            )
    if "validation" in manifest.model_fields_set:  # the exporter records the report it copied
        claimed = manifest.verdict
        if claimed != verdict:
            found = f"says {verdict!r}" if report_path.is_file() else "is missing"
            raise DataError(
                f"{bundle / BUNDLE_MANIFEST} records validation verdict {claimed!r} but "
                f"{REPORT_JSON} {found}",
                hint="the bundle was edited after export; re-export it",
            )
    return verdict


def check_contents(bundle: Path) -> None:
    """The bundle is what bundle.json describes: exactly the files it lists, each with its
    sha256, and one model throughout - the weights digest recorded by export (and validated
    by the report) is that of model.safetensors, and every ONNX file holds the graph recorded
    for it (the one the report's parity check ran on). The first difference is named."""
    manifest_path = bundle / BUNDLE_MANIFEST
    manifest = manifest_of(bundle)
    listed = manifest.files
    if not listed:
        raise DataError(
            f"{manifest_path} lists no files (no 'files' entry)",
            hint="re-export the bundle with this version of revise",
        )
    files, _, _ = walk(bundle)
    present = set(files) - set(UNLISTED)  # walk leaves out the signature itself
    extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise DataError(
            f"{bundle / extra[0]} is not one of the files {manifest_path} lists{more}: the "
            "bundle is not the one exported and validated",
            hint="remove it; reports are added with `revise validate BUNDLE`, which lists them",
        )
    if missing:
        raise DataError(
            f"{bundle / missing[0]} is listed in {manifest_path} but missing",
            hint="re-export the bundle (and validate it again)",
        )
    for name in sorted(listed):
        recorded, actual = str(listed[name].sha256), sha256_file(bundle / name)
        if actual != recorded:
            raise DataError(
                f"{bundle / name} is not the file bundle.json records (sha256 {actual[:12]}..., "
                f"recorded {recorded[:12]}...): it was changed or replaced after export",
                hint="re-export the bundle (and validate it again) rather than editing it",
            )
    weights = manifest.weights_sha256
    actual = _weights_digest(bundle / WEIGHTS_FILE)
    if actual != weights:
        raise DataError(
            f"{bundle / WEIGHTS_FILE} holds other weights ({actual[:12]}...) than "
            f"{manifest_path} records and validation checked ({weights[:12]}...)",
            hint="re-export the bundle from the validated model",
        )
    variants = manifest.onnx.variants
    if MODEL_ONNX not in variants:
        raise DataError(f"{manifest_path} records no {MODEL_ONNX}", hint=_HINT)
    graphs = {name: variant.graph_sha256 for name, variant in variants.items()}
    triton = manifest.triton
    if triton is not None:  # Triton serves the same graph
        graphs[f"{triton.repository}/{triton.model}/{triton.version}/{MODEL_ONNX}"] = graphs[
            MODEL_ONNX
        ]
    report = read_bundle_report(bundle)
    if report is not None and candidate_digest(report) != weights:
        raise DataError(
            f"{bundle / REPORT_JSON} validates other weights "
            f"({str(candidate_digest(report))[:12]}...) than "
            f"the bundle's model.safetensors ({weights[:12]}...)",
            hint="validate the bundle itself: revise validate BUNDLE ...",
        )
    checked = parity_graph(report) if report is not None else None
    for name, recorded in graphs.items():
        path = bundle / name
        if not path.is_file():
            raise DataError(f"{path} is recorded in {manifest_path} but missing")
        actual = graph_digest(path)
        if actual != recorded:
            raise DataError(
                f"{path} holds another ONNX graph ({actual[:12]}...) than {manifest_path} "
                f"records for it ({recorded[:12]}...)",
                hint="re-export the bundle (and validate it again)",
            )
        stamped = read_prop(read_metadata(path), "weights_sha256")
        if stamped != weights:
            raise DataError(
                f"{path} was exported from other weights ({str(stamped)[:12]}...) than the "
                f"bundle's ({weights[:12]}...)",
                hint=_HINT,
            )
    if checked and checked != graphs[MODEL_ONNX]:
        raise DataError(
            f"the parity check of {bundle / REPORT_JSON} ran on another ONNX graph "
            f"({checked[:12]}...) than the bundle's model.onnx",
            hint="validate the bundle itself: revise validate BUNDLE ...",
        )
    if report is not None:
        claimed = manifest.validation or ValidationSummary()
        _check_summary(manifest_path, claimed, validation_summary(report, bundle / REPORT_JSON))


def _check_summary(
    manifest_path: Path, claimed: ValidationSummary, expected: ValidationSummary
) -> None:
    """bundle.json's validation summary is the one its report gives, every entry of it."""
    if claimed.report_sha256 != expected.report_sha256:
        raise DataError(
            f"{manifest_path.parent / REPORT_JSON} is not the report {manifest_path} records",
            hint="validate the bundle again: revise validate BUNDLE ...",
        )
    for key in ValidationSummary.model_fields:
        said, value = getattr(claimed, key), getattr(expected, key)
        if said != value:
            raise DataError(
                f"{manifest_path} records validation {key} {said!r} but {REPORT_JSON} gives "
                f"{value!r}",
                hint="the bundle was edited after validation; validate it again",
            )


def validated_files_unchanged(bundle: Path) -> bool:
    """Every file of the bundle that bears on what the model outputs or means is the one its
    report validated (DataError naming the first that is not), and every ONNX file's metadata
    states the report's verdict and criteria. False: there is a report, but it records no files
    of this bundle (it validated a model folder)."""
    report_path = bundle / REPORT_JSON
    report = read_bundle_report(bundle)
    bound = report is None or check_validated_files(bundle, report)
    expected = validation_props(validation_summary(report, report_path) if report else None)
    files, _, _ = walk(bundle)
    for path in [bundle / name for name in files if name.lower().endswith(".onnx")]:
        try:
            stated = read_metadata(path)
        except Exception as exc:  # protobuf's DecodeError and friends share no base class
            raise DataError(
                f"{path} is not a readable ONNX model ({type(exc).__name__})",
                hint=_HINT,
            ) from exc
        for key, wanted in expected.items():
            name = key.removeprefix(PREFIX)
            # every copy must agree: the key, and the legacy one of a bundle from before the
            # com.revise. namespace (an older bundle holds only that one)
            said = [stated[k] for k in (key, LEGACY_PREFIX + name) if k in stated] or [None]
            wrong = next((value for value in said if value != wanted), wanted)
            if wrong != wanted:
                source = (
                    f"{REPORT_JSON} says {wanted!r}" if report else f"there is no {REPORT_JSON}"
                )
                what = name.replace("_", " ")
                raise DataError(
                    f"{path} says {what} {wrong!r} in its metadata but {source}",
                    hint="validate the bundle again: revise validate BUNDLE ...",
                )
    return bound


def _weights_digest(path: Path) -> str:
    """revise.models.io.weights_digest of a safetensors file, as export computed it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from revise.models.io import weights_digest

    try:
        return weights_digest(load_file(str(path)))
    except (OSError, SafetensorError) as exc:
        raise DataError(
            f"cannot read the weights {path}: {exc}", hint="re-export the bundle"
        ) from exc


def check_signable(bundle: Path) -> None:
    """A bundle that a signature can cover whole: a bundle, regular files only (no symlinks), no
    empty folder, nothing model-signing never hashes."""
    if not is_bundle(bundle):
        raise UsageError(
            f"{bundle} is not a revise bundle (no {BUNDLE_MANIFEST})",
            hint="write the bundle with `revise export` and sign that folder",
        )
    files, odd, empty = walk(bundle)
    if odd:
        raise SignatureError(
            f"{bundle} holds entries that are not regular files: {', '.join(odd[:5])}",
            hint="replace symlinks by the files they point to (model-signing refuses them)",
        )
    if empty:
        raise SignatureError(
            f"{bundle} holds empty folders, which no signature covers: {', '.join(empty[:5])}",
            hint="remove them (an empty triton/<name>/<version>/ would be loaded by Triton)",
        )
    uncovered = sorted(n for n in files if n.split("/")[0] in _NEVER_COVERED)
    uncovered += sorted(n for n in _NEVER_COVERED if (bundle / n).is_dir())
    if uncovered:
        raise SignatureError(
            f"{bundle} holds {', '.join(uncovered[:5])}, which model-signing never covers",
            hint="remove it from the bundle",
        )
