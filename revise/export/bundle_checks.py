"""The checks that a bundle is the one exported and validated, read from its own files: exactly
the files bundle.json lists, each with its recorded sha256, the weights, ONNX graphs and report
naming the same model, and the verdict bound to the files it was reached on (see
:mod:`revise.export.bundle` for the layout, :mod:`revise.export.signing` for their use)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from revise._io import BUNDLE_MANIFEST, REPORT_JSON, sha256_file
from revise.errors import DataError
from revise.export.bundle import SCHEMA as BUNDLE_SCHEMA
from revise.export.bundle import (
    SIGNATURE_NAME,
    SIGNING_RECORD,
    check_validated_files,
    validation_props,
    validation_summary,
)
from revise.export.onnx import graph_digest, read_metadata


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


def validation_verdict(bundle: Path) -> str | None:
    """The verdict of revision_report.json ("pass"/"fail"; None: no validation ran), checked
    against what bundle.json says about it."""
    manifest = read_json(bundle / BUNDLE_MANIFEST)
    if manifest.get("schema") != BUNDLE_SCHEMA:
        raise DataError(
            f"{bundle / BUNDLE_MANIFEST} has schema {manifest.get('schema')!r}, "
            f"not {BUNDLE_SCHEMA!r}",
            hint="re-export the bundle with this version of revise",
        )
    report_path = bundle / REPORT_JSON
    verdict: str | None = None
    if report_path.is_file():
        report = read_json(report_path)
        verdict = report.get("verdict")
        if verdict not in ("pass", "fail"):
            raise DataError(
                f"{report_path} has verdict {verdict!r}, expected 'pass' or 'fail'",
                hint="re-run `revise validate` and re-export the bundle",
            )
        validated = ((report.get("models") or {}).get("candidate") or {}).get("sha256")
        weights = manifest.get("weights_sha256")
        if validated and weights and validated != weights:
            raise DataError(
                f"{report_path} validates other weights ({validated[:12]}...) than the bundle's "
                f"({weights[:12]}...)",
                hint="validate the bundle's own model and re-export",
            )
    if "validation" in manifest:  # the exporter records the report it copied: they must agree
        claimed = (manifest.get("validation") or {}).get("verdict")
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
    manifest = read_json(manifest_path)
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise DataError(
            f"{manifest_path} lists no files (no 'files' entry)",
            hint="re-export the bundle with this version of revise",
        )
    files, _, _ = walk(bundle)
    present = set(files) - {BUNDLE_MANIFEST, SIGNING_RECORD}
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
        entry = listed[name] if isinstance(listed[name], dict) else {}
        recorded, actual = str(entry.get("sha256")), sha256_file(bundle / name)
        if actual != recorded:
            raise DataError(
                f"{bundle / name} is not the file bundle.json records (sha256 {actual[:12]}..., "
                f"recorded {recorded[:12]}...): it was changed or replaced after export",
                hint="re-export the bundle (and validate it again) rather than editing it",
            )
    weights = str(manifest.get("weights_sha256"))
    actual = _weights_digest(bundle / "model.safetensors")
    if actual != weights:
        raise DataError(
            f"{bundle / 'model.safetensors'} holds other weights ({actual[:12]}...) than "
            f"{manifest_path} records and validation checked ({weights[:12]}...)",
            hint="re-export the bundle from the validated model",
        )
    variants = (manifest.get("onnx") or {}).get("variants") or {}
    if "model.onnx" not in variants:
        raise DataError(f"{manifest_path} records no model.onnx", hint="re-export the bundle")
    graphs = {name: str((variant or {}).get("graph_sha256")) for name, variant in variants.items()}
    triton = manifest.get("triton") or {}
    if triton:
        copy = f"{triton.get('repository')}/{triton.get('model')}/{triton.get('version')}"
        graphs[f"{copy}/model.onnx"] = graphs["model.onnx"]  # Triton serves the same graph
    report = read_json(bundle / REPORT_JSON) if (bundle / REPORT_JSON).is_file() else {}
    validated = ((report.get("models") or {}).get("candidate") or {}).get("sha256")
    if report and validated != weights:
        raise DataError(
            f"{bundle / REPORT_JSON} validates other weights ({str(validated)[:12]}...) than "
            f"the bundle's model.safetensors ({weights[:12]}...)",
            hint="validate the bundle itself: revise validate BUNDLE ...",
        )
    checked = ((report.get("inputs") or {}).get("onnx") or {}).get("graph_sha256")
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
        stamped = read_metadata(path).get("revise.weights_sha256")
        if stamped != weights:
            raise DataError(
                f"{path} was exported from other weights ({str(stamped)[:12]}...) than the "
                f"bundle's ({weights[:12]}...)",
                hint="re-export the bundle",
            )
    if checked and checked != graphs["model.onnx"]:
        raise DataError(
            f"the parity check of {bundle / REPORT_JSON} ran on another ONNX graph "
            f"({checked[:12]}...) than the bundle's model.onnx",
            hint="validate the bundle itself: revise validate BUNDLE ...",
        )
    if report:
        _check_summary(manifest_path, manifest.get("validation") or {}, report)


def _check_summary(manifest_path: Path, claimed: dict[str, Any], report: dict[str, Any]) -> None:
    """bundle.json's validation summary is the one its report gives, every entry of it."""
    expected = validation_summary(report)
    if claimed.get("report_sha256") != expected["report_sha256"]:
        raise DataError(
            f"{manifest_path.parent / REPORT_JSON} is not the report {manifest_path} records",
            hint="validate the bundle again: revise validate BUNDLE ...",
        )
    for key, value in expected.items():
        if claimed.get(key) != value:
            raise DataError(
                f"{manifest_path} records validation {key} {claimed.get(key)!r} but "
                f"{REPORT_JSON} gives {value!r}",
                hint="the bundle was edited after validation; validate it again",
            )


def validated_files_unchanged(bundle: Path) -> bool:
    """Every file of the bundle that bears on what the model outputs or means is the one its
    report validated (DataError naming the first that is not), and every ONNX file's metadata
    states the report's verdict and criteria. False: there is a report, but it records no files
    of this bundle (it validated a model folder)."""
    report = read_json(bundle / REPORT_JSON) if (bundle / REPORT_JSON).is_file() else None
    bound = report is None or check_validated_files(bundle, report)
    expected = validation_props(report)
    files, _, _ = walk(bundle)
    for path in [bundle / name for name in files if name.lower().endswith(".onnx")]:
        try:
            stated = read_metadata(path)
        except Exception as exc:  # protobuf's DecodeError and friends share no base class
            raise DataError(
                f"{path} is not a readable ONNX model ({type(exc).__name__})",
                hint="re-export the bundle",
            ) from exc
        for key, wanted in expected.items():
            if stated.get(key) != wanted:
                source = (
                    f"{REPORT_JSON} says {wanted!r}" if report else f"there is no {REPORT_JSON}"
                )
                what = key.removeprefix("revise.").replace("_", " ")
                raise DataError(
                    f"{path} says {what} {stated.get(key)!r} in its metadata but {source}",
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


# -- verifying --------------------------------------------------------------------------------
