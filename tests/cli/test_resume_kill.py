"""A real kill: `revise unlearn` is SIGKILLed after its first checkpoint, leaves no run folder,
and `--resume` finishes it with the model the uninterrupted run writes, byte for byte."""

from __future__ import annotations

import json
import re

from clirunner import kill_when

from revise.unlearn.api import checkpoint_dir_for, partial_dir
from revise.unlearn.checkpoint import FILE, peek

# psg with its noise, a retain term and tallies; 8 passes of 7 steps run for a couple of seconds
# on a CPU: long after the first checkpoint (step 2), whose appearance triggers the kill.
SETTINGS = {"epochs": 8, "lr": 0.001, "phi": 2}
EVERY = 2


def test_a_killed_run_resumes_to_the_uninterrupted_result(cli, demo_site, tmp_path):
    out = tmp_path / "run"
    extra = ("--checkpoint-every", EVERY)
    args = cli.unlearn_args(demo_site, out, *extra, settings=SETTINGS)
    first_checkpoint = checkpoint_dir_for(out) / FILE
    kill_when(args, first_checkpoint, tmp_path / "killed.log")
    assert not out.exists()  # nothing that looks like a finished run
    saved = peek(checkpoint_dir_for(out))
    assert saved is not None and saved["global_step"] >= EVERY

    other = {**SETTINGS, "lr": 0.002}  # another run's checkpoint is refused, and kept
    refused = cli(*cli.unlearn_args(demo_site, out, *extra, "--resume", settings=other), code=2)
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "lr 0.001 != 0.002" in errors[0], cli.describe(refused)
    assert "without --resume" in errors[0]
    assert peek(checkpoint_dir_for(out)) == saved and not out.exists()

    resumed = cli(*args, "--resume", code=0)
    match = re.search(r"resuming from step (\d+)", resumed.stdout)
    assert match, cli.describe(resumed)
    step = int(match.group(1))
    record = json.loads((out / "run.json").read_text())
    assert 0 < step < record["steps"] and step % EVERY == 0
    assert record["resumed_from_step"] == step
    assert f"resumed from step {step}" in resumed.stdout
    assert not partial_dir(out).exists()
    assert cli.leftovers(tmp_path) == []

    whole = tmp_path / "whole"
    cli(*cli.unlearn_args(demo_site, whole, *extra, settings=SETTINGS), code=0)
    assert (out / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    reference = json.loads((whole / "run.json").read_text())
    assert record["attack_success_ratio"] == reference["attack_success_ratio"]
    assert record["metrics"] == reference["metrics"]


def test_a_partial_run_is_replaced_without_resume_and_resume_without_one_starts_fresh(
    cli, demo_site, tmp_path
):
    out = tmp_path / "run"
    stale = partial_dir(out)
    (stale / "checkpoint").mkdir(parents=True)
    (stale / "checkpoint" / "junk").write_text("left by a killed run")
    args = cli.unlearn_args(demo_site, out, settings={"epochs": 1})
    fresh = cli(*args, code=0)
    assert f"starting fresh: removing the unfinished run {stale}" in fresh.stdout
    assert not stale.exists() and (out / "model.safetensors").is_file()

    again = tmp_path / "again"
    result = cli(*cli.unlearn_args(demo_site, again, "--resume", settings={"epochs": 1}), code=0)
    assert f"no checkpoint in {partial_dir(again)}: starting fresh" in result.stdout
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    assert cli.leftovers(tmp_path) == []
