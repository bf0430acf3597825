"""The export stage: a model (e.g. a run folder) in, a bundle folder out - ONNX with a parity
check in ONNX Runtime, weights, card, run record, validation report, Triton model repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import Field, field_validator

from revise._io.outputs import check_output
from revise.data import manifest as manifest_mod
from revise.data.tensors import load_tensors
from revise.errors import OptionError
from revise.export.bundle import check_name, write_bundle
from revise.export.onnx import check_opset
from revise.export.parity import require_onnxruntime
from revise.export.quantize import INT8_MIN_AGREEMENT, calibration_from_manifest
from revise.models.io import load_model
from revise.models.pixel import normalize
from revise.stages._options import StageOptions, check

Say = Callable[[str], None]


class ExportOptions(StageOptions):
    """The bundle's own choices (`revise export` flags, a recipe's export: section)."""

    name: str = Field("revised_model", description="Model name (Triton repository).")
    fp16: bool = Field(False, description="Also ship model.fp16.onnx (own parity gate).")
    int8: bool = Field(
        False, description="Also ship model.int8.onnx (static QDQ quantization, own gate)."
    )
    calibration_samples: int = Field(
        256, ge=1, description="Retain images the INT8 variant is calibrated on."
    )
    int8_min_agreement: float = Field(
        INT8_MIN_AGREEMENT,
        ge=0.0,
        le=1.0,
        description="INT8 gate: least label agreement with PyTorch.",
    )
    parity_samples: int = Field(256, ge=1, description="Images for the parity check.")
    opset: int = Field(18, description="ONNX opset: 7 up to the newest the installed onnx knows.")

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:

        check(lambda: check_name(name, "name"))
        return name

    @field_validator("opset")
    @classmethod
    def _known_opset(cls, opset: int) -> int:

        check(lambda: check_opset(opset, "opset"))
        return opset


def export_bundle(
    model: Path,
    out: Path,
    options: ExportOptions | None = None,
    *,
    card: Path | None = None,
    arch: str | None = None,
    manifest: Path | None = None,
    validation: Path | None = None,
    recipe: Path | None = None,
    cache: Path | None = None,
    forget: str | None = None,
    overwrite: bool = False,
    say: Say = lambda _: None,
):
    """Write the bundle folder ``out`` for ``model``; the :class:`~revise.export.bundle.Bundle`.

    The parity check runs on ``manifest``'s held-out images (its first rows when it has none),
    else on random images in the card's pixel range. The INT8 variant is calibrated on its
    retain rows: training rows outside ``forget``, by default the run record's forget selection
    (:func:`revise.export.quantize.calibration_from_manifest`)."""

    if out.suffix.lower() == ".onnx":
        folder = out.with_suffix("")
        raise OptionError(
            "out",
            f"{out}: the bundle is a folder (its ONNX file is model.onnx inside it)",
            hint=f"e.g. {{out}} {folder}; then use {folder / 'model.onnx'}",
        )
    options = options or ExportOptions()
    if options.int8 and manifest is None:
        raise OptionError(
            "int8",
            "needs the site's manifest: the INT8 variant is calibrated on its retain images",
            hint="give the manifest (revise export --data MANIFEST), or leave out {int8}",
        )
    inputs = [model, card, manifest, validation, recipe]
    check_output(out, overwrite=overwrite, inputs=inputs, option="out")
    require_onnxruntime()  # the parity check needs it: say so before any work
    loaded = load_model(model, card=card, architecture=arch)
    c = loaded.card
    source = "random pixel-range images"
    if manifest is not None:
        samples, source = _parity_images(manifest, c, options.parity_samples, cache)
    else:
        g = torch.Generator().manual_seed(0)
        low, high = c.pixel_range
        samples = low + (high - low) * torch.rand(
            options.parity_samples, c.in_channels, *c.input_size, generator=g
        )
    calibration = None
    if options.int8:
        assert manifest is not None  # refused above
        calibration = calibration_from_manifest(
            model, manifest, c, options.calibration_samples, forget=forget, cache=cache
        )
        say(f"INT8 calibration: {len(calibration.keys)} {calibration.source}")
    bundle = write_bundle(
        loaded,
        out,
        samples=normalize(samples, c),
        name=options.name,
        opset=options.opset,
        fp16=options.fp16,
        int8=calibration,
        int8_min_agreement=options.int8_min_agreement,
        validation=validation,
        recipe=recipe.read_text() if recipe else None,
        overwrite=overwrite,
    )
    for file, variant in bundle.manifest.onnx.variants.items():
        p = variant.parity
        assert p is not None  # write_bundle checks every variant on the samples
        say(
            f"{file}: parity on {p.n} {source}: max |diff| {p.max_abs_diff:.2e}, "
            f"labels agree {p.label_agreement:.3f}"
        )
    verdict = bundle.verdict or "not validated"
    files = len(bundle.manifest.files or {}) + 1  # and bundle.json, which lists the others
    say(f"wrote bundle {out} ({files} files; validation: {verdict})")
    return bundle


def _parity_images(manifest_path: Path, card, n: int, cache: Path | None):
    """Images for the parity check: the held-out rows of the manifest, or its first rows
    (training images) when it has none; and the words saying which were used."""

    df = manifest_mod.load(manifest_path)
    heldout = df[df["split"].astype("string").fillna("").str.lower() == "heldout"]
    if len(heldout):
        rows, source = heldout.head(n), "held-out images"
    else:
        rows = df.head(n)
        source = f"training images ({manifest_path} has no held-out rows)"
    return load_tensors(rows, card, cache_dir=cache).x, source
