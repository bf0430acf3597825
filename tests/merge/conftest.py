"""A digits site for the merge tests: scikit-learn's digits as DICOM, indexed, with a small model
trained on it and two unlearning runs of that model that forget the digit 0, built once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from revise._run_record import BaseModelRef

FORGET = "label == 0"
# One good-forgetting run (soft targets, forget loss only) and one good-retention run (top-k
# targets with a retain term); a couple of epochs each on 8x8 digits.
FORGETTING = {"lr": 1e-2, "epochs": 2, "eps": 0.3, "eta": 0.3, "target": "soft"}
RETENTION = {"lr": 1e-2, "epochs": 2, "eps": 0.3, "eta": 0.3, "target": "topk", "phi": 1.0}


@dataclass(frozen=True)
class MergeSite:
    """Shared, read-only: copy before changing anything under ``root``."""

    root: Path
    manifest: Path
    base: Path  # the deployed model folder
    forgetting: Path  # run folders
    retention: Path
    data: object  # DecodedSets of the manifest with FORGET
    forget: str = FORGET


@pytest.fixture(scope="session")
def merge_site(tmp_path_factory, isolated_env) -> MergeSite:
    from revise.data import manifest as manifest_mod
    from revise.data.demo_site import build_demo_site
    from revise.data.index import index
    from revise.data.sets import DecodedSet
    from revise.data.tensors import prepare
    from revise.models.architectures import build
    from revise.models.io import save_model, weights_digest
    from revise.stages.demo import demo_card
    from revise.unlearn.api import save_run, unlearn
    from revise.unlearn.train import TrainConfig, train_classifier

    root = tmp_path_factory.mktemp("merge-site")
    with isolated_env():
        site = build_demo_site(root / "site", n_patients=24)
        indexed = index(site.root / "dicom", site="merge", labels=site.labels_csv)
        manifest = manifest_mod.save(indexed.manifest, root / "manifest.parquet")
        card = dataclasses.replace(demo_card(), input_size=(8, 8))
        data = prepare(indexed.manifest, card, FORGET)
        forget, retain = data.sets["forget"], data.sets["retain"]
        everything = DecodedSet(torch.cat([forget.x, retain.x]), torch.cat([forget.y, retain.y]))
        torch.manual_seed(0)
        net = train_classifier(
            build(card), card, everything, TrainConfig(epochs=8, lr=0.05), device="cpu"
        )
        base = save_model(net, card, root / "base")
        digest = weights_digest(net)
        runs = {}
        for name, config in (("forgetting", FORGETTING), ("retention", RETENTION)):
            result = unlearn(net, card, forget, retain, config=config, device="cpu")
            result.record.base_model_digest = digest
            result.record.base_model = BaseModelRef(path=str(base))
            runs[name] = save_run(result, root / name)
    return MergeSite(root, Path(manifest), Path(base), runs["forgetting"], runs["retention"], data)
