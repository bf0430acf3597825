"""Validate a revised model against acceptance criteria: every metric of the report, the gate
verdicts, and the report files.

    result = validate(models, data, criteria)   # models: candidate, original[, reference]
    write_report(result, out)                   # revision_report.json + report.html
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from revise._io import REPORT_HTML, REPORT_JSON
from revise.data.select import describe
from revise.errors import DataError, UsageError
from revise.evaluate import predict
from revise.models.card import ModelCard
from revise.models.io import LoadedModel
from revise.pipeline import PreparedData
from revise.validate import metrics as m
from revise.validate.criteria import METRICS, Criteria, Gate
from revise.validate.gate_checks import check_sets
from revise.validate.mia import (
    MIN_PER_GROUP,
    loss_histogram,
    loss_mia,
    mia_efficacy,
    per_sample_loss,
    true_class_probability,
)
from revise.validate.verdicts import Verdict, judge, where_mask

log = logging.getLogger(__name__)

SCHEMA = "revise.validation_report/1"
MODEL_ORDER = ("original", "candidate", "reference")
SET_DESCRIPTIONS = {
    "forget": "training images inside the forget selection (the model saw them)",
    "retain": "training images outside the forget selection",
    "heldout_forget": "held-out images inside the forget selection (never trained on)",
    "heldout_retain": "held-out images outside the forget selection (the test set)",
}
PARITY_SAMPLES = 1024


@dataclass
class ValidationResult:
    report: dict[str, Any]
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]


@dataclass
class _Outputs:
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


def validate(
    models: Mapping[str, LoadedModel | nn.Module],
    data: PreparedData,
    criteria: Criteria,
    *,
    card: ModelCard | None = None,
    onnx_path: str | Path | None = None,
    by: Sequence[str] = ("device", "label"),
    device: str = "auto",
    seed: int = 0,
    inputs: Mapping[str, Any] | None = None,
    reuse: MutableMapping[Any, Any] | None = None,
) -> ValidationResult:
    """Measure ``models["candidate"]`` (and ``original``, optional ``reference``) on the four
    sets of ``data`` and judge every gate of ``criteria``.

    Models are loaded models (:func:`revise.models.io.load_model`) or modules with ``card``.
    ``inputs`` are descriptions of the data sources for the report (paths, digests). A
    candidate that is a bundle has the digest of each of its files recorded (``inputs.bundle``,
    see :func:`revise.export.bundle.validated_files`): `revise sign` checks them.
    ``reuse``: a dict the caller keeps across calls that judge many candidates against the same
    baselines on the same data (a merge search); the original's and the reference's predictions
    and membership attacks are then computed once (keyed by model and data object)."""
    t_start = time.perf_counter()
    models = {name: _loaded(name, model, card) for name, model in models.items()}
    candidate = models["candidate"]
    card = candidate.card
    bundle = _bundle_record(candidate)  # before measuring: the files the verdict is about
    if onnx_path is not None:
        check_onnx_matches(candidate, onnx_path)
    for name, loaded in models.items():
        if loaded.card.num_classes != card.num_classes:
            raise DataError(
                f"the {name} model has {loaded.card.num_classes} classes, the candidate "
                f"{card.num_classes}",
                hint="validate models of the same task",
            )
    _check_decoded(criteria, data, class_names=card.class_names)
    sets = {name: s for name, s in data.sets.items() if len(s)}
    t0 = time.perf_counter()
    measured = {
        name: _measured(name, loaded, sets, data, seed, device, reuse)
        for name, loaded in models.items()
    }
    outputs = {name: got[0] for name, got in measured.items()}
    mia = {name: got[1] for name, got in measured.items() if got[1] is not None}
    histograms = {name: got[2] for name, got in measured.items() if got[2] is not None}
    t_measure = time.perf_counter() - t0
    class_names = list(card.class_names)
    accuracy = {name: _accuracy_tables(out, sets, by, class_names) for name, out in outputs.items()}
    agreement = {}
    if "original" in outputs:
        for s in sets:
            same = outputs["candidate"].predicted(s) == outputs["original"].predicted(s)
            agreement[s] = m.proportion(same).as_dict()
    reference = _reference_summary(accuracy, mia) if "reference" in outputs else None
    parity = _parity(candidate, sets, onnx_path) if onnx_path else None
    context = _GateContext(outputs, sets, class_names, mia, reference, parity)
    verdicts = [v for gate in criteria.gates for v in context.verdicts(gate)]
    passed = sum(v.passed for v in verdicts)
    report = {
        "schema": SCHEMA,
        "verdict": "pass" if passed == len(verdicts) else "fail",
        "summary": f"{passed} of {len(verdicts)} gates passed",
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # patient values hidden: the report travels with the bundle
        "forget_selection": describe(data.forget_selection) if data.forget_selection else None,
        "class_names": class_names,
        "models": {
            name: {"path": str(loaded.path), "format": loaded.format, "sha256": _digest(loaded)}
            for name, loaded in sorted(models.items(), key=lambda kv: MODEL_ORDER.index(kv[0]))
        },
        "inputs": {
            **dict(inputs or {}),
            "criteria": {"path": criteria.source, "sha256": criteria.sha256},
            "onnx": _onnx_input(onnx_path),
            **({"bundle": bundle} if bundle else {}),
        },
        "sets": {
            name: {
                "n": len(data.sets[name]),
                "digest": data.digests.get(name, ""),
                "description": SET_DESCRIPTIONS[name],
            }
            for name in data.sets
        },
        "gates": [v.as_dict() for v in verdicts],
        "accuracy": accuracy,
        "agreement": agreement,
        "confusion": _confusion(outputs, sets, card.num_classes, class_names),
        "mia": mia,
        "loss_histograms": histograms,
        "reference": reference,
        "parity": parity,
        "definitions": {name: spec.definition for name, spec in METRICS.items()},
        "software": _software(),
        "timings_s": {
            "decode": round(data.seconds, 3),
            "inference_and_mia": round(t_measure, 3),
            "total": round(data.seconds + time.perf_counter() - t_start, 3),
        },
        "decode_failures": len(data.failures),
        "decode_left_out": data.left_out_record(),
    }
    return ValidationResult(report, verdicts)


def _check_decoded(criteria: Criteria, data: PreparedData, *, class_names: Sequence[str]) -> None:
    """The gates' demands on the sets again, on what decoded: unreadable images can empty a set
    the manifest had filled."""
    try:
        check_sets(criteria, {n: s.rows for n, s in data.sets.items()}, class_names=class_names)
    except UsageError as exc:
        paths = list(dict.fromkeys(f.path for f in data.failures))  # one file, many frames
        examples = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        raise DataError(
            f"{exc} after decoding: {len(data.failures)} image(s) could not be read"
            + (f" (e.g. {examples})" if examples else ""),
            hint="fix or remove the unreadable images, or relax the gate",
        ) from None


def write_report(result: ValidationResult, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``out/revision_report.json`` and ``out/report.html``, the folder atomically."""
    from revise._io import atomic_dir, write_json_atomic
    from revise.validate.report_html import write_html

    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json_atomic(tmp / REPORT_JSON, result.report)
        write_html(result.report, tmp / REPORT_HTML)
    return out


def _loaded(name: str, model: LoadedModel | nn.Module, card: ModelCard | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if card is None:
        raise UsageError(f"the {name} model is a bare module: pass its card")
    return LoadedModel(model.eval(), card, Path(f"<{name} in memory>"), "module")


# -- measurements ------------------------------------------------------------------------------


def _accuracy_tables(
    out: _Outputs, sets: Mapping[str, Any], by: Sequence[str], class_names: list[str]
) -> dict[str, Any]:
    tables = {}
    for s, subset in sets.items():
        hits = out.correct(s)
        groups = {
            column: {
                group: est.as_dict()
                for group, est in m.by_group(hits, subset.rows, column, class_names).items()
            }
            for column in by
            if column in subset.rows.columns
        }
        tables[s] = {**m.proportion(hits).as_dict(), "by": groups}
    return tables


def _nonmember_set(sets: Mapping[str, Any]) -> list[str]:
    """Held-out images of the forgotten group are the matching non-members (same distribution
    as the forget set); without enough of them, every held-out image."""
    if "heldout_forget" in sets and len(sets["heldout_forget"]) >= MIN_PER_GROUP:
        return ["heldout_forget"]
    return [s for s in ("heldout_forget", "heldout_retain") if s in sets]


_Measured = tuple[_Outputs, dict[str, Any] | None, dict[str, Any] | None]


def _measured(
    name: str,
    loaded: LoadedModel,
    sets: Mapping[str, Any],
    data: PreparedData,
    seed: int,
    device: str,
    reuse: MutableMapping[Any, Any] | None,
) -> _Measured:
    """One model's outputs on every set, its membership attacks and loss histogram (None where
    the data allows none); baselines come from ``reuse`` when they were measured before."""
    key = (name, id(loaded.module), id(data), seed)
    cacheable = reuse is not None and name != "candidate"
    if cacheable and key in reuse:
        return reuse[key]
    out = _Outputs(
        {s: predict(loaded.module, loaded.card, sets[s].data.x, device=device) for s in sets},
        {s: sets[s].data.y for s in sets},
    )
    got = (out, *_membership(out, sets, seed))
    if cacheable:
        reuse[key] = got
    return got


def _membership(
    out: _Outputs, sets: Mapping[str, Any], seed: int
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """loss-MIA, MIA-Efficacy and the loss histogram of one model (what the data allows)."""
    nonmember_sets = _nonmember_set(sets)
    if "forget" not in sets or not nonmember_sets:
        return None, None
    members = per_sample_loss(out.logits["forget"], out.labels["forget"])
    nonmembers = np.concatenate(
        [per_sample_loss(out.logits[s], out.labels[s]) for s in nonmember_sets]
    )
    entry: dict[str, Any] = {}
    try:
        entry["loss_mia"] = {
            **loss_mia(members, nonmembers, seed=seed),
            "members": "forget",
            "nonmembers": "+".join(nonmember_sets),
        }
    except DataError as exc:
        entry["loss_mia"] = {"error": str(exc)}
    if "retain" in sets and "heldout_retain" in sets:
        try:
            entry["mia_efficacy"] = mia_efficacy(
                true_class_probability(out.logits["retain"], out.labels["retain"]),
                true_class_probability(out.logits["heldout_retain"], out.labels["heldout_retain"]),
                true_class_probability(out.logits["forget"], out.labels["forget"]),
                seed=seed,
            )
        except DataError as exc:
            entry["mia_efficacy"] = {"error": str(exc)}
    histogram = {
        **loss_histogram(members, nonmembers),
        "members_label": "forget set (train)",
        "nonmembers_label": " + ".join(nonmember_sets).replace("_", " "),
    }
    return entry, histogram


def _reference_summary(accuracy: Mapping[str, Any], mia: Mapping[str, Any]) -> dict[str, Any]:
    """Distance D and Avg. Gap of the candidate (and the original) to the retrained reference."""

    def point(name: str) -> dict[str, float] | None:
        acc = accuracy[name]
        if not all(s in acc for s in ("forget", "retain", "heldout_retain")):
            return None
        efficacy = mia.get(name, {}).get("mia_efficacy", {}).get("value")
        return {
            "ua": 1 - acc["forget"]["value"],
            "ra": acc["retain"]["value"],
            "ta": acc["heldout_retain"]["value"],
            "mia_efficacy": efficacy if efficacy is not None else float("nan"),
        }

    ref = point("reference")
    summary: dict[str, Any] = {}
    for name in ("candidate", "original"):
        mine = point(name) if name in accuracy else None
        if ref is None or mine is None:
            continue
        distance = m.distance_to_reference(mine["ra"], 1 - mine["ua"], ref["ra"], 1 - ref["ua"])
        gap = m.average_gap(mine, ref)
        key = "" if name == "candidate" else "original_"
        summary[f"{key}distance"] = round(distance, 4)
        summary[f"{key}avg_gap"] = round(gap, 3) if np.isfinite(gap) else None
    return summary


def _bundle_record(candidate: LoadedModel) -> dict[str, Any] | None:
    """The digests of the candidate bundle's files (None: the candidate is not a bundle). A
    bundle is validated with the card it ships: the verdict is about its card.json."""
    from revise.export.bundle import is_bundle, validation_record

    path = Path(candidate.path)
    if not (path.is_dir() and is_bundle(path)):
        return None
    card_file = path / "card.json"
    shipped = ModelCard.load(card_file) if card_file.is_file() else None
    if shipped is None or _how_fed(shipped) != _how_fed(candidate.card):
        what = "another card than its card.json" if shipped else "a card it does not ship"
        raise UsageError(
            f"{path} is validated with {what}: the verdict would not be about the bundle shipped",
            hint="drop {card} and {arch} (a bundle is validated with its own card.json)",
            options=("card", "arch"),
        )
    return validation_record(path)


def _how_fed(card: ModelCard) -> ModelCard:
    """The card without where its weights came from (a --card given for the deployed model
    says nothing of that, and need not)."""
    return replace(card, source_format="", source_sha256="")


def check_onnx_matches(candidate: LoadedModel, onnx_path: str | Path) -> None:
    """Refuse an ONNX file that revise exported from other weights than the candidate's (its
    parity would only fail, without saying why). A file exported elsewhere carries no digest:
    parity alone judges it."""
    from revise.export.onnx import read_metadata

    exported_from = read_metadata(onnx_path).get("revise.weights_sha256")
    mine = _digest(candidate) if exported_from else ""
    if exported_from and exported_from != mine:
        raise UsageError(
            f"{onnx_path} was exported from other weights (sha256 {exported_from[:12]}...) than "
            f"the model validated, {candidate.path} ({mine[:12]}...)",
            hint="pass the model.onnx of this model's bundle (revise export)",
        )


def _parity(candidate: LoadedModel, sets: Mapping[str, Any], onnx_path: str | Path) -> dict:
    from revise.export.onnx import check_parity
    from revise.models.pixel import normalize

    held = [sets[s].data.x for s in ("heldout_retain", "heldout_forget") if s in sets]
    samples = torch.cat(held)[:PARITY_SAMPLES] if held else sets["retain"].data.x[:PARITY_SAMPLES]
    parity = check_parity(candidate.module, onnx_path, normalize(samples, candidate.card))
    return {
        "n": parity.n,
        "max_abs_diff": float(parity.max_abs_diff),
        "max_rel_diff": float(parity.max_rel_diff),
        "label_agreement": float(parity.label_agreement),
        "within_tolerance": bool(parity.passed),
    }


def _confusion(
    outputs: Mapping[str, _Outputs], sets: Mapping[str, Any], k: int, class_names: list[str]
) -> dict[str, Any]:
    held = [s for s in ("heldout_forget", "heldout_retain") if s in sets]
    if not held:
        return {}
    confusion = {}
    for name, out in outputs.items():
        labels = np.concatenate([out.labels[s].numpy() for s in held])
        predicted = np.concatenate([out.predicted(s) for s in held])
        matrix = m.confusion_matrix(labels, predicted, k)
        confusion[name] = {"set": "heldout", "labels": class_names, "matrix": matrix.tolist()}
    return confusion


# -- gates -------------------------------------------------------------------------------------


@dataclass
class _GateContext:
    outputs: Mapping[str, _Outputs]
    sets: Mapping[str, Any]
    class_names: list[str]
    mia: Mapping[str, Any]
    reference: Mapping[str, Any] | None
    parity: Mapping[str, Any] | None

    def verdicts(self, gate: Gate) -> list[Verdict]:
        if METRICS[gate.metric].per_set:
            return self._per_set(gate)
        estimate, baselines, unit = self._whole_run(gate)
        return [judge(gate, estimate, baselines, unit=unit)]

    def _per_set(self, gate: Gate) -> list[Verdict]:
        rows: pd.DataFrame = self.sets[gate.set].rows
        base = where_mask(gate, rows, self.class_names).to_numpy()
        shown = {c: m.group_name(c, v, self.class_names) for c, v in gate.where}
        groups: list[tuple[dict[str, str] | None, np.ndarray]] = [(shown or None, base)]
        if gate.per:
            values = m.group_values(rows, gate.per)
            groups = [
                (
                    {**shown, gate.per: m.group_name(gate.per, v, self.class_names)},
                    base & (values == v),
                )
                for v in sorted(set(values[base]))
            ]
        verdicts = []
        for group, mask in groups:
            estimate, baselines = self._measure(gate, mask)
            verdicts.append(judge(gate, estimate, baselines, group=group))
        return verdicts

    def _measure(self, gate: Gate, mask: np.ndarray) -> tuple[m.Estimate, dict[str, float]]:
        s = gate.set
        candidate = self.outputs["candidate"]
        original = self.outputs.get("original")
        if gate.metric == "accuracy":
            baselines = {
                name: m.proportion(out.correct(s)[mask]).value
                for name, out in self.outputs.items()
                if name != "candidate"
            }
            return m.proportion(candidate.correct(s)[mask]), baselines
        if original is None:
            raise DataError(f"{gate.metric} compares with the original model: pass --original")
        if gate.metric == "accuracy_change":
            return m.paired_change(candidate.correct(s)[mask], original.correct(s)[mask]), {}
        same = candidate.predicted(s)[mask] == original.predicted(s)[mask]
        return m.proportion(same), {}

    def _whole_run(self, gate: Gate) -> tuple[m.Estimate, dict[str, float], str]:
        metric = gate.metric
        if metric in ("loss_mia", "mia_efficacy"):
            key = "mean" if metric == "loss_mia" else "value"  # loss-MIA: mean over splits
            values = {
                name: entry[metric][key]
                for name, entry in self.mia.items()
                if key in entry.get(metric, {})
            }
            if "candidate" not in values:
                why = self.mia.get("candidate", {}).get(metric, {}).get("error", "no forget set")
                raise DataError(f"gate {gate.name!r}: {metric} cannot be measured: {why}")
            entry = self.mia["candidate"][metric]
            n = 2 * entry["n_per_group"] if metric == "loss_mia" else len(self.sets["forget"])
            unit = "members + non-members" if metric == "loss_mia" else "forget-set images"
            return m.Estimate(n, values.pop("candidate"), None), values, unit
        if metric in ("distance_to_reference", "avg_gap"):
            key = "distance" if metric == "distance_to_reference" else "avg_gap"
            value = (self.reference or {}).get(key)
            if value is None:
                raise DataError(
                    f"gate {gate.name!r}: {metric} needs forget, retain and held-out retained "
                    "images and the reference's MIA-Efficacy"
                )
            n = len(self.sets["forget"]) + len(self.sets["retain"])
            return m.Estimate(n, float(value), None), {}, "forget + retain images"
        assert self.parity is not None  # check_inputs rejected parity gates without --onnx
        key = metric.removeprefix("parity_")
        return m.Estimate(self.parity["n"], self.parity[key], None), {}, "held-out images"


# -- report bits -------------------------------------------------------------------------------


def _digest(loaded: LoadedModel) -> str:
    """The weights' digest, whatever the file format: the same value a run record gives as
    ``base_model_digest``, so a report and the run it validates can be matched."""
    from revise.models.io import weights_digest

    return weights_digest(loaded.module)


def _onnx_input(onnx_path: str | Path | None) -> dict[str, str] | None:
    if onnx_path is None:
        return None
    from revise._io import sha256_file
    from revise.export.onnx import graph_digest

    return {
        "path": str(onnx_path),
        "sha256": sha256_file(onnx_path),
        "graph_sha256": graph_digest(onnx_path),
    }


def _software() -> dict[str, str]:
    import sklearn

    import revise

    versions = {
        "revise": revise.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
    }
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions
