"""The revision bundle's layout, and its manifest (bundle.json) as one typed record.

```
bundle/
  bundle.json              what is inside: files and sha256, provenance, validation, parity
  model.onnx               fp32, one file (no external data), provenance in metadata_props
  model.fp16.onnx          optional fp16 variant with its own parity gate
  model.int8.onnx          optional INT8 (QDQ) variant, calibrated on retain images, own gate
  model.safetensors        the weights, and card.json: how to feed the model
  card.json
  run.json                 the unlearning run's record (when the model is a run folder)
  recipe.yaml              the resolved recipe (when `revise run` made the bundle)
  revision_report.json     validation (when it ran), report.html and change_control.json
  report.html              (the change-control summary: revise.validate.change_control)
  change_control.json
  triton/<name>/config.pbtxt, triton/<name>/labels.txt, triton/<name>/1/model.onnx
  attestations/revision.intoto.json   in-toto Statement of the revision (revise.export.attestations)
  attestations/model.cdx.json         CycloneDX 1.6 ML-BOM of the model (revise.export.mlbom)
  signing.json, revise.sig written by `revise sign` (see revise.export.signing)
```
The names of these files, which of them bundle.json lists and which a validation report covers
are said here once. :class:`BundleManifest` is bundle.json: every key the exporter writes is a
field; keys of versions to come are kept as extra keys, so a manifest round-trips unchanged, and
:meth:`BundleManifest.to_json` writes the keys that were set (a field never given is left out,
one given as null stays null). :func:`read_bundle_manifest` refuses a damaged file (not JSON,
not an object, another schema, a field of the wrong type) naming the file and each field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from revise._io.outputs import BUNDLE_MANIFEST, CHANGE_CONTROL, REPORT_HTML, REPORT_JSON
from revise._io.text import read_json_object
from revise._run_record import RecordPart
from revise._schema import record_of
from revise.errors import ModelError, RevisionError

__all__ = [
    "AFTER_VALIDATION",
    "ATTESTATION_FILES",
    "BOM_FILE",
    "FP16_ONNX",
    "INT8_ONNX",
    "MODEL_ONNX",
    "RECIPE_FILE",
    "REPORT_FILES",
    "SCHEMA",
    "SIGNATURE_FILES",
    "SIGNATURE_NAME",
    "SIGNING_RECORD",
    "STATEMENT_FILE",
    "TRITON_DIR",
    "UNLISTED",
    "VALIDATION_PROPS",
    "VALIDATION_PROPS_LEGACY",
    "BundleManifest",
    "FileEntry",
    "OnnxEntry",
    "OnnxVariant",
    "Parity",
    "TritonEntry",
    "ValidationSummary",
    "is_bundle",
    "read_bundle_manifest",
]

SCHEMA = "revise.bundle/1"
MODEL_ONNX = "model.onnx"
FP16_ONNX = "model.fp16.onnx"
INT8_ONNX = "model.int8.onnx"  # revise.export.quantize
RECIPE_FILE = "recipe.yaml"
TRITON_DIR = "triton"  # triton/<name>/: a Triton model repository
REPORT_FILES = (REPORT_JSON, REPORT_HTML, CHANGE_CONTROL)  # `revise validate` writes them
SIGNING_RECORD = "signing.json"  # written by `revise sign`, then covered by the signature
SIGNATURE_NAME = "revise.sig"  # model-signing's signature of every other file
SIGNATURE_FILES = (SIGNING_RECORD, SIGNATURE_NAME)
# Provenance as attestations, rewritten whenever bundle.json is (they record the verdict): listed
# in bundle.json and covered by the signature, but, like the report, not by the report's digests.
STATEMENT_FILE = "attestations/revision.intoto.json"
BOM_FILE = "attestations/model.cdx.json"
ATTESTATION_FILES = (STATEMENT_FILE, BOM_FILE)
# The files bundle.json does not list: itself, and those `revise sign` adds.
UNLISTED = (BUNDLE_MANIFEST, *SIGNATURE_FILES)
# Written once the model is validated: the only files a validation report cannot bind.
AFTER_VALIDATION = (BUNDLE_MANIFEST, *REPORT_FILES, *SIGNATURE_FILES, *ATTESTATION_FILES)
# The ONNX metadata that attaching a report writes (checked against the report on their own),
# and the same keys as bundles written before the com.revise. namespace hold them (read only;
# docs/onnx-metadata.md).
VALIDATION_PROPS = ("com.revise.validation_verdict", "com.revise.criteria_sha256")
VALIDATION_PROPS_LEGACY = ("revise.validation_verdict", "revise.criteria_sha256")


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / BUNDLE_MANIFEST).is_file()


class _Part(RecordPart):
    """A part of bundle.json; :meth:`to_json` gives each part within it as that part's own."""

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        for name, info in type(self).model_fields.items():
            key, value = info.alias or name, getattr(self, name)
            if key not in out:
                continue
            if isinstance(value, RecordPart):
                out[key] = value.to_json()
            elif isinstance(value, dict):
                out[key] = {
                    k: v.to_json() if isinstance(v, RecordPart) else v for k, v in value.items()
                }
        return out


class FileEntry(_Part):
    """``files[NAME]``: a file of the bundle as export (or attaching a report) wrote it."""

    sha256: str | None = None
    bytes: int | None = None


class Parity(_Part):
    """``parity`` of a variant: ONNX Runtime against PyTorch on the same normalised images
    (:class:`revise.export.parity.ParityReport`)."""

    n: int
    max_abs_diff: float
    max_rel_diff: float
    label_agreement: float
    passed: bool
    providers: list[str] = Field(default_factory=list)
    rtol: float | None = None
    atol: float | None = None


class OnnxVariant(_Part):
    """``onnx.variants[FILE]``: one ONNX file of the bundle (model.onnx, model.fp16.onnx,
    model.int8.onnx)."""

    precision: str  # fp32, fp16, int8
    graph_sha256: str  # revise.export.onnx_file.graph_digest: the graph without its metadata
    opset: int | None = None  # fp32
    exporter: str | None = None  # fp32: dynamo or torchscript
    parity: Parity | None = None  # None: exported without images to check it on
    tolerance: dict[str, float] | None = None  # fp16, int8: its own parity gate
    quantization: dict[str, Any] | None = None  # int8: how (revise.export.quantize.QUANTIZATION)
    calibration: dict[str, Any] | None = None  # int8: n, source, sample_keys_sha256


class OnnxEntry(_Part):
    """``onnx``: the graphs' input and output names, and the ONNX files."""

    input: str
    output: str
    variants: dict[str, OnnxVariant]


class TritonEntry(_Part):
    """``triton``: the Triton model repository (``<repository>/<model>/<version>/model.onnx``)."""

    repository: str
    model: str
    version: int


class ValidationSummary(_Part):
    """``validation``: what bundle.json records of the validation report it ships."""

    verdict: str | None = None  # pass, fail
    summary: str | None = None
    criteria_sha256: str | None = None
    report_sha256: str | None = None  # sha256 of the report's JSON, keys sorted
    failed_gates: list[str] = Field(default_factory=list)


class BundleManifest(_Part):
    """bundle.json: what the bundle holds, where its model comes from, how it was checked."""

    # "schema" on disk and to its writers (BaseModel has a method of that name)
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True)
    schema_: str = Field(alias="schema")  # SCHEMA
    name: str
    created_utc: str
    weights_sha256: str  # revise.models.io.weights_digest of model.safetensors
    provenance: dict[str, str]  # the com.revise.* metadata_props of every ONNX file
    validation: ValidationSummary | None = None  # null: no validation ran
    onnx: OnnxEntry
    triton: TritonEntry | None = None
    files: dict[str, FileEntry] | None = None  # every file but UNLISTED (older bundles: none)

    @property
    def verdict(self) -> str | None:
        """The validation verdict recorded (None: no validation ran)."""
        return self.validation.verdict if self.validation is not None else None


def read_bundle_manifest(
    bundle: str | Path,
    *,
    hint: str = "re-export the bundle",
    kind: type[RevisionError] = ModelError,
) -> BundleManifest:
    """The manifest of the bundle folder ``bundle``; a damaged one (not JSON, not an object, of
    another schema, a field of the wrong type) is an error of ``kind`` naming the file and each
    wrong field, with ``hint``."""
    path = Path(bundle) / BUNDLE_MANIFEST
    try:
        data = read_json_object(path, "bundle manifest", kind, hint=hint)
    except OSError as exc:  # not there, or not readable by this user
        raise kind(f"cannot read {path}: {exc}", hint=hint) from exc
    if data.get("schema") != SCHEMA:
        raise kind(
            f"{path} has schema {data.get('schema')!r}, not {SCHEMA!r}",
            hint="re-export the bundle with this version of revise",
        )
    refused = f"{path} is not a valid bundle manifest"
    return record_of(BundleManifest, data, refused, kind=kind, hint=hint)
