"""Shared set-up for the CLI tests (a pytest plugin of tests/conftest.py): one demo site, indexed,
with a deployed model, per session.

Building the demo site writes 1,797 DICOM files (a few seconds), so it happens once. The site,
its manifest, the model and the psg run folder are shared read-only by every test: a test that
needs to change one of them copies it into its own ``tmp_path`` first.

Test modules reach the helpers through the ``cli`` fixture (fixture modules are not meant
to be imported): ``cli(*args, code=0)`` runs ``revise`` in-process and checks the exit code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import Result
from clirunner import describe, invoke

FORGET = 'device == "Borealis CR-7"'
# Every CLI unlearning run uses these: one pass keeps a run at a second or two on a CPU.
RUN_SETTINGS = {"epochs": 1, "lr": 0.001, "phi": 2}


@dataclass(frozen=True)
class DemoSite:
    """The shared site. Do not modify anything under ``root``; copy it first."""

    root: Path
    dicom: Path  # the DICOM folder (one sub-folder per patient)
    labels: Path  # labels.csv: sop_instance_uid,label,split
    manifest: Path  # written by `revise index ... --labels`
    index_result: Result  # of that `revise index`
    model: Path  # revise model folder: model.safetensors + card.json


def unlearn_args(
    site: DemoSite,
    out: Path,
    *extra: object,
    forget: str = FORGET,
    settings: dict[str, object] = RUN_SETTINGS,
) -> list[object]:
    """Arguments of a quick `revise unlearn` of the shared model on the shared manifest."""
    pairs = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    if pairs:  # settings are psg's unless ``extra`` names another method (the last one counts)
        pairs = ["--method", "psg", *pairs]
    return [
        "unlearn",
        "--model",
        site.model,
        "--data",
        site.manifest,
        "--forget",
        forget,
        *pairs,
        "-o",
        out,
        "--device",
        "cpu",
        *extra,
    ]


def quick_recipe(folder: Path, site: DemoSite, **sections) -> Path:
    """``folder/recipe.yaml`` over the shared site's manifest and model (no index stage): psg
    for one epoch on FORGET, then ``sections`` (top-level keys, replacing these)."""
    import yaml

    doc = {
        "workdir": "work",
        "model": str(site.model),
        "data": {"manifest": str(site.manifest)},
        "forget": FORGET,
        "device": "cpu",
        "unlearn": [{"method": "psg", "settings": {"epochs": 1}}],
        **sections,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders an atomic write left behind (``*.part``) under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.part"))


class Cli:
    """The helpers test modules use, handed out by the ``cli`` fixture."""

    forget = FORGET
    run_settings = RUN_SETTINGS

    def __call__(self, *args: object, code: int | None = None) -> Result:
        return invoke(*args, code=code)

    describe = staticmethod(describe)
    leftovers = staticmethod(leftovers)
    unlearn_args = staticmethod(unlearn_args)

    @staticmethod
    def one_line_error(result: Result) -> str:
        """The single ``error: ...`` line on stderr (asserted to be the only stderr line)."""
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), describe(result)
        assert not result.stdout.strip(), describe(result)
        return lines[0]


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


@pytest.fixture(autouse=True)
def _keep_global_rng() -> Iterator[None]:
    """Leave torch's global random state as found: training and unlearning reseed it, and
    other modules' fixtures build models from it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        yield


def train_model(manifest: Path, out: Path, *, epochs: int = 8) -> Path:
    """Train the deployed model on every training row of ``manifest``; save it to ``out``."""
    from revise.data import manifest as manifest_mod
    from revise.data.tensors import prepare
    from revise.models.architectures import build
    from revise.models.io import save_model
    from revise.stages.demo import demo_card
    from revise.unlearn.train import TrainConfig, train_classifier

    card = demo_card()
    data = prepare(manifest_mod.load(manifest), card, None)  # no selection: all on retain side
    recipe = TrainConfig(epochs=epochs, batch_size=64, lr=0.05)
    torch.manual_seed(0)  # the initial weights: the same model in every session
    net = train_classifier(build(card), card, data.sets["retain"], recipe, device="cpu")
    return save_model(net, card, out)


@pytest.fixture(scope="session")
def demo_site(tmp_path_factory, isolated_env) -> DemoSite:
    from revise.data.demo_site import build_demo_site

    root = tmp_path_factory.mktemp("cli-site")
    with isolated_env():
        site = build_demo_site(root / "site", n_patients=24)
        manifest = root / "manifest.parquet"
        result = invoke(
            "index", site.root / "dicom", "-o", manifest, "--labels", site.labels_csv, code=0
        )
        model = train_model(manifest, root / "model")
    return DemoSite(
        root=root,
        dicom=site.root / "dicom",
        labels=site.labels_csv,
        manifest=manifest,
        index_result=result,
        model=model,
    )


@pytest.fixture(scope="session")
def retrained_model(demo_site, tmp_path_factory, isolated_env) -> Path:
    """The reference: the deployed model's recipe on the training rows outside FORGET."""
    from revise.data import manifest as manifest_mod
    from revise.data.select import mask

    df = manifest_mod.load(demo_site.manifest)
    training = df["split"].astype("string").fillna("") != "heldout"
    root = tmp_path_factory.mktemp("retrained")
    manifest_mod.save(df[~(mask(df, FORGET) & training)], root / "retain.parquet")
    with isolated_env():
        return train_model(root / "retain.parquet", root / "model")


@pytest.fixture(scope="session")
def psg_run(demo_site, tmp_path_factory, isolated_env) -> tuple[Result, Path]:
    """`revise unlearn` (psg, RUN_SETTINGS) of the shared model: (result, run folder).

    Not checked here: test_cli's test_unlearn_psg_run says what is wrong when it fails; tests
    that only read the run folder skip on a failed run so that one failure is not reported N
    times.
    """
    out = tmp_path_factory.mktemp("cli-runs") / "psg"
    with isolated_env():
        result = invoke(*unlearn_args(demo_site, out))
    return result, out


@pytest.fixture
def run_folder(psg_run) -> Path:
    """The psg run folder, for tests that need a successful run."""
    result, out = psg_run
    if result.exit_code != 0:
        pytest.skip("the shared psg run failed (see test_unlearn_psg_run)")
    return out
