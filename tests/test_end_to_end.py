"""A whole revision through the example plugin: a PNG site (revise-pngfolder) indexed, split,
used to train a deployed model, and revised with `revise unlearn --method auto` to forget one
class."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import Result
from clirunner import invoke

from revise.data import plugins

HERE = Path(__file__).resolve().parent
FORGET = "label in [0]"


def _test_plugins_module():
    """tests/test_plugins.py, loaded from its path (it is a test module, not a package)."""
    name = "_revise_tests_test_plugins"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "test_plugins.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, (
        f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}\n{result.exception!r}"
    )
    return result


def _train(manifest: Path, out: Path) -> Path:
    from revise.data import manifest as manifest_mod
    from revise.data.tensors import prepare
    from revise.models.architectures import build
    from revise.models.io import save_model
    from revise.stages.demo import demo_card
    from revise.unlearn.train import TrainConfig, train_classifier

    card = demo_card()  # 16x16 grey, 10 digits: the 8x8 PNGs are resized to it
    data = prepare(manifest_mod.load(manifest), card, None)
    recipe = TrainConfig(epochs=30, batch_size=32, lr=0.05)
    torch.manual_seed(0)  # the initial weights: the same model in every session
    net = train_classifier(build(card), card, data.sets["retain"], recipe, device="cpu")
    return save_model(net, card, out)


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """Leave torch's global random state as found (training and unlearning reseed it)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        yield


def test_revision_through_the_pngfolder_plugin(tmp_path, monkeypatch):
    import pandas as pd

    from revise.data import manifest as manifest_mod

    tp = _test_plugins_module()
    monkeypatch.setenv("REVISE_PLUGINS", tp.PLUGIN)
    plugins.reset()
    if tp.PLUGIN not in plugins.site_loaders():
        pytest.fail(f"the example plugin {tp.DIST} is not installed; run `{tp.INSTALL}`")
    site = tp.make_png_site(tmp_path / "site", n=400)

    manifest = tmp_path / "m.parquet"
    _ok(invoke("index", site, "-o", manifest))
    df = manifest_mod.load(manifest)
    assert len(df) == 400 and set(df["loader"]) == {tp.PLUGIN}
    assert df["label"].notna().all()
    df["split"] = ["heldout" if i % 4 == 0 else "train" for i in range(len(df))]
    manifest_mod.save(df, manifest)

    model = _train(manifest, tmp_path / "model")
    common = ["--model", model, "--data", manifest, "--forget", FORGET]
    before = tmp_path / "before.json"
    _ok(invoke("evaluate", *common, "--json", before, "--device", "cpu"))
    original = json.loads(before.read_text())

    run = tmp_path / "run"  # the automatic revision: no settings, no retrained reference
    result = _ok(invoke("unlearn", *common, "--method", "auto", "-o", run, "--device", "cpu"))
    assert "run written to" in result.stdout
    record = json.loads((run / "run.json").read_text())
    revised = record["metrics"]
    assert record["forget_selection"] == FORGET
    zeros = int(((df["label"] == 0) & (df["split"] == "train")).sum())
    assert revised["forget"]["n"] == original["forget"]["n"] == zeros > 0
    accuracy = {k: (original[k]["accuracy"], revised[k]["accuracy"]) for k in revised}
    assert original["forget"]["accuracy"] >= 0.8, accuracy  # the deployed model knows the class
    # a model retrained without the class never predicts it; the other digits stay as they were
    assert revised["forget"]["accuracy"] <= 0.05, accuracy
    assert revised["retain"]["accuracy"] >= original["retain"]["accuracy"] - 0.03, accuracy
    assert record["target"]["kind"] == "class" and record["target"]["met"], record["target"]
    # the run holds no clear patient ID of the site's label file
    for text in (manifest.read_bytes(), (run / "run.json").read_bytes()):
        assert not any(pid.encode() in text for pid in tp.PATIENT_IDS)
    assert pd.read_parquet(manifest)["patient"].str.startswith("p-").all()
