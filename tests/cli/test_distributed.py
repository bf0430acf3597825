"""Several workers through torchrun (gloo on CPU) give the single-process result."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

# BatchNorm statistics frozen and no noise: the sharded update is then mathematically the
# single-process update on the global batch, so the weights agree up to float summation order.
EXACT = {"epochs": 2, "lr": 0.001, "freeze_bn": "true"}


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
