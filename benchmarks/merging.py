#!/usr/bin/env python
"""Merging two unlearning runs on the digits: does the merge beat its inputs?

    python benchmarks/merging.py [--device cpu] [--seed 0] [--out PATH] [--markdown PATH]

On scikit-learn's 8x8 digits (first 1,200 images train, the rest held out; forget the digit 0)
it trains the deployed small_cnn and a retrained reference (same initial weights, retain set
only), builds two psg runs of the deployed model - good forgetting (soft targets, forget loss
only) and good retention (top-k targets, retain term phi=1) - and merges them:

* composition: backbone of the retention run + head of the forgetting run, then the paper's
  short retain fine-tune (Adam lr 1e-4, 5 epochs), and the same without the fine-tune;
* task-vector strengths searched on the grid 0, 0.25, ..., 1.25 per run, scored by the
  distance to the retrained reference, and by the deployment objective (held-out sets, no
  reference), BatchNorm statistics re-estimated on the retain set.

It writes the accuracies (forget, retain, held-out forget, held-out retain) and the distance
to the retrained reference, sqrt(dRA^2 + dFA^2) on the training-side sets, for every model as
JSON (``benchmarks/results/merging-cpu.json``) and a Markdown table
(``docs/benchmarks/merging.md``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
# The trade-off method.md describes: soft targets at a high learning rate forget the class and
# lose retention; top-k targets with a retain term at a low one keep retention and forget little.
# (With lr 1e-2 and 5 epochs for both, both runs already sit within 0.01 of the retrained
# model on these digits, leaving a merge nothing to gain.)
FORGETTING = {"lr": 5e-2, "epochs": 5, "eps": 0.3, "eta": 0.3, "target": "soft"}
RETENTION = {"lr": 1e-3, "epochs": 2, "eps": 0.3, "eta": 0.3, "target": "topk", "phi": 1.0}
SETS = ("forget", "retain", "heldout_forget", "heldout_retain")


def digits_data():
    from sklearn.datasets import load_digits

    from revise.data.sets import DecodedSet, DecodedSets
    from revise.models.card import ModelCard

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target, dtype=torch.long)
    train = torch.arange(len(y)) < 1200
    masks = {
        "forget": train & (y == 0),
        "retain": train & (y != 0),
        "heldout_forget": ~train & (y == 0),
        "heldout_retain": ~train & (y != 0),
    }
    sets = {}
    for name, mask in masks.items():
        rows = pd.DataFrame({"label": y[mask].numpy().astype(str), "device": "digits"})
        sets[name] = DecodedSet(x[mask], y[mask], rows)
    card = ModelCard("small_cnn", 10, 1, (8, 8), mean=(0.3,), std=(0.4,))
    return card, DecodedSets("label == 0", sets, {})


def accuracies(metrics) -> dict[str, float]:
    return {name: metrics[name]["accuracy"] for name in SETS}


def main(argv: list[str] | None = None) -> dict:
    from revise.data.sets import DecodedSet
    from revise.merge import RunInput, merge_runs
    from revise.models.architectures import build
    from revise.models.io import weights_digest
    from revise.unlearn.api import unlearn
    from revise.unlearn.evaluate import evaluate
    from revise.unlearn.sweep_ranking import distance
    from revise.unlearn.train import TrainConfig, train_classifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/merging-cpu.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs/benchmarks/merging.md")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    card, data = digits_data()
    sets = data.sets
    forget, retain = sets["forget"], sets["retain"]
    everything = DecodedSet(torch.cat([forget.x, retain.x]), torch.cat([forget.y, retain.y]))
    recipe = TrainConfig(epochs=15, lr=0.05)
    seconds: dict[str, float] = {}

    def fresh():
        torch.manual_seed(args.seed)
        return build(card)

    t0 = time.perf_counter()
    original = train_classifier(fresh(), card, everything, recipe, device=args.device)
    retrained = train_classifier(fresh(), card, retain, recipe, device=args.device)
    seconds["train"] = round(time.perf_counter() - t0, 2)
    digest = weights_digest(original)
    runs = []
    for name, config in (("forgetting", FORGETTING), ("retention", RETENTION)):
        t0 = time.perf_counter()
        result = unlearn(
            original, card, forget, retain, config=config, device=args.device, seed=args.seed
        )
        seconds[f"unlearn_{name}"] = round(time.perf_counter() - t0, 2)
        record = result.record.model_copy(update={"base_model_digest": digest})
        runs.append(RunInput(name, result.model, card, record))

    models = {"original": original, "retrained": retrained}
    models.update({run.name: run.model for run in runs})
    recipes: dict[str, dict] = {}
    merges = {
        "compose + fine-tune": {
            "backbone": "retention",
            "head": "forgetting",
            "finetune_epochs": 5,
        },
        "compose (no fine-tune)": {"backbone": "retention", "head": "forgetting"},
        "strengths searched (distance)": {"search": True, "base": original, "reference": retrained},
        "strengths searched (objective)": {"search": True, "base": original},
    }
    for label, options in merges.items():
        t0 = time.perf_counter()
        merged = merge_runs(runs, data=data, device=args.device, seed=args.seed, **options)
        seconds[label] = round(time.perf_counter() - t0, 2)
        models[label] = merged.model
        info = merged.record.merge or {}
        recipes[label] = {
            k: info[k] for k in ("mode", "rules", "strengths", "finetune") if k in info
        }
        if "search" in info:
            recipes[label]["search"] = {
                k: info["search"][k] for k in ("criterion", "score", "grid")
            }

    reference = accuracies(evaluate(retrained, card, sets, by=(), device=args.device))
    rows = {}
    for label, net in models.items():
        metrics = evaluate(net, card, sets, by=(), device=args.device)
        rows[label] = {
            **accuracies(metrics),
            "distance_to_retrained": round(distance(metrics, reference), 4),
        }
    report = {
        "benchmark": "merging",
        "data": "sklearn digits 8x8, train 0:1200, forget digit 0",
        "counts": data.counts(),
        "runs": {"forgetting": FORGETTING, "retention": RETENTION},
        "models": rows,
        "recipes": recipes,
        "seconds": {**seconds, "total": round(time.perf_counter() - t_start, 2)},
        "machine": {
            "device": args.device,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown(report))
    print(markdown_table(rows))
    return report


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    lines = [
        "| model | forget acc | retain acc | held-out forget acc | held-out retain acc "
        "| distance to retrained |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows.items():
        cells = [r[name] for name in SETS] + [r["distance_to_retrained"]]
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
    strengths = {
        label: ", ".join(f"{k}={v:g}" for k, v in recipe["strengths"].items())
        for label, recipe in report["recipes"].items()
        if "strengths" in recipe
    }
    m = report["machine"]
    text = [
        "# Merging unlearning runs (digits, CPU)",
        "",
        "Written by `python benchmarks/merging.py`. "
        + report["data"]
        + "; counts "
        + ", ".join(f"{k} {v}" for k, v in report["counts"].items())
        + ".",
        "Inputs: two psg runs of the deployed model, `forgetting` (soft targets, forget loss "
        "only) and `retention` (top-k targets, retain term phi=1). Distance to retrained = "
        "sqrt(dRA^2 + dFA^2) on the training-side forget/retain sets (lower is better).",
        "",
        markdown_table(report["models"]),
        "Searched strengths: "
        + "; ".join(f"{label}: {s}" for label, s in strengths.items())
        + ". Grid 0, 0.25, ..., 1.25 per run; BatchNorm statistics re-estimated on the retain "
        "set for every candidate and for the result. The composition's fine-tune is the "
        "paper's: Adam lr 1e-4, 5 epochs on the retain set.",
        "",
        f"Machine: {m['device']}, {m['threads']} threads, torch {m['torch']}, Python "
        f"{m['python']}; whole benchmark {report['seconds']['total']} s.",
        "",
    ]
    return "\n".join(text)


if __name__ == "__main__":
    main()
