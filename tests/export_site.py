"""Real bundles for the export and signing tests, made once per session by the real CLI:
`revise index` of a small IDX site (scikit-learn's 8x8 digits), `revise export` of a small CNN,
`revise validate` of the bundle (a passing and a failing copy).

Tests never change the session's bundles: ``bundle_copy(verdict)`` gives a test its own copy.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
from clirunner import invoke

FORGET = "label == 0"
PASSING = "gates:\n  - {metric: parity_label_agreement, at_least: 1.0}\n"
FAILING = "gates:\n  - {name: impossible, metric: accuracy, set: heldout_retain, at_least: 1.0}\n"


@dataclass(frozen=True)
class ExportSite:
    root: Path
    manifest: Path  # train and held-out (t10k) rows
    training_only: Path  # the same without the held-out rows
    models: tuple[Path, Path]  # two small CNNs with different weights
    bundles: dict[str | None, Path]  # verdict (None: not validated) -> a bundle of models[0]
    export_result: Result  # `revise export` of models[0] with `manifest`


def _write_idx(folder: Path) -> None:
    """train-* (300 images) and t10k-* (100 images, held out) IDX pairs: 8x8 digits."""
    import numpy as np
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True)
    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    for prefix, part in (("train", slice(0, 300)), ("t10k", slice(300, 400))):
        x, y = images[part], labels[part]
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, len(x), 8, 8) + x.tobytes()
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x801, len(y)) + y.tobytes()
        )


def _model(folder: Path, seed: int) -> Path:
    import torch

    from revise.models.architectures import build
    from revise.models.card import ModelCard
    from revise.models.io import save_model

    card = ModelCard(
        "small_cnn",
        num_classes=10,
        in_channels=1,
        input_size=(8, 8),
        mean=(0.5,),
        std=(0.25,),
        arch_kwargs={"widths": [8, 16]},
    )
    torch.manual_seed(seed)
    return save_model(build(card).eval(), card, folder)


def validate_args(bundle: Path, site_manifest: Path, model: Path, criteria: Path, out: Path):
    return [
        "validate", bundle, "--original", model, "--data", site_manifest, "--forget", FORGET,
        "--criteria", criteria, "-o", out, "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def export_site(tmp_path_factory, isolated_env) -> ExportSite:
    from revise.data import manifest as manifest_mod

    root = tmp_path_factory.mktemp("export-site")
    with isolated_env():
        _write_idx(root / "idx")
        manifest = root / "m.parquet"
        invoke("index", root / "idx", "-o", manifest, code=0)
        df = manifest_mod.load(manifest)
        training_only = root / "train.parquet"
        manifest_mod.save(df[df["split"] != "heldout"], training_only)
        models = (_model(root / "model0", 0), _model(root / "model1", 1))
        exported = root / "bundles" / "none"
        result = invoke(
            "export", models[0], "-o", exported, "--data", manifest, "--name", "demo", code=0
        )
        bundles: dict[str | None, Path] = {None: exported}
        for verdict, gates in (("pass", PASSING), ("fail", FAILING)):
            criteria = root / f"{verdict}.yaml"
            criteria.write_text(gates)
            bundle = root / "bundles" / verdict
            shutil.copytree(exported, bundle)
            args = validate_args(bundle, manifest, models[0], criteria, root / f"val-{verdict}")
            invoke(*args, code=0 if verdict == "pass" else 1)
            bundles[verdict] = bundle
    return ExportSite(root, manifest, training_only, models, bundles, result)


@pytest.fixture
def bundle_copy(export_site, tmp_path) -> Callable[..., Path]:
    """``bundle_copy(verdict="pass", name="bundle")``: this test's own copy of a real bundle
    (verdict "pass" or "fail": validated by `revise validate`; None: never validated)."""

    def make(verdict: str | None = "pass", name: str = "bundle") -> Path:
        return Path(shutil.copytree(export_site.bundles[verdict], tmp_path / name))

    return make


@pytest.fixture(scope="session")
def other_export(export_site, tmp_path_factory, isolated_env) -> tuple[Result, Path]:
    """`revise export` of the *other* model (models[1]) with a manifest that has no held-out
    rows: (result, bundle). Its files stand in for "another model" in tampering tests."""
    out = tmp_path_factory.mktemp("other-export") / "bundle"
    model, manifest = export_site.models[1], export_site.training_only
    with isolated_env():
        result = invoke("export", model, "-o", out, "--data", manifest, "--name", "demo", code=0)
    return result, out
