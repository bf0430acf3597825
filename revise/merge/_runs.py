"""Run folders as merge inputs: loading, naming, and the checks that they can be merged."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from revise._io.outputs import RUN_RECORD
from revise._run_record import RunRecord, read_run_record
from revise.errors import ModelError, UsageError
from revise.models.card import ModelCard

State = Mapping[str, torch.Tensor]


@dataclass
class RunInput:
    """One run to merge: its network, card, run record and a name for messages."""

    name: str
    model: nn.Module
    card: ModelCard
    record: RunRecord
    path: Path | None = None

    @property
    def base_digest(self) -> str:
        return self.record.base_model_digest or ""


def load_run(folder: str | Path) -> RunInput:
    """A run folder written by ``save_run`` (model.safetensors, card.json, run.json)."""
    from revise.models.io import load_model

    folder = Path(folder)
    record_path = folder / RUN_RECORD
    if not record_path.is_file():
        raise ModelError(
            f"{folder} is not a run folder: run.json is missing",
            hint="give folders written by `revise unlearn` or `revise merge`",
        )
    record = read_record(record_path)
    loaded = load_model(folder)
    return RunInput(folder.name, loaded.module, loaded.card, record, folder)


def read_record(path: Path) -> RunRecord:
    """A run folder's run.json as merging needs it: a valid run record (the base model's
    path, if recorded, an object with a text ``path``) with the base model's digest. A damaged
    file is a ModelError naming it and the fix."""
    fix = "the run folder is damaged: write it again with `revise unlearn` (or restore it)"
    record = read_run_record(path, hint=fix)
    if not record.base_model_digest:
        raise ModelError(f"{path} has no base_model_digest (the base model's digest)", hint=fix)
    return record


def resolve(ref: str | int, runs: Sequence[RunInput]) -> int:
    """The index of the run ``ref`` names: a 0-based index or a run folder name."""
    text = str(ref).strip()
    if text.isdigit():
        i = int(text)
        if i < len(runs):
            return i
        raise UsageError(f"run index {i} is out of range", hint=f"give 0 to {len(runs) - 1}")
    matches = [i for i, run in enumerate(runs) if run.name == text]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(f"{i}={run.name}" for i, run in enumerate(runs))
    if matches:
        raise UsageError(f"run name {text!r} is ambiguous", hint=f"use an index: {names}")
    raise UsageError(f"no run is called {text!r}", hint=f"runs: {names}")


def check_aligned(
    runs: Sequence[RunInput], base: State | None = None, *, base_digest: str | None = None
) -> None:
    """Refuse runs that cannot be merged, naming the run and the key at fault: another base
    model (run.json ``base_model_digest``), another architecture, a missing or extra key, or a
    key of another shape or dtype (against the first run, and against ``base`` if given)."""
    if not runs:
        raise UsageError("nothing to merge", hint="give at least one run folder")
    first = runs[0]
    for run in runs:
        if not run.base_digest:
            raise ModelError(
                f"run {run.name}: run.json has no base_model_digest",
                hint="merge only runs written by `revise unlearn` (or record the base digest)",
            )
    want = base_digest or first.base_digest
    for run in runs:
        if run.base_digest != want:
            raise ModelError(
                f"run {run.name} revises another base model (base_model_digest "
                f"{run.base_digest[:12]}, not {want[:12]})",
                hint="merge only runs of the same deployed model",
            )
        if (run.card.architecture, run.card.num_classes) != (
            first.card.architecture,
            first.card.num_classes,
        ):
            raise ModelError(
                f"run {run.name} is a {run.card.architecture} with {run.card.num_classes} "
                f"classes, run {first.name} a {first.card.architecture} with "
                f"{first.card.num_classes}"
            )
    reference = {k: v for k, v in first.model.state_dict().items()}
    for run in runs[1:]:
        check_state(run.name, run.model.state_dict(), first.name, reference)
    if base is not None:
        check_state("base model", base, first.name, reference)


def check_state(name: str, state: State, ref_name: str, reference: State) -> None:
    """``state`` has exactly ``reference``'s keys, shapes and dtypes."""
    missing = [k for k in reference if k not in state]
    if missing:
        raise ModelError(f"run {name} has no key {missing[0]!r} (run {ref_name} has it)")
    extra = [k for k in state if k not in reference]
    if extra:
        raise ModelError(f"run {name} has a key {extra[0]!r} that run {ref_name} does not")
    for key, value in reference.items():
        other = state[key]
        if tuple(other.shape) != tuple(value.shape):
            raise ModelError(
                f"run {name}: key {key!r} has shape {tuple(other.shape)}, "
                f"run {ref_name} {tuple(value.shape)}"
            )
        if other.dtype != value.dtype:
            raise ModelError(
                f"run {name}: key {key!r} is {other.dtype}, run {ref_name} {value.dtype}"
            )


def digest_of(run: RunInput) -> str:
    from revise.models.io import weights_digest

    return weights_digest(run.model)
