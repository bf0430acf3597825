"""The measurements of a validation: each model's predictions on every set, and what the report
gives of them (accuracy per set and group, membership inference, the loss histograms, the
confusion matrices, the distance to a retrained reference, ONNX parity), as parts of the
typed report (:mod:`revise._validation_record`)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revise._validation_record import (
    AccuracyTable,
    Confusion,
    LossHistogram,
    LossMia,
    Membership,
    MiaEfficacy,
    Parity,
    Proportion,
    ReferenceDistance,
)
from revise.data.sets import DecodedSets
from revise.errors import DataError
from revise.models.io import LoadedModel
from revise.unlearn.evaluate import predict
from revise.validate import metrics as m
from revise.validate.mia import (
    MIN_PER_GROUP,
    loss_histogram,
    loss_mia,
    mia_efficacy,
    per_sample_loss,
    true_class_probability,
)

PARITY_SAMPLES = 1024


@dataclass
class Outputs:
    """One model's predictions on every set: logits, and (computed once) predicted class and
    correctness, which every table and gate reads."""

    logits: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    _predicted: dict[str, np.ndarray] = field(init=False, repr=False)
    _correct: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._predicted = {s: v.argmax(1).numpy() for s, v in self.logits.items()}
        self._correct = {s: self._predicted[s] == self.labels[s].numpy() for s in self.logits}

    def predicted(self, name: str) -> np.ndarray:
        return self._predicted[name]

    def correct(self, name: str) -> np.ndarray:
        return self._correct[name]


def as_proportion(estimate: m.Estimate) -> Proportion:
    """An estimate as the report gives it (rounded)."""
    return Proportion(**estimate.as_dict())


def accuracy_tables(
    out: Outputs, sets: Mapping[str, Any], by: Sequence[str], class_names: list[str]
) -> dict[str, AccuracyTable]:
    """One model's accuracy on every set, and per group of each ``by`` column it has."""
    tables = {}
    for s, subset in sets.items():
        hits = out.correct(s)
        groups = {
            column: {
                group: as_proportion(est)
                for group, est in m.by_group(hits, subset.rows, column, class_names).items()
            }
            for column in by
            if column in subset.rows.columns
        }
        tables[s] = AccuracyTable(**m.proportion(hits).as_dict(), by=groups)
    return tables


def nonmember_sets(sets: Mapping[str, Any]) -> list[str]:
    """Held-out images of the forgotten group are the matching non-members (same distribution
    as the forget set); without enough of them, every held-out image."""
    if "heldout_forget" in sets and len(sets["heldout_forget"]) >= MIN_PER_GROUP:
        return ["heldout_forget"]
    return [s for s in ("heldout_forget", "heldout_retain") if s in sets]


Measured = tuple[Outputs, Membership | None, LossHistogram | None]


def measured(
    name: str,
    loaded: LoadedModel,
    sets: Mapping[str, Any],
    data: DecodedSets,
    seed: int,
    device: str,
    reuse: MutableMapping[Any, Any] | None,
) -> Measured:
    """One model's outputs on every set, its membership attacks and loss histogram (None where
    the data allows none); baselines come from ``reuse`` when they were measured before."""
    key = (name, id(loaded.module), id(data), seed)
    cacheable = reuse is not None and name != "candidate"
    if cacheable and key in reuse:
        return reuse[key]
    out = Outputs(
        {s: predict(loaded.module, loaded.card, sets[s].x, device=device) for s in sets},
        {s: sets[s].y for s in sets},
    )
    got = (out, *membership(out, sets, seed))
    if cacheable:
        reuse[key] = got
    return got


def membership(
    out: Outputs, sets: Mapping[str, Any], seed: int
) -> tuple[Membership | None, LossHistogram | None]:
    """loss-MIA, MIA-Efficacy and the loss histogram of one model (what the data allows)."""
    nonmembers_from = nonmember_sets(sets)
    if "forget" not in sets or not nonmembers_from:
        return None, None
    members = per_sample_loss(out.logits["forget"], out.labels["forget"])
    nonmembers = np.concatenate(
        [per_sample_loss(out.logits[s], out.labels[s]) for s in nonmembers_from]
    )
    entry = Membership()
    try:
        entry.loss_mia = LossMia(
            **loss_mia(members, nonmembers, seed=seed),
            members="forget",
            nonmembers="+".join(nonmembers_from),
        )
    except DataError as exc:
        entry.loss_mia = LossMia(error=str(exc))
    if "retain" in sets and "heldout_retain" in sets:
        try:
            entry.mia_efficacy = MiaEfficacy(
                **mia_efficacy(
                    true_class_probability(out.logits["retain"], out.labels["retain"]),
                    true_class_probability(
                        out.logits["heldout_retain"], out.labels["heldout_retain"]
                    ),
                    true_class_probability(out.logits["forget"], out.labels["forget"]),
                    seed=seed,
                )
            )
        except DataError as exc:
            entry.mia_efficacy = MiaEfficacy(error=str(exc))
    histogram = LossHistogram(
        **loss_histogram(members, nonmembers),
        members_label="forget set (train)",
        nonmembers_label=" + ".join(nonmembers_from).replace("_", " "),
    )
    return entry, histogram


def reference_summary(
    accuracy: Mapping[str, Mapping[str, AccuracyTable]], mia: Mapping[str, Membership]
) -> ReferenceDistance:
    """Distance D and Avg. Gap of the candidate (and the original) to the retrained reference."""

    def point(name: str) -> dict[str, float] | None:
        acc = accuracy[name]
        if not all(s in acc for s in ("forget", "retain", "heldout_retain")):
            return None
        attacks = mia.get(name)
        efficacy = attacks.mia_efficacy if attacks is not None else None
        value = efficacy.value if efficacy is not None else None
        return {
            "ua": 1 - acc["forget"].value,
            "ra": acc["retain"].value,
            "ta": acc["heldout_retain"].value,
            "mia_efficacy": value if value is not None else float("nan"),
        }

    ref = point("reference")
    summary = ReferenceDistance()
    for name in ("candidate", "original"):
        mine = point(name) if name in accuracy else None
        if ref is None or mine is None:
            continue
        distance = m.distance_to_reference(mine["ra"], 1 - mine["ua"], ref["ra"], 1 - ref["ua"])
        gap = m.average_gap(mine, ref)
        key = "" if name == "candidate" else "original_"
        setattr(summary, f"{key}distance", round(distance, 4))
        setattr(summary, f"{key}avg_gap", round(gap, 3) if np.isfinite(gap) else None)
    return summary


def parity(candidate: LoadedModel, sets: Mapping[str, Any], onnx_path: str | Path) -> Parity:
    """The ONNX model against the candidate on (up to PARITY_SAMPLES) held-out images."""
    from revise.export.parity import check_parity
    from revise.models.pixel import normalize

    held = [sets[s].x for s in ("heldout_retain", "heldout_forget") if s in sets]
    samples = torch.cat(held)[:PARITY_SAMPLES] if held else sets["retain"].x[:PARITY_SAMPLES]
    found = check_parity(candidate.module, onnx_path, normalize(samples, candidate.card))
    return Parity(
        n=found.n,
        max_abs_diff=float(found.max_abs_diff),
        max_rel_diff=float(found.max_rel_diff),
        label_agreement=float(found.label_agreement),
        within_tolerance=bool(found.passed),
    )


def confusion(
    outputs: Mapping[str, Outputs], sets: Mapping[str, Any], k: int, class_names: list[str]
) -> dict[str, Confusion]:
    """Every model's confusion matrix on the held-out images (none without them)."""
    held = [s for s in ("heldout_forget", "heldout_retain") if s in sets]
    if not held:
        return {}
    matrices = {}
    for name, out in outputs.items():
        labels = np.concatenate([out.labels[s].numpy() for s in held])
        predicted = np.concatenate([out.predicted(s) for s in held])
        matrix = m.confusion_matrix(labels, predicted, k)
        matrices[name] = Confusion(set="heldout", labels=class_names, matrix=matrix.tolist())
    return matrices
