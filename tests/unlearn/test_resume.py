"""Checkpoint and resume, in process: a run stopped mid-way and resumed from its last checkpoint
ends with the weights of the uninterrupted run, bit for bit (CPU, fixed seed), for every method.

The stop is an exception raised from the progress callback after a step that is not
checkpointed, so the resumed run must redo work that was done but not saved, as after a kill.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from revise._run_record import RunRecord
from revise.errors import UsageError
from revise.models.architectures import build
from revise.unlearn import checkpoint
from revise.unlearn.api import unlearn
from revise.unlearn.base import METHODS, BatchStreams, steps_per_pass

EVERY = 2  # checkpoint every 2 steps
STOP_AFTER = 3  # stop after step 3: the checkpoint of step 2 is the one resumed from
CONFIG = {"epochs": 3}  # >= 6 steps for every method on the digits

# Paths through a method that draw from more of the context's state than its defaults do.
VARIANTS = [
    ("random_label", {"fixed_labels": False}),  # labels drawn at every step
    ("psg", {"phi": 1.0, "steps": 2, "early_stop": True, "noise": "laplace"}),
    ("neggrad_plus", {"alpha": 0.9}),  # forget batches from a second stream
    ("cf_k", {"cosine": False}),
]


class _Stop(Exception):
    """Stands in for the kill."""


def _stop_after(n: int):
    done = 0

    def progress(step: int, total: int) -> None:
        nonlocal done
        done += 1
        if done == n:
            raise _Stop

    return progress


def _run(digits, method, config, *, net=None, card=None, **kwargs):
    return unlearn(
        digits["net"] if net is None else net,
        digits["card"] if card is None else card,
        digits["forget"],
        digits["retain"],
        method=method,
        config=config,
        device="cpu",
        seed=3,
        **kwargs,
    )


def _assert_same_weights(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"weights differ after resuming: {different}"


def _facts(record: RunRecord) -> dict:
    """The method's facts: everything run.json holds but timings, versions and the resume
    marker."""
    skip = {"wall_clock_s", "versions", "resumed_from_step"}
    return {k: v for k, v in record.to_json().items() if k not in skip}


def _interrupted_then_resumed(digits, method, config, folder: Path, **kwargs):
    with pytest.raises(_Stop):
        _run(
            digits,
            method,
            config,
            checkpoint_dir=folder,
            checkpoint_every=EVERY,
            progress=_stop_after(STOP_AFTER),
            **kwargs,
        )
    saved = checkpoint.peek(folder)
    assert saved is not None and saved["global_step"] == EVERY
    return _run(
        digits, method, config, checkpoint_dir=folder, checkpoint_every=EVERY, resume=True, **kwargs
    )


@pytest.mark.parametrize(
    ("method", "overrides"),
    [(name, {}) for name in METHODS.names()] + VARIANTS,
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_a_resumed_run_ends_bit_identical_to_the_uninterrupted_run(
    digits, method, overrides, tmp_path
):
    config = {**CONFIG, **overrides}
    whole = _run(digits, method, config)
    assert whole.record.steps > STOP_AFTER + EVERY  # the stop really is mid-way
    assert whole.record.resumed_from_step is None
    resumed = _interrupted_then_resumed(digits, method, config, tmp_path / "ck")
    _assert_same_weights(whole, resumed)
    assert resumed.record.resumed_from_step == EVERY
    assert _facts(resumed.record) == _facts(whole.record)
    assert checkpoint.peek(tmp_path / "ck")["global_step"] % EVERY == 0
    assert list(tmp_path.rglob("*.part")) == []  # checkpoints were written atomically


def test_resuming_restores_the_global_random_stream_of_dropout(digits, tmp_path):
    card = dataclasses.replace(digits["card"], arch_kwargs={"dropout": 0.5})
    net = build(card)
    net.load_state_dict(copy.deepcopy(digits["net"].state_dict()))
    config = {"epochs": 1}
    whole = _run(digits, "finetune", config, net=net, card=card)
    plain = _run(digits, "finetune", config)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(whole.model.parameters(), plain.model.parameters(), strict=True)
    )  # dropout really draws from the global stream
    resumed = _interrupted_then_resumed(
        digits, "finetune", config, tmp_path / "ck", net=net, card=card
    )
    _assert_same_weights(whole, resumed)


def _interrupted_finetune(digits, folder) -> None:
    """A one-epoch finetune stopped after STOP_AFTER steps, its checkpoint in ``folder``."""
    with pytest.raises(_Stop):
        _run(
            digits,
            "finetune",
            {"epochs": 1},
            checkpoint_dir=folder,
            checkpoint_every=EVERY,
            progress=_stop_after(STOP_AFTER),
        )


def test_a_checkpoint_of_another_run_is_refused_saying_what_differs(digits, tmp_path):
    folder = tmp_path / "ck"
    _interrupted_finetune(digits, folder)
    with pytest.raises(
        UsageError, match=r"hyperparameters differ: lr 0\.04 != 0\.01\).*without --resume"
    ):
        _run(digits, "finetune", {"epochs": 1, "lr": 0.01}, checkpoint_dir=folder, resume=True)
    with pytest.raises(UsageError, match="method differs: 'finetune' != 'l1_sparse'"):
        _run(digits, "l1_sparse", {"epochs": 1}, checkpoint_dir=folder, resume=True)
    other = copy.deepcopy(digits["net"])
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    with pytest.raises(UsageError, match=r"another run \(model differs\)"):
        _run(digits, "finetune", {"epochs": 1}, net=other, checkpoint_dir=folder, resume=True)
    with pytest.raises(UsageError, match=r"seed differs: 3 != 4"):
        unlearn(
            digits["net"],
            digits["card"],
            digits["forget"],
            digits["retain"],
            method="finetune",
            config={"epochs": 1},
            device="cpu",
            seed=4,
            checkpoint_dir=folder,
            resume=True,
        )
    fewer = type(digits["retain"])(digits["retain"].x[1:], digits["retain"].y[1:])
    with pytest.raises(UsageError, match=r"another run \(data differs\)"):
        unlearn(
            digits["net"],
            digits["card"],
            digits["forget"],
            fewer,
            method="finetune",
            config={"epochs": 1},
            device="cpu",
            seed=3,
            checkpoint_dir=folder,
            resume=True,
        )


@pytest.mark.parametrize(
    ("module", "attribute", "part"),
    [("revise", "__version__", "revise_version"), ("torch", "__version__", "torch_version")],
)
def test_a_checkpoint_of_another_revise_or_torch_version_is_refused(
    digits, tmp_path, monkeypatch, module, attribute, part
):
    folder = tmp_path / "ck"
    _interrupted_finetune(digits, folder)
    monkeypatch.setattr(f"{module}.{attribute}", "99.0.0")  # the upgrade
    with pytest.raises(UsageError, match=rf"another run \({part} differs: '.+' != '99\.0\.0'\)"):
        _run(digits, "finetune", {"epochs": 1}, checkpoint_dir=folder, resume=True)
    assert checkpoint.peek(folder)["global_step"] == EVERY  # refused, and kept


def test_resume_without_a_checkpoint_starts_fresh(digits, tmp_path):
    whole = _run(digits, "finetune", {"epochs": 1})
    fresh = _run(digits, "finetune", {"epochs": 1}, checkpoint_dir=tmp_path / "none", resume=True)
    _assert_same_weights(whole, fresh)
    assert fresh.record.resumed_from_step is None


def test_checkpoints_need_a_folder(digits):
    with pytest.raises(UsageError, match="checkpoint folder"):
        _run(digits, "finetune", {"epochs": 1}, checkpoint_every=5)


def test_batch_streams_are_a_function_of_seed_stream_and_counter():
    cpu = torch.device("cpu")
    a, b = BatchStreams(7, cpu), BatchStreams(7, cpu)
    first = [a.next(1, 10, 4) for _ in range(9)]
    assert all(len(idx) == 4 for idx in first)  # full batches, the last of a pass overlaps
    for p in range(3):  # every item is seen in every pass of steps_per_pass(10, 4) = 3 batches
        assert set(torch.cat(first[3 * p : 3 * p + 3]).tolist()) == set(range(10))
    assert steps_per_pass(10, 4) == 3
    b.load(a.state())  # a counter is all the state there is
    a_next, b_next = a.next(1, 10, 4), b.next(1, 10, 4)
    assert torch.equal(a_next, b_next)
    c = BatchStreams(7, cpu)
    c.load({"1": 4})
    assert torch.equal(c.next(1, 10, 4), first[4])
    assert not torch.equal(BatchStreams(7, cpu).next(2, 10, 4), first[0])  # streams differ
    with pytest.raises(ValueError, match="stream 1"):
        a.next(1, 12, 4)


def test_resuming_with_another_cpu_thread_count_warns(digits, tmp_path, caplog):
    folder = tmp_path / "ck"
    _interrupted_finetune(digits, folder)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        _run(digits, "finetune", {"epochs": 1}, checkpoint_dir=folder, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert any("CPU threads" in r.getMessage() for r in caplog.records)
