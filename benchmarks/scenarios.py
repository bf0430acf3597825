#!/usr/bin/env python
"""The scenario suite: every unlearning method and the automatic revision against Retrain.

Four kinds of forgetting on three offline datasets; every method at its defaults and the
automatic revision, each against its retrained reference.

    python benchmarks/scenarios.py --scale full --threads 2   # the committed table (< 30 min)
    python benchmarks/scenarios.py --scale tiny               # the CI smoke run (about a minute)
    python benchmarks/scenarios.py --scale tiny --datasets digits --scenarios class \\
        --methods finetune,auto
    python benchmarks/scenarios.py --render benchmarks/results/scenarios-full.json

Datasets (benchmarks/_suite_data.py): digits (the demo site's two devices, 16x16), fashion
(Fashion-MNIST with a synthetic second device, 28x28), lesions (procedural RGB 48x48). Scenarios
(benchmarks/_suite_scenarios.py): class, device, patients, random. Per dataset the original is
trained on every training row with revise's recipe (revise.unlearn.train.train_classifier); per
scenario the retrained reference is trained on the retain rows with the same recipe and initial
weights, and timed ("retrain's time"). Then every registered method runs at its defaults, and the
automatic revision (revise.unlearn.auto.auto_revise) where it exists, without the reference and
without the test split. See benchmarks/README.md for the columns.

Writes benchmarks/results/scenarios-<scale>.json (after every row: a run cut short keeps its
numbers) and docs/benchmarks/scenarios-<scale>.md, both atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (ROOT, HERE):  # revise from the checkout; the suite's helpers beside this script
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _suite_data import FASHION_DATA, LOADERS, DataSize, SiteData  # noqa: E402
from _suite_report import markdown  # noqa: E402
from _suite_scenarios import (  # noqa: E402
    AUTO_CEILING,
    KINDS,
    SITE_CEILING,
    TARGET,
    Scenario,
    build_scenario,
    measure,
    score,
)
from _suite_scenarios import tensors as rows_of  # noqa: E402

from revise._io.atomic import write_json_atomic, write_text_atomic  # noqa: E402

if TYPE_CHECKING:
    from revise.models.card import ModelCard
    from revise.unlearn.train import TrainConfig

AUTO = "auto"
# What a row keeps of the run record: the method and settings (the automatic revision's choice
# and its own estimate of the distance to a retrained model, where it reports them).
RECORD_KEYS = ("method", "hyperparameters", "chosen", "chosen_step")


@dataclass(frozen=True)
class Setup:
    """One dataset at one scale: how much data, the model, and the training recipe."""

    size: DataSize
    widths: tuple[int, ...]
    epochs: int = 15  # revise's recipe (unlearn.train.TrainConfig, the seed paper's 15 epochs)
    lr: float = 0.05  # the demo's: small CNNs trained briefly


# Retrain's time divides every row's: on a CPU shared with other jobs one stalled run would skew
# a whole scenario, so the reference is trained this many times (same seed, same model) and the
# fastest counts.
RETRAIN_TIMINGS = {"full": 2, "tiny": 1}
# Retraining is itself noisy: models retrained with other seeds (initial weights and batch order)
# are measured against the reference too, so that every distance can be read against how far one
# retrained model lands from another.
OTHER_RETRAIN_SEEDS = {"full": 2, "tiny": 1}
SCALES: dict[str, dict[str, Setup]] = {
    # Sized so that everything (3 originals, 12 retrains, 12 x every method) fits 30 minutes on
    # 2 CPU cores; see benchmarks/README.md for the measured time.
    "full": {
        "digits": Setup(DataSize(None, 60), (16, 32)),
        "fashion": Setup(DataSize(5000, 250), (8, 16, 32)),
        "lesions": Setup(DataSize(1800, 360), (8, 16, 32)),
    },
    # CI: a few hundred images: seconds per dataset and method. Only digits' model is good at
    # this size (about 0.9 on its training rows); the others check that everything runs.
    "tiny": {
        "digits": Setup(DataSize(800, 40), (16, 32), epochs=15),
        "fashion": Setup(DataSize(600, 40), (8, 16, 32), epochs=5),
        "lesions": Setup(DataSize(400, 80), (8, 16, 32), epochs=6),
    },
}


def registered_methods() -> list[str]:
    """Every registered method but ``retrain`` (it is the reference), then the automatic one."""
    from revise.unlearn import load_builtin_methods
    from revise.unlearn.base import METHODS

    load_builtin_methods()
    return [m for m in METHODS.names() if m != "retrain"] + [AUTO]


def load_auto() -> tuple[Callable | None, str | None]:
    """revise.unlearn.auto.auto_revise, or None and why (its row is then left out)."""
    try:
        from revise.unlearn.auto import auto_revise
    except ImportError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return auto_revise, None


def make_card(data: SiteData, setup: Setup) -> ModelCard:
    from revise.models.card import ModelCard

    return ModelCard(
        architecture="small_cnn",
        num_classes=len(data.class_names),
        class_names=data.class_names,
        arch_kwargs={"widths": list(setup.widths)},
        description=f"scenario suite: {data.name}",
        **data.card_kwargs,
    )


def recipe(setup: Setup) -> TrainConfig:
    from revise.unlearn.train import TrainConfig

    return TrainConfig(epochs=setup.epochs, batch_size=64, lr=setup.lr)


def train(
    card: ModelCard, data: SiteData, mask: np.ndarray, setup: Setup, seed: int, device: str
) -> tuple[nn.Module, float]:
    """revise's recipe from the seed's initial weights (the same for original and retrains)."""
    from revise.models.architectures import build
    from revise.unlearn.train import train_classifier

    torch.manual_seed(seed)
    net = build(card)
    t0 = time.perf_counter()
    net = train_classifier(net, card, rows_of(data, mask), recipe(setup), device=device, seed=seed)
    return net, time.perf_counter() - t0


def run_method(
    method: str,
    original: nn.Module,
    card: ModelCard,
    data: SiteData,
    sc: Scenario,
    device: str,
    seed: int,
    auto: Callable | None,
    ceiling: float | None = None,
) -> tuple[nn.Module, float, dict[str, Any]]:
    """(model, seconds, run record) of one method at its defaults, or of the automatic
    revision (under a site's ``ceiling`` on the group's held-out accuracy, if given)."""
    from revise.unlearn.api import unlearn
    from revise.unlearn.target import Ceiling

    forget, retain = rows_of(data, sc.forget), rows_of(data, data.mask("train") & ~sc.forget)
    if method != AUTO:
        result = unlearn(original, card, forget, retain, method=method, device=device, seed=seed)
        return result.model, result.record.wall_clock_s["unlearn"], result.record.to_json()
    t0 = time.perf_counter()  # everything it does counts: its own search and checks included
    result = auto(
        original,
        card,
        forget=forget,
        retain=retain,
        calibration_forget=rows_of(data, sc.calibration_forget),
        calibration_retain=rows_of(data, sc.calibration_retain),
        device=device,
        seed=seed,
        **({} if ceiling is None else {"forget_ceiling": Ceiling(ceiling, "the suite's site")}),
    )
    return result.model, time.perf_counter() - t0, result.record.to_json()


def run_scenario(
    data: SiteData,
    setup: Setup,
    kind: str,
    methods: list[str],
    original: nn.Module,
    seed: int,
    device: str,
    auto: Callable | None,
    on_row: Callable[[dict], None],
    say: Callable[[str], None],
    retrain_timings: int = 1,
    other_retrain_seeds: int = 0,
) -> dict[str, Any]:
    card = make_card(data, setup)
    sc = build_scenario(data, kind, seed)
    keep = data.mask("train") & ~sc.forget
    retrained, retrain_s = train(card, data, keep, setup, seed, device)
    for _ in range(retrain_timings - 1):
        retrain_s = min(retrain_s, train(card, data, keep, setup, seed, device)[1])
    reference = measure(retrained, card, data, sc, device)
    out = {
        "dataset": data.name,
        "scenario": kind,
        "description": sc.description,
        "counts": sc.counts(data),
        "retrain_seconds": round(retrain_s, 2),
        "rows": {},
    }
    rows = out["rows"]
    rows["original"] = {**measure(original, card, data, sc, device), "seconds": None}
    rows["retrain"] = {**reference, "seconds": round(retrain_s, 2)}
    for label in ("original", "retrain"):
        score(rows[label], reference, None, retrain_s)
    rows["retrain"]["time_vs_retrain"] = 1.0
    out["other_retrains"] = other_retrains(
        card, data, sc, setup, seed, device, reference, other_retrain_seeds
    )
    on_row(out)
    runs = [(m, m, None) for m in methods if m != AUTO or auto is not None]
    if kind == "device" and AUTO in methods and auto is not None:
        runs.append((AUTO_CEILING, AUTO, SITE_CEILING))
    for label, method, ceiling in runs:
        try:
            model, seconds, record = run_method(
                method, original, card, data, sc, device, seed, auto, ceiling
            )
        except Exception as exc:  # one method failing must not lose the others' numbers
            rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"  [{data.name}/{kind}] {label}: FAILED {rows[label]['error']}")
            on_row(out)
            continue
        row = {**measure(model, card, data, sc, device), "seconds": round(seconds, 2)}
        rows[label] = row
        score(row, reference, seconds, retrain_s)
        row["config"] = kept_of(record)
        verdict = "meets" if row["meets_target"] else f"misses {row['target_misses']}"
        say(
            f"  [{data.name}/{kind}] {label:<16} {seconds:6.1f} s  FA {row['fa']:.3f} "
            f"RA {row['ra']:.3f} TA {row['ta']:.3f} D {row['distance']:.3f}  {verdict}"
        )
        on_row(out)
    return out


def other_retrains(
    card: ModelCard,
    data: SiteData,
    sc: Scenario,
    setup: Setup,
    seed: int,
    device: str,
    reference: dict[str, Any],
    count: int,
) -> dict[str, Any]:
    """Models retrained on the same rows with seeds seed+1 .. seed+count, scored against the
    reference: how far retraining lands from itself (D, TA gap)."""
    keep = data.mask("train") & ~sc.forget
    rows = {}
    for other in range(seed + 1, seed + 1 + count):
        net, _ = train(card, data, keep, setup, other, device)
        row = measure(net, card, data, sc, device)
        score(row, reference, None, 1.0)
        rows[f"retrain, seed {other}"] = row
    return rows


def kept_of(record: dict[str, Any]) -> dict[str, Any]:
    """The method and its settings; for the automatic revision also its choice and its own
    estimate of the distance to a retrained model."""
    kept = {k: record[k] for k in RECORD_KEYS if k in record}
    target = record.get("target")
    if isinstance(target, dict) and "estimated_distance" in target:
        kept["estimated_distance"] = target["estimated_distance"]
    return kept


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        write_text_atomic(args.markdown or markdown_path(report["scale"]), markdown(report))
        return report
    from revise.models.pixel import resolve_device

    torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    scale = SCALES[args.scale]
    datasets, kinds, methods = pick(args)
    out = args.out or ROOT / f"benchmarks/results/scenarios-{args.scale}.json"
    md = args.markdown or (
        markdown_path(args.scale) if args.out is None else out.with_suffix(".md")
    )
    auto, auto_error = load_auto() if AUTO in methods else (None, "not requested")
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "scenarios",
        "scale": args.scale,
        "command": "python benchmarks/scenarios.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(device),
        "settings": {
            "seed": args.seed,
            "threads": args.threads,
            "datasets": datasets,
            "scenarios": kinds,
            "methods": methods,
            "setups": {name: dataclasses.asdict(scale[name]) for name in datasets},
            "target": TARGET,
            "retrain_timings": RETRAIN_TIMINGS[args.scale],
            "other_retrain_seeds": OTHER_RETRAIN_SEEDS[args.scale],
        },
        "auto": {"available": auto is not None, "error": auto_error},
        "datasets": {},
        "results": [],
        "seconds_total": 0.0,
    }

    def save(*_: Any) -> None:
        report["seconds_total"] = round(time.perf_counter() - t_start, 1)
        write_json_atomic(out, report)

    for name in datasets:
        setup = scale[name]
        data = load(name, setup, args)
        card = make_card(data, setup)
        original, original_s = train(card, data, data.mask("train"), setup, args.seed, device)
        report["datasets"][name] = {
            "description": data.description,
            "counts": data.counts(),
            "devices": list(data.device_names),
            "classes": data.class_names,
            "model": {"architecture": "small_cnn", "widths": list(setup.widths)},
            "input": [card.in_channels, *card.input_size],
            "recipe": dataclasses.asdict(recipe(setup)),
            "original_seconds": round(original_s, 2),
        }
        print(f"{name}: {data.counts()}, original trained in {original_s:.1f} s", flush=True)
        for kind in kinds:
            report["results"].append({})
            position = len(report["results"]) - 1

            def on_row(result: dict, position: int = position) -> None:
                report["results"][position] = result
                save()

            run_scenario(
                data,
                setup,
                kind,
                methods,
                original,
                args.seed,
                device,
                auto,
                on_row,
                say,
                RETRAIN_TIMINGS[args.scale],
                OTHER_RETRAIN_SEEDS[args.scale],
            )
        write_text_atomic(md, markdown(report))  # after each dataset: a partial table
    save()
    write_text_atomic(md, markdown(report))
    print(f"wrote {out} and {md} in {report['seconds_total']:.0f} s")
    return report


def say(line: str) -> None:
    print(line, flush=True)


def load(name: str, setup: Setup, args: argparse.Namespace) -> SiteData:
    if name == "fashion":
        return LOADERS[name](setup.size, args.seed, args.data)
    return LOADERS[name](setup.size, args.seed)


def machine(device: str) -> dict[str, Any]:
    """The machine, date and git commit, as benchmarks/throughput.py records them."""
    import os

    from throughput import machine_info

    info = machine_info(torch.device(device))
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    return info


def pick(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    def listed(text: str | None, known: list[str], what: str) -> list[str]:
        if text is None:
            return known
        chosen = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in chosen if t not in known]
        if unknown or not chosen:
            raise SystemExit(f"--{what}: unknown {unknown or text!r}; choose from {known}")
        return chosen

    return (
        listed(args.datasets, list(LOADERS), "datasets"),
        listed(args.scenarios, list(KINDS), "scenarios"),
        listed(args.methods, registered_methods(), "methods"),
    )


def markdown_path(scale: str) -> Path:
    return ROOT / "docs" / "benchmarks" / f"scenarios-{scale}.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--datasets", help=f"Comma-separated (default all: {', '.join(LOADERS)}).")
    parser.add_argument("--scenarios", help=f"Comma-separated (default all: {', '.join(KINDS)}).")
    parser.add_argument(
        "--methods", help="Comma-separated (default: every registered method but retrain, auto)."
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2).")
    parser.add_argument("--device", default="cpu", help="cpu (the target is on the CPU), cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=FASHION_DATA, help="Fashion-MNIST folder.")
    parser.add_argument("--out", type=Path, help="JSON (default benchmarks/results/...).")
    parser.add_argument(
        "--markdown", type=Path, help="Markdown (default docs/benchmarks/..., or beside --out)."
    )
    parser.add_argument("--render", type=Path, help="Only rewrite the Markdown from a JSON.")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


if __name__ == "__main__":
    main()
