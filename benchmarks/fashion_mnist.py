#!/usr/bin/env python
"""The seed paper's Fashion-MNIST experiment, side by side with the standard baselines.

    python benchmarks/fashion_mnist.py --scale small   # subset, fewer epochs: < 20 min, 2 CPU cores
    python benchmarks/fashion_mnist.py --scale medium  # 5k images, class 0: ~20 min, 2 CPU cores
    python benchmarks/fashion_mnist.py --scale full    # the paper's protocol (meant for a GPU)
    python benchmarks/fashion_mnist.py --scale gpu     # full data, class 0, 1 seed: a GPU lease
    python benchmarks/fashion_mnist.py --scale tiny    # a smoke test (seconds)
    python benchmarks/fashion_mnist.py --render benchmarks/results/fashion_mnist-small.json

Data: the official Fashion-MNIST 60k/10k from Debian's `dataset-fashion-mnist` (read with
revise's IDX reader; nothing is downloaded), resized to 32x32. Model: the paper's AllCNN.
Original: SGD momentum 0.9, weight decay 1e-4, lr 0.01, batch 64, the scale's epochs, cosine
decay; Retrain: the same recipe on the retain set only, from the same initial weights.
Scenarios: forget class 0 (the paper's), and a random 10% of the training set (SalUn's).
Every method runs on the same original model for each seed; metrics follow
shared/reference/metrics.md as implemented in revise.validate (bootstrap intervals aside):
forget accuracy on the train forget set (FA) and on the test samples of the forgotten class
(test-forget), retain accuracy (RA), test accuracy (TA, test samples outside the forgotten class),
loss-MIA, MIA-Efficacy, the distance to Retrain sqrt(dRA^2 + dFA^2), Avg. Gap, and the unlearning
wall-clock as a fraction of Retrain's on the same machine.

Writes benchmarks/results/fashion_mnist-<scale>.json (every number of every run) and
docs/benchmarks/fashion_mnist-<scale>.md (mean +- spread over seeds, the paper's numbers beside
ours).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout where revise is not installed (a GPU box)
    sys.path.insert(0, str(ROOT))

from revise._io.atomic import write_json_atomic, write_text_atomic  # noqa: E402

if str(Path(__file__).parent) not in sys.path:  # the shared helpers beside this script
    sys.path.insert(0, str(Path(__file__).parent))
from _suite_common import FASHION_CLASSES, compare_to_retrain, idx_file  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = FASHION_CLASSES
# The paper's published numbers (Fashion-MNIST / AllCNN, forget class 0): accuracy on the test
# samples of the forgotten class and of the other classes.
PUBLISHED = {
    "retrain": {"test_forget": 0.0, "ta": 0.942},
    "boundary_shrink": {"test_forget": 0.058, "ta": 0.870},
    "psg gamma=1e-4 lam=0": {"test_forget": 0.084, "ta": 0.890},
    "psg gamma=0.1 lam=0": {"test_forget": 0.106, "ta": 0.914},
}


@dataclass(frozen=True)
class Scale:
    train_per_class: int | None  # None: every image
    test_per_class: int | None
    epochs: int  # original and retrain
    seeds: int
    psg_grid: tuple[tuple[float, float], ...]  # (gamma, lam) pairs of the paper's grid
    methods: tuple[str, ...]
    unlearn_epochs: float = 1.0  # multiplier on the methods' own epochs
    psg_lr: float = 1e-5  # the authors' learning rate at full scale
    merge_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)  # strengths per run
    scenarios: tuple[str, ...] = ("class0", "random10")
    # "psg ours" again at large batches, for the quality-at-speed target: (batch, lr, epochs)
    fast: tuple[tuple[int, float, int], ...] = ()


PAPER_GRID = tuple((g, lam) for g in (0.0, 1e-4, 0.1, 1.0) for lam in (0.0, 1e-4, 1e-3, 1e-2, 0.1))
BASELINES = ("finetune", "neggrad_plus", "random_label", "scrub", "salun", "l1_sparse")
SCALES = {
    "full": Scale(None, None, 15, 3, PAPER_GRID, BASELINES),
    # 1,000 training images, 6 epochs, the baselines' epochs halved: one seed takes 12 minutes
    # on 2 CPU cores (--seeds 2: 24 minutes, the committed table). With a sixtieth of the full
    # scale's steps per pass, the boundary methods get a 10x learning rate to do comparable work.
    "small": Scale(
        100,
        50,
        6,
        1,
        ((0.0, 0.0), (1e-4, 0.0), (0.1, 0.0), (1e-4, 1e-3)),
        BASELINES,
        unlearn_epochs=0.5,
        psg_lr=1e-4,
        merge_grid=(0.5, 1.0),
    ),
    # 5,000 training images, 8 epochs, class 0 only: where "psg ours" first gets within 0.02 of
    # Retrain on 2 CPU cores (about 20 minutes).
    "medium": Scale(
        500,
        200,
        8,
        1,
        ((1e-4, 0.0),),
        ("finetune",),
        unlearn_epochs=0.5,
        psg_lr=1e-4,
        merge_grid=(0.5, 1.0),
        scenarios=("class0",),
    ),
    # The paper's data and recipe, one seed, class 0, the methods that fit a 15-minute GPU lease
    # beside the other GPU benchmarks (benchmarks/gpu_session.sh), plus psg ours at large batches.
    # Their settings follow the medium scale at 6 steps per pass (what batch 1024 gives on the
    # full forget set): at lr 1e-4, 3/5/8 passes reach 0.037/0.024/0.021, while 2e-4 and 3e-4
    # lose retention (0.027, 0.044) - so more steps at 1e-4, not a larger learning rate.
    "gpu": Scale(
        None,
        None,
        15,
        1,
        ((1e-4, 0.0), (0.1, 0.0)),
        ("finetune",),
        merge_grid=(0.5, 1.0),
        scenarios=("class0",),
        fast=((1024, 1e-4, 5), (1024, 1e-4, 10), (256, 1e-4, 5)),
    ),
    "tiny": Scale(
        20,
        10,
        1,
        1,
        ((1e-4, 0.0),),
        ("finetune",),
        unlearn_epochs=0.1,
        psg_lr=1e-4,
        merge_grid=(1.0,),
    ),
}


# -- data -------------------------------------------------------------------------------------


def load_fashion_mnist(folder: Path, scale: Scale) -> dict[str, torch.Tensor]:
    """x in [0, 1], (N, 1, 32, 32); a class-balanced subset (the first k of each class)."""
    from revise.data._idx_format import read_idx

    def part(prefix: str, per_class: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        images = read_idx(idx_file(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(idx_file(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        keep = np.arange(len(labels))
        if per_class is not None:
            keep = np.sort(
                np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
            )
        x = torch.from_numpy(images[keep].astype(np.float32) / 255.0)[:, None]
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        return x.clamp(0, 1), torch.from_numpy(labels[keep])

    x_train, y_train = part("train", scale.train_per_class)
    x_test, y_test = part("t10k", scale.test_per_class)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


@dataclass
class Scenario:
    name: str
    forget: torch.Tensor  # bool over the training set
    test_forget: torch.Tensor  # bool over the test set: test samples of the forgotten group
    description: str


def scenarios(data: dict[str, torch.Tensor], seed: int) -> list[Scenario]:
    y_train, y_test = data["y_train"], data["y_test"]
    rng = torch.Generator().manual_seed(1000 + seed)
    random10 = torch.zeros(len(y_train), dtype=torch.bool)
    random10[torch.randperm(len(y_train), generator=rng)[: len(y_train) // 10]] = True
    return [
        Scenario("class0", y_train == 0, y_test == 0, "forget class 0 (T-shirt/top)"),
        Scenario(
            "random10",
            random10,
            torch.zeros(len(y_test), dtype=torch.bool),
            "forget a random 10% of the training set",
        ),
    ]


# -- runs -------------------------------------------------------------------------------------


@dataclass
class Run:
    method: str
    label: str
    seed: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


# Merged runs (revise.merge): the time counted is the inputs' unlearning plus the merge itself.
MERGES = (
    (
        "merge: boundary_shrink + finetune (strengths vs retrain)",
        ("boundary_shrink", "finetune"),
        {"search": True, "reference": True},
    ),
    (
        "merge: finetune backbone + boundary_shrink head (+ 1 epoch)",
        ("boundary_shrink", "finetune"),
        {"backbone": "finetune", "head": "boundary_shrink", "finetune_epochs": 1},
    ),
)


def merge(original, models, inputs, options, data, sc, retrained, device, seed):
    """One merged model of the named runs, with the data revise.merge scores and re-estimates
    BatchNorm on (the scenario's four sets; the reference is the retrained model)."""
    import pandas as pd

    from revise._run_record import RunRecord
    from revise.data.sets import DecodedSet, DecodedSets
    from revise.merge import RunInput, merge_runs
    from revise.models.io import weights_digest

    masks = {
        "forget": ("x_train", "y_train", sc.forget),
        "retain": ("x_train", "y_train", ~sc.forget),
        "heldout_forget": ("x_test", "y_test", sc.test_forget),
        "heldout_retain": ("x_test", "y_test", ~sc.test_forget),
    }
    sets = {}
    for name, (xs, ys, mask) in masks.items():
        y = data[ys][mask]
        rows = pd.DataFrame({"label": y.numpy().astype(str), "device": "fashion-mnist"})
        sets[name] = DecodedSet(data[xs][mask], y, rows)
    prepared = DecodedSets(sc.name, sets, {})
    digest = weights_digest(original)
    record = RunRecord(method="benchmark", base_model_digest=digest)  # only the base is read
    runs = [RunInput(name, models[name], card(), record) for name in inputs]
    options = dict(options)
    if options.pop("reference", False):
        options["reference"] = retrained
    return merge_runs(runs, base=original, data=prepared, device=device, seed=seed, **options).model


def card():
    from revise.models.card import ModelCard

    return ModelCard(
        architecture="allcnn",
        num_classes=10,
        in_channels=1,
        input_size=(32, 32),
        mean=(0.2860,),
        std=(0.3530,),
        class_names=CLASS_NAMES,
        # pixels / 255, as the benchmark scales them: the idx loader's rows then decode to the
        # same inputs (a per-image min-max would not)
        intensity="fixed",
        intensity_range=(0.0, 255.0),
        description="AllCNN on Fashion-MNIST 32x32 (seed paper benchmark)",
    )


def measure(
    net: torch.nn.Module, data: dict[str, torch.Tensor], sc: Scenario, device: str
) -> dict[str, float]:
    """Accuracies and both MIAs, as revise.validate defines them."""
    from revise.unlearn.evaluate import predict
    from revise.validate.mia import (
        loss_mia,
        mia_efficacy,
        per_sample_loss,
        true_class_probability,
    )

    c = card()
    train_logits = predict(net, c, data["x_train"], device=device)
    test_logits = predict(net, c, data["x_test"], device=device)
    y_train, y_test = data["y_train"], data["y_test"]
    right_train = train_logits.argmax(1) == y_train
    right_test = test_logits.argmax(1) == y_test
    forget, retain = sc.forget, ~sc.forget
    test_retain = ~sc.test_forget
    out = {
        "fa": float(right_train[forget].float().mean()),
        "ra": float(right_train[retain].float().mean()),
        "ta": float(right_test[test_retain].float().mean()),
    }
    if sc.test_forget.any():
        out["test_forget"] = float(right_test[sc.test_forget].float().mean())
    # loss-MIA: members = forget set; non-members = unseen samples of the same distribution
    # (the forgotten class's test samples; for random forgetting, the test set)
    nonmembers = sc.test_forget if sc.test_forget.any() else torch.ones_like(sc.test_forget)
    out["loss_mia"] = loss_mia(
        per_sample_loss(train_logits[forget], y_train[forget]),
        per_sample_loss(test_logits[nonmembers], y_test[nonmembers]),
    )["mean"]
    out["mia_efficacy"] = mia_efficacy(
        true_class_probability(train_logits[retain], y_train[retain]),
        true_class_probability(test_logits[test_retain], y_test[test_retain]),
        true_class_probability(train_logits[forget], y_train[forget]),
    )["value"]
    return {k: round(v, 4) for k, v in out.items()}


def method_configs(scale: Scale) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, label, overrides): Boundary Shrink, the psg grid, the baselines."""
    from revise.unlearn.api import make_config

    def epochs(method: str) -> int:
        return max(1, round(make_config(method).epochs * scale.unlearn_epochs))

    runs = [
        (
            "boundary_shrink",
            "boundary_shrink",
            {"lr": scale.psg_lr, "epochs": epochs("boundary_shrink")},
        )
    ]
    for gamma, lam in scale.psg_grid:
        label = f"psg gamma={gamma:g} lam={lam:g}"
        runs.append(
            (
                "psg",
                label,
                {"gamma": gamma, "lam": lam, "lr": scale.psg_lr, "epochs": epochs("psg")},
            )
        )
    # Ours: what `revise demo` adds for device forgetting - a retain term (phi) that keeps the
    # remaining classes, and BatchNorm statistics frozen so that forget batches do not shift
    # them - at the grid's learning rate (10x, as in the demo, collapsed AllCNN here).
    ours = {
        "gamma": 1e-4,
        "lam": 0.0,
        "phi": 2.0,
        "freeze_bn": True,
        "lr": scale.psg_lr,
        "epochs": epochs("psg"),
    }
    runs.append(("psg", "psg ours (phi=2, frozen BN)", ours))
    for batch, lr, n in scale.fast:
        label = f"psg ours, batch {batch} (lr {lr:g}, {n} epochs)"
        runs.append(("psg", label, {**ours, "batch_size": batch, "lr": lr, "epochs": n}))
    runs += [(m, m, {"epochs": epochs(m)}) for m in scale.methods]
    return runs


def recipe(scale: Scale):
    from revise.unlearn.train import TrainConfig

    return TrainConfig(epochs=scale.epochs, batch_size=64, lr=0.01)


def fresh_model(seed: int) -> torch.nn.Module:
    """The same initial weights for the original and every retrained model of a seed."""
    from revise.models.architectures import build

    torch.manual_seed(seed)
    return build(card())


def train_original(
    data: dict[str, torch.Tensor], scale: Scale, seed: int, device: str
) -> tuple[torch.nn.Module, float]:
    from revise.data.sets import DecodedSet
    from revise.unlearn.train import train_classifier

    everything = DecodedSet(data["x_train"], data["y_train"])
    t0 = time.perf_counter()
    net = train_classifier(
        fresh_model(seed), card(), everything, recipe(scale), device=device, seed=seed
    )
    return net, time.perf_counter() - t0


def save_models(
    folder: Path, data: dict[str, torch.Tensor], scale: Scale, original, device: str
) -> None:
    """The original and the class-0 retrained model (seed 0) as revise model folders."""
    from revise.data.sets import DecodedSet
    from revise.models.io import save_model
    from revise.unlearn.train import train_classifier

    keep = data["y_train"] != 0
    retain = DecodedSet(data["x_train"][keep], data["y_train"][keep])
    retrained = train_classifier(fresh_model(0), card(), retain, recipe(scale), device=device)
    save_model(original, card(), folder / "original")
    save_model(retrained, card(), folder / "retrained-class0")


def run_scenario(
    data: dict[str, torch.Tensor],
    sc: Scenario,
    scale: Scale,
    seed: int,
    device: str,
    say: Callable[[str], None],
    original: torch.nn.Module,
    original_s: float,
    on_run: Callable[[list[Run]], None] = lambda runs: None,
) -> list[Run]:
    """Every run of one scenario and seed; ``on_run(runs so far)`` after each (complete rows:
    the comparisons with Retrain are made as each run ends)."""
    from revise.data.sets import DecodedSet
    from revise.unlearn.api import unlearn
    from revise.unlearn.train import train_classifier

    c = card()
    forget = DecodedSet(data["x_train"][sc.forget], data["y_train"][sc.forget])
    retain = DecodedSet(data["x_train"][~sc.forget], data["y_train"][~sc.forget])
    t0 = time.perf_counter()
    retrained = train_classifier(
        fresh_model(seed), c, retain, recipe(scale), device=device, seed=seed
    )
    retrain_s = time.perf_counter() - t0
    runs = [
        Run(
            "original", "original", seed, round(original_s, 2), measure(original, data, sc, device)
        ),
        Run(
            "retrain",
            "retrain",
            seed,
            round(retrain_s, 2),
            measure(retrained, data, sc, device),
            dataclasses.asdict(recipe(scale)),
        ),
    ]
    say(f"  [{sc.name} seed {seed}] original {runs[0].metrics}  retrain {runs[1].metrics}")
    for run in runs:
        compare(run, runs[1], retrain_s)
    on_run(runs)

    def done(run: Run) -> None:
        compare(run, runs[1], retrain_s)
        runs.append(run)
        say(f"  [{sc.name} seed {seed}] {run.label:<28} {run.seconds:7.2f} s  {run.metrics}")
        on_run(runs)

    models: dict[str, torch.nn.Module] = {}
    for method, label, overrides in method_configs(scale):
        result = unlearn(
            original, c, forget, retain, method=method, config=overrides, device=device, seed=seed
        )
        seconds = result.record.wall_clock_s["unlearn"]
        run = Run(
            method,
            label,
            seed,
            seconds,
            measure(result.model, data, sc, device),
            result.record.hyperparameters,
        )
        models[label] = result.model
        done(run)
    for label, inputs, options in MERGES:
        if not all(name in models for name in inputs):
            continue
        t0 = time.perf_counter()
        options = {**options, "grid": scale.merge_grid} if options.get("search") else options
        merged = merge(original, models, inputs, options, data, sc, retrained, device, seed)
        seconds = time.perf_counter() - t0 + sum(r.seconds for r in runs if r.label in inputs)
        run = Run(
            "merge",
            label,
            seed,
            round(seconds, 2),
            measure(merged, data, sc, device),
            {"inputs": list(inputs), **{k: v for k, v in options.items() if k != "reference"}},
        )
        done(run)
    return runs


def compare(run: Run, retrain: Run, retrain_s: float) -> None:
    """Add the distance, Avg. Gap and time relative to Retrain to ``run.metrics``."""
    compare_to_retrain(run.metrics, retrain.metrics, run.seconds, retrain_s)


# -- report -----------------------------------------------------------------------------------

COLUMNS = (
    "fa",
    "test_forget",
    "ra",
    "ta",
    "loss_mia",
    "mia_efficacy",
    "distance",
    "avg_gap",
    "time_vs_retrain",
)
HEADERS = (
    "FA (train)",
    "test-forget",
    "RA",
    "TA",
    "loss-MIA",
    "MIA-Eff.",
    "distance",
    "Avg. Gap",
    "time / retrain",
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{scenario: {label: {column: mean, column_sd: spread}}} over seeds."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        table.setdefault(run["scenario"], {}).setdefault(run["label"], {"_values": []})
        table[run["scenario"]][run["label"]]["_values"].append(run["metrics"])
    for rows in table.values():
        for label, row in rows.items():
            values = row.pop("_values")
            for column in COLUMNS:
                xs = [v[column] for v in values if column in v]
                if xs:
                    row[column] = round(statistics.fmean(xs), 4)
                    row[f"{column}_sd"] = round(statistics.pstdev(xs), 4) if len(xs) > 1 else 0.0
            row["seeds"] = len(values)
            rows[label] = row
    return table


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Fashion-MNIST: the seed paper's experiment beside the standard baselines",
        "",
        f"Written by `{report.get('command', 'python benchmarks/fashion_mnist.py')}` on "
        f"{report['date']}: {report['machine']['device']}, {report['machine']['threads']} "
        f"threads, torch {report['machine']['torch']}, Python {report['machine']['python']}; "
        f"whole benchmark {report['seconds_total']:.0f} s. Data: {report['data']}. Seeds: "
        f"{report['seeds']} (mean, and +- the spread over seeds where there are several).",
        "",
        "Columns: FA = accuracy on the training forget set; test-forget = accuracy on the test "
        "samples of the forgotten class (class scenario); RA = retain accuracy; TA = test accuracy "
        "outside the forgotten class; loss-MIA (members: forget set, non-members: unseen samples "
        "of the same group; 0.5 = indistinguishable); MIA-Eff. = SalUn's MIA-Efficacy; distance = "
        "sqrt(dRA^2 + dFA^2) to Retrain; Avg. Gap in percent over UA, RA, TA, MIA-Eff.; time / "
        "retrain = the method's unlearning wall-clock over Retrain's training wall-clock.",
        "",
    ]
    for scenario, rows in report["summary"].items():
        lines += [f"## {report['scenarios'][scenario]}", ""]
        lines.append("| method | " + " | ".join(HEADERS) + " |")
        lines.append("|---|" + "---:|" * len(HEADERS))
        for label, row in sorted(rows.items(), key=lambda kv: _order(kv[0])):
            cells = []
            for column in COLUMNS:
                if column not in row:
                    cells.append("")
                    continue
                sd = row.get(f"{column}_sd", 0.0)
                digits = 2 if column == "avg_gap" else 3
                cells.append(f"{row[column]:.{digits}f}" + (f" +- {sd:.{digits}f}" if sd else ""))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        if scenario == "class0":
            lines += ["Published (the paper, full scale; test-forget / TA):", ""]
            lines.append("| run | test-forget | TA |")
            lines.append("|---|---:|---:|")
            for label, row in PUBLISHED.items():
                lines.append(f"| {label} | {row['test_forget']:.3f} | {row['ta']:.3f} |")
            lines.append("")
    lines += ["## What the numbers say (computed from the table above)", ""]
    lines += [f"* {line}" for line in findings(report["summary"], report["scenarios"])]
    return "\n".join(lines) + "\n"


def findings(summary: dict[str, Any], names: dict[str, str]) -> list[str]:
    """The questions the benchmark exists to answer, answered from the numbers."""
    out = []
    for scenario, rows in summary.items():
        methods = {k: v for k, v in rows.items() if k not in ("original", "retrain")}
        if not methods:
            continue
        best = min(methods, key=lambda k: methods[k]["distance"])
        b = methods[best]
        out.append(
            f"{names[scenario]}: closest to Retrain is {best} (distance {b['distance']:.3f}, "
            f"Avg. Gap {b['avg_gap']:.2f}) at {b['time_vs_retrain']:.3f} of Retrain's time."
        )
        fast = {k: v for k, v in methods.items() if v["time_vs_retrain"] <= 0.02}
        if fast:
            f = min(fast, key=lambda k: fast[k]["distance"])
            out.append(
                f"{names[scenario]}: within 2% of Retrain's time, the closest is {f} "
                f"(distance {fast[f]['distance']:.3f}; target <= 0.02)."
            )
        # the quality half of the target: distance <= 0.02 and loss-MIA within 0.05 of Retrain's
        mia = rows["retrain"]["loss_mia"]
        close = {
            k: v
            for k, v in methods.items()
            if v["distance"] <= 0.02 and abs(v["loss_mia"] - mia) <= 0.05
        }
        if close:
            quickest = min(close, key=lambda k: close[k]["time_vs_retrain"])
            q = close[quickest]
            verdict = "meets" if q["time_vs_retrain"] <= 0.02 else "misses"
            out.append(
                f"{names[scenario]}: {len(close)} run(s) within distance 0.02 of Retrain with "
                f"loss-MIA within 0.05 of its {mia:.3f}; the quickest, {quickest} (distance "
                f"{q['distance']:.3f}, loss-MIA {q['loss_mia']:.3f}), takes "
                f"{q['time_vs_retrain']:.3f} of Retrain's time: it {verdict} the <= 0.02 target."
            )
        bs = methods.get("boundary_shrink")
        if bs is not None:
            deltas = [
                f"{k.removeprefix('psg ')}: RA {v['ra'] - bs['ra']:+.3f}, "
                f"FA {v['fa'] - bs['fa']:+.3f}"
                for k, v in methods.items()
                if k.startswith("psg") and k != "psg gamma=0 lam=0"
            ]
            same = (
                " (= psg gamma=0 lam=0, identical above as it must be)"
                if "psg gamma=0 lam=0" in methods
                else ""
            )
            out.append(
                f"{names[scenario]}: psg against Boundary Shrink{same}: "
                + "; ".join(deltas)
                + ". The paper's direction is more "
                "retention (RA up) at a cost in forgetting (FA up) as gamma grows (paper, "
                "gamma=0.1 vs Boundary Shrink: TA +0.044, test-forget +0.048)."
            )
    return out


def _order(label: str) -> tuple[int, str]:
    first = {"original": 0, "retrain": 1, "boundary_shrink": 2}
    return (first.get(label, 3 if label.startswith("psg") else 4), label)


def markdown_path(scale: str) -> Path:
    return ROOT / "docs" / "benchmarks" / f"fashion_mnist-{scale}.md"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seeds", type=int, help="Override the scale's number of seeds.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=DATA, help="Folder of the IDX files.")
    parser.add_argument("--out", type=Path, help="JSON (default benchmarks/results/...).")
    parser.add_argument("--markdown", type=Path, help="Markdown (default docs/benchmarks/...).")
    parser.add_argument(
        "--save-models",
        type=Path,
        help="Also save seed 0's original and class-0 retrained models here (revise model "
        "folders: examples/fashion_mnist_recipe.yaml revises them).",
    )
    parser.add_argument(
        "--render", type=Path, help="Only rewrite the Markdown from this results JSON."
    )
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        md = args.markdown or markdown_path(report["scale"])
        write_text_atomic(md, markdown(report))
        return report
    scale = SCALES[args.scale]
    seeds = args.seeds or scale.seeds
    out = args.out or ROOT / f"benchmarks/results/fashion_mnist-{args.scale}.json"
    md = args.markdown or markdown_path(args.scale)
    from revise.models.pixel import resolve_device

    device = str(resolve_device(args.device))
    t_start = time.perf_counter()
    data = load_fashion_mnist(args.data, scale)
    print(f"Fashion-MNIST {args.scale}: train {len(data['y_train'])}, test {len(data['y_test'])}")
    runs: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    command = "python benchmarks/fashion_mnist.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )

    def current_report() -> dict[str, Any]:
        return {
            "benchmark": "fashion_mnist",
            "command": command,
            "scale": args.scale,
            "date": dt.date.today().isoformat(),
            "data": f"Fashion-MNIST (Debian dataset-fashion-mnist), train "
            f"{len(data['y_train'])}, test {len(data['y_test'])}, 32x32",
            "seeds": seeds,
            "scale_settings": dataclasses.asdict(scale),
            "scenarios": names,
            "summary": summarise(runs),
            "runs": runs,
            "machine": {
                "device": device,
                "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "seconds_total": round(time.perf_counter() - t_start, 1),
        }

    for seed in range(seeds):
        original, original_s = train_original(data, scale, seed, device)
        if args.save_models and seed == 0:
            save_models(args.save_models, data, scale, original, device)
        for sc in scenarios(data, seed):
            if sc.name not in scale.scenarios:
                continue
            names[sc.name] = sc.description
            before = len(runs)

            def save(scenario_runs: list[Run], sc: Scenario = sc, before: int = before) -> None:
                # written after every run: a benchmark cut short (a GPU lease) keeps its numbers
                runs[before:] = [
                    {"scenario": sc.name, **dataclasses.asdict(run)} for run in scenario_runs
                ]
                write_json_atomic(out, current_report())

            run_scenario(data, sc, scale, seed, device, print, original, original_s, save)
    final = current_report()
    write_json_atomic(out, final)
    write_text_atomic(md, markdown(final))
    print(markdown(final))
    return final


if __name__ == "__main__":
    main()
