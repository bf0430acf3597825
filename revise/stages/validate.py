"""The validation stage: a revised model judged against acceptance criteria fixed before the
run, on the site's held-out images; a report folder out (and attached to a bundle)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from revise._io.outputs import check_output
from revise._io.temporaries import check_finished
from revise._schema import fail
from revise.data import manifest as manifest_mod
from revise.data.calibration import run_record, without_calibration
from revise.data.manifest import FORBIDDEN_COLUMNS
from revise.data.split import partition, share_of_sets
from revise.data.tensors import decode_sets
from revise.errors import OptionError
from revise.export.bundle import attach_validation
from revise.export.manifest import INT8_ONNX, is_bundle
from revise.export.parity import require_onnxruntime
from revise.models.io import load_model
from revise.registry import did_you_mean
from revise.stages._options import StageOptions
from revise.validate.api import check_onnx_matches, validate, write_report
from revise.validate.criteria import load_criteria
from revise.validate.gate_checks import check_inputs, check_models
from revise.validate.heldout import is_dicomweb, load_heldout, with_heldout

Say = Callable[[str], None]
GROUPS = ("device", "label")


class ValidateOptions(StageOptions):
    """What validation may add (`revise validate` flags, a recipe's validate: section)."""

    reference: Path | None = Field(
        None, description="A model retrained without the forget set: adds distance, Avg. Gap."
    )
    heldout: str | None = Field(
        None, description="Held-out images: a DICOM folder, a manifest or a DICOMweb URL."
    )
    heldout_select: str | None = Field(None, description="Selection narrowing the held-out images.")
    heldout_labels: Path | None = Field(None, description="Labels for the held-out images (CSV).")
    timeout: float = Field(30.0, gt=0, description="DICOMweb connect/read timeout, seconds.")
    by: tuple[str, ...] = Field(GROUPS, description="Report accuracy per group of these columns.")

    @field_validator("by")
    @classmethod
    def _no_paths(cls, by: tuple[str, ...]) -> tuple[str, ...]:

        bad = [column for column in by if column in FORBIDDEN_COLUMNS]
        if bad:  # its values would be written to the report
            raise fail(f"{bad[0]}: file paths may identify patients; group by another column")
        return by

    @field_validator("heldout_labels")
    @classmethod
    def _labels_need_images(cls, labels: Path | None, info: ValidationInfo) -> Path | None:
        if labels is not None and info.data.get("heldout") is None:
            raise fail("label held-out images: give the images ({heldout}) too")
        return labels

    def is_url(self) -> bool:

        return self.heldout is not None and is_dicomweb(self.heldout)


def validate_model(
    model: Path,
    original: Path,
    manifest: Path,
    forget: str,
    criteria: Path,
    out: Path,
    options: ValidateOptions | None = None,
    *,
    onnx: Path | None = None,
    card: Path | None = None,
    arch: str | None = None,
    cache: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    say: Say = lambda _: None,
):
    """Judge ``model`` (a run folder, model file or bundle) against the gates in ``criteria``
    and write the report folder ``out``; the :class:`~revise.validate.api.ValidationResult`.

    A bundle is checked with the ONNX model it ships (parity on held-out images), and its INT8
    variant against it when it ships one, and gets the report attached. ``seed``: the MIA
    splits'. An automatic revision's calibration rows are
    left out of the sets judged."""

    options = options or ValidateOptions()
    reference = options.reference
    named = {"model": model, "original": original, "reference": reference, "data": manifest}
    for what, path in named.items():
        if path is not None:
            check_finished(path, what)
    bundle = model if is_bundle(model) else None
    if bundle is not None and onnx is None:
        onnx = bundle / "model.onnx"  # a bundle is validated with the ONNX file it ships
    # and its INT8 variant against it (revise.validate.int8)
    int8 = bundle / INT8_ONNX if bundle is not None and (bundle / INT8_ONNX).is_file() else None
    if onnx is not None:
        require_onnxruntime()  # the parity check needs it: say so before any work
    gates = load_criteria(criteria)  # a wrong criteria file stops here, before any work
    have = ["original"] + (["reference"] if reference else []) + (["onnx"] if onnx else [])
    have += ["int8"] if int8 is not None else []
    check_models(gates, have)
    local = Path(options.heldout) if options.heldout and not options.is_url() else None
    inputs = [*named.values(), criteria, onnx, local, options.heldout_labels, card]
    check_output(out, overwrite=overwrite, inputs=inputs, option="out")
    rows = manifest_mod.load(manifest)
    record = {"data": {"path": str(manifest), "digest": manifest_mod.digest(rows)}}
    if options.heldout:
        held = load_heldout(
            options.heldout,
            selection=options.heldout_select,
            labels=options.heldout_labels,
            cache_dir=cache,
            timeout=options.timeout,
        )
        rows, dropped = with_heldout(rows, held)
        record["heldout"] = {**held.describe(), "dropped_as_training_images": dropped}
        say(f"held-out: {len(held.rows)} images from {held.kind} {options.heldout}")
    unknown = [column for column in options.by if column not in rows.columns]
    if unknown:
        raise OptionError(
            "by",
            f"{', '.join(unknown)}: no such manifest column",
            hint=did_you_mean(unknown[0], list(rows.columns)) or None,
        )
    models = {"candidate": load_model(model, card=card, architecture=arch)}
    models["original"] = load_model(original, card=card, architecture=arch)
    if reference:
        models["reference"] = load_model(reference, card=card, architecture=arch)
    model_card = models["candidate"].card
    if onnx is not None:  # before any image is decoded
        check_onnx_matches(models["candidate"], onnx)
    parts = partition(rows, forget)
    run = run_record(model)  # an automatic revision's calibration rows are not judged
    parts = without_calibration(parts, run)
    if run is not None and run.calibration is not None:
        say("left out: the held-out rows the automatic revision calibrated on")
    check_inputs(gates, parts, have=have, class_names=model_card.class_names)
    data = decode_sets(parts, model_card, forget, cache_dir=cache)
    say("sets: " + ", ".join(f"{k} {v}" for k, v in data.counts().items()))
    say(f"the forget selection selects {share_of_sets(data.counts())}")
    result = validate(
        models,
        data,
        gates,
        onnx_path=onnx,
        int8_path=int8,
        by=options.by,
        device=device,
        seed=seed,
        inputs=record,
    )
    write_report(result, out, overwrite=overwrite)
    if bundle is not None:
        attach_validation(bundle, out)
        say(f"report attached to the bundle {bundle} (sign it again if it was signed)")
    return result


def verdict_lines(result) -> list[str]:
    """One line per gate (PASS/FAIL, its group, what it measured) and the summary."""
    lines = []
    for verdict in result.verdicts:
        mark = "PASS" if verdict.passed else "FAIL"
        group = ", ".join(f"{k}={v}" for k, v in (verdict.group or {}).items())
        where = f" [{group}]" if group else ""
        lines.append(f"{mark}  {verdict.gate.name}{where}: {verdict.message()}")
    return lines
