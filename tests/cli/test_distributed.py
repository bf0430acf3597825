"""Several workers through torchrun (gloo on CPU) give the single-process result."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

# BatchNorm statistics frozen and no noise: the sharded update is then mathematically the
# single-process update on the global batch, so the weights agree up to float summation order.
EXACT = {"epochs": 2, "lr": 0.001, "freeze_bn": "true"}


@pytest.mark.slow  # two worker processes
def test_two_gloo_workers_match_one_process(cli, demo_site, tmp_path, monkeypatch):
    # torchrun gives each worker one thread unless told otherwise; match this process, so
    # that only the sharding differs between the two runs.
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    one, two = tmp_path / "one", tmp_path / "two"
    cli(*cli.unlearn_args(demo_site, one, "--method", "boundary_shrink", settings=EXACT), code=0)
    cli(
        *cli.unlearn_args(
            demo_site, two, "--method", "boundary_shrink", "--nproc-per-node", "2", settings=EXACT
        ),
        code=0,
    )
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst < 1e-5
    moved = max(
        (a[k].double() - load_file(demo_site.model / "model.safetensors")[k].double())
        .abs()
        .max()
        .item()
        for k in a
    )
    assert moved > 1e-3  # the run really changed the model
    record_one = json.loads((one / "run.json").read_text())
    record_two = json.loads((two / "run.json").read_text())
    assert record_two["world_size"] == 2 and record_one["world_size"] == 1
    assert record_two["attack_success_ratio"] == pytest.approx(
        record_one["attack_success_ratio"], abs=0.01
    )
    for name, stats in record_one["metrics"].items():
        assert record_two["metrics"][name]["accuracy"] == pytest.approx(stats["accuracy"], abs=0.01)


# -- the unlearning API under torchrun, against one process --------------------------------------
#
# Two gloo workers run the cases below through `unlearn()` (one torchrun launch for all of them);
# this process runs the same cases alone. Forget sets smaller than or not divisible by the world
# size give the workers slices of unequal size, or none at all; the search noise and random
# labels must still be those of the one-process run, and a checkpoint written by the workers
# must resume them to their uninterrupted result.

WORKER = r"""
import json
import sys
from pathlib import Path

import torch

from revise.distributed import finish, is_main_process
from revise.unlearn.api import unlearn
from revise.data.sets import DecodedSet


class Stop(Exception):
    pass


def stop_after(n):
    def progress(done, total):
        if done == n:
            raise Stop
    return progress


def main(setup, out):
    torch.set_num_threads(1)
    s = torch.load(setup, weights_only=False)
    for case in s["cases"]:
        net, card = s["models"][case.get("model", "plain")]
        nf, nr = case["n_forget"], case["n_retain"]
        forget = DecodedSet(s["forget"].x[:nf], s["forget"].y[:nf])
        retain = DecodedSet(s["retain"].x[:nr], s["retain"].y[:nr])
        kwargs = dict(method=case["method"], config=case["config"], device="cpu", seed=5)
        if case.get("stop_after"):
            folder = Path(out) / (case["name"] + ".ck")
            try:
                unlearn(net, card, forget, retain, checkpoint_dir=folder, checkpoint_every=1,
                        progress=stop_after(case["stop_after"]), **kwargs)
                raise AssertionError("the run was not stopped")
            except Stop:
                pass
            kwargs.update(checkpoint_dir=folder, checkpoint_every=1, resume=True)
        result = unlearn(net, card, forget, retain, **kwargs)
        if is_main_process():
            torch.save(result.model.state_dict(), Path(out) / (case["name"] + ".pt"))
            (Path(out) / (case["name"] + ".json")).write_text(json.dumps(result.record.to_json()))
    finish()


main(sys.argv[1], sys.argv[2])
"""

PSG_EXACT = {"epochs": 3, "lr": 0.1, "momentum": 0.0, "gamma": 0.0, "freeze_bn": True}
NOISY = {"epochs": 4, "lr": 0.05, "gamma": 0.1, "target": "soft", "freeze_bn": True}
# name, method, config, forget images, retain images. Compared with one process:
CASES = [
    # one image: worker 1's slice is empty every step
    ("psg_forget_1", "psg", PSG_EXACT, 1, 64),
    # three images: slices of 2 and 1; the retain term's global batch (64) differs
    ("psg_forget_3_phi", "psg", {**PSG_EXACT, "phi": 1.0, "batch_size": 64}, 3, 64),
    # noise drawn per step, slices of 3 and 2
    ("psg_noise_5", "psg", NOISY, 5, 64),
    (
        "neggrad_forget_3",
        "neggrad_plus",
        {"epochs": 1, "alpha": 0.5, "batch_size": 16, "freeze_bn": True},
        3,
        40,
    ),
    (
        "random_label_5",
        "random_label",
        {"epochs": 1, "fixed_labels": False, "batch_size": 7, "lr": 0.05, "freeze_bn": True},
        5,
        40,
    ),
    ("salun_5", "salun", {"epochs": 1, "batch_size": 7, "freeze_bn": True}, 5, 40),
]
# Stopped after step 3 and resumed from the checkpoint of step 3, compared with the workers'
# uninterrupted run (psg_noise_5; its dropout twin): generators and torch's global stream.
RESUMED = [
    {
        "name": "psg_noise_5_resumed",
        "method": "psg",
        "config": NOISY,
        "n_forget": 5,
        "n_retain": 64,
        "stop_after": 4,
    },
    {
        "name": "psg_dropout_5",
        "method": "psg",
        "config": NOISY,
        "n_forget": 5,
        "n_retain": 64,
        "model": "dropout",
    },
    {
        "name": "psg_dropout_5_resumed",
        "method": "psg",
        "config": NOISY,
        "n_forget": 5,
        "n_retain": 64,
        "model": "dropout",
        "stop_after": 4,
    },
]


@pytest.fixture(scope="module")
def digits_model():
    from sklearn.datasets import load_digits

    from revise.data.sets import DecodedSet
    from revise.models.architectures import build
    from revise.models.card import ModelCard
    from revise.unlearn.train import TrainConfig, train_classifier

    d = load_digits()
    x = torch.tensor(d.images[:600] / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target[:600], dtype=torch.long)
    card = ModelCard("small_cnn", 10, 1, (8, 8), mean=(0.3,), std=(0.4,))
    torch.manual_seed(0)
    net = train_classifier(
        build(card), card, DecodedSet(x, y), TrainConfig(epochs=3, lr=0.05), device="cpu"
    )
    dropout_card = ModelCard(
        "small_cnn", 10, 1, (8, 8), mean=(0.3,), std=(0.4,), arch_kwargs={"dropout": 0.5}
    )
    dropout_net = build(dropout_card)
    dropout_net.load_state_dict(net.state_dict())
    forget = y == 0
    return {
        "models": {"plain": (net, card), "dropout": (dropout_net, dropout_card)},
        "forget": DecodedSet(x[forget], y[forget]),
        "retain": DecodedSet(x[~forget], y[~forget]),
    }


def _one_process(data, case):
    from revise.data.sets import DecodedSet
    from revise.unlearn.api import unlearn

    net, card = data["models"][case.get("model", "plain")]
    nf, nr = case["n_forget"], case["n_retain"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers
    try:
        return unlearn(
            net,
            card,
            DecodedSet(data["forget"].x[:nf], data["forget"].y[:nf]),
            DecodedSet(data["retain"].x[:nr], data["retain"].y[:nr]),
            method=case["method"],
            config=case["config"],
            device="cpu",
            seed=5,
        )
    finally:
        torch.set_num_threads(threads)


def _worst(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def two_workers(digits_model, tmp_path_factory):
    """The outputs of all cases run by two gloo workers: {name: (state dict, record)}."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("two-workers")
    cases = [
        {"name": n, "method": m, "config": c, "n_forget": f, "n_retain": r}
        for n, m, c, f, r in CASES
    ] + RESUMED
    torch.save({**digits_model, "cases": cases}, root / "setup.pt")
    (root / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*launch, str(root / "worker.py"), str(root / "setup.pt"), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {
        case["name"]: (
            torch.load(root / f"{case['name']}.pt", weights_only=True),
            json.loads((root / f"{case['name']}.json").read_text()),
        )
        for case in cases
    }


@pytest.mark.parametrize(("name", "method", "config", "n_forget", "n_retain"), CASES)
def test_uneven_or_empty_slices_give_the_one_process_update(
    two_workers, digits_model, name, method, config, n_forget, n_retain
):
    case = {"method": method, "config": config, "n_forget": n_forget, "n_retain": n_retain}
    one = _one_process(digits_model, case)
    weights, record = two_workers[name]
    assert record["world_size"] == 2 and one.record.world_size == 1
    original = digits_model["models"]["plain"][0].state_dict()
    assert _worst(one.model.state_dict(), original) > 1e-3  # the run really moved the model
    assert _worst(weights, one.model.state_dict()) < 1e-5
    if method == "psg":
        assert record["attack_success_ratio"] == one.record.attack_success_ratio


def test_the_noisy_case_depends_on_its_noise(digits_model):
    """psg_noise_5 checks the noise only if the noise changes its result: it does."""
    base = {"method": "psg", "n_forget": 5, "n_retain": 64}
    noisy = _one_process(digits_model, {**base, "config": NOISY})
    quiet = _one_process(digits_model, {**base, "config": {**NOISY, "gamma": 0.0}})
    assert _worst(noisy.model.state_dict(), quiet.model.state_dict()) > 1e-4


@pytest.mark.parametrize("name", ["psg_noise_5", "psg_dropout_5"])
def test_workers_resume_to_their_uninterrupted_result(two_workers, name):
    whole, _ = two_workers[name]
    resumed, record = two_workers[name + "_resumed"]
    assert record["resumed_from_step"] == 3
    assert _worst(whole, resumed) == 0.0
