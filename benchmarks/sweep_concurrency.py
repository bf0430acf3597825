#!/usr/bin/env python
"""Concurrent sweep runs on one device: the grid's wall-clock against the sum of single runs.

    python benchmarks/sweep_concurrency.py --device cuda     # the paper's 20-point grid, class 0
    python benchmarks/sweep_concurrency.py --device cpu --per-class 100 --grid 2x2 --levels 1,2

The grid is psg's gamma x lambda grid of the seed paper (4 x 5 points; ``--grid GxL`` takes the
first G gammas and L lambdas), one pass over the forget set (Fashion-MNIST class 0) at the
paper's batch of 64, on data prepared once. For each level K of ``--levels``,
``revise.unlearn.sweep.sweep(concurrent=K)`` runs the whole grid; K=1 is the sequential sweep, whose
runs' own clocks (set-up, unlearning, evaluation) add up to "the sum of single runs". A warm-up
run comes first (CUDA context, cuDNN autotuning). Every level must rank the same runs with the
same scores: the check is printed and stored.

Writes benchmarks/results/sweep_concurrency-<device kind>.json and this device kind's section
of docs/benchmarks/sweep.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling benchmarks, also when loaded from a test

import fashion_mnist as fm  # noqa: E402
import throughput as tp  # noqa: E402  (puts the repository on sys.path too)

from revise._io.atomic import write_text_atomic  # noqa: E402

GAMMAS = (0.0, 1e-4, 0.1, 1.0)
RUN_PHASES = ("setup", "unlearn", "evaluation")
LAMBDAS = (0.0, 1e-4, 1e-3, 1e-2, 0.1)
MARKDOWN = tp.REPO / "docs" / "benchmarks" / "sweep.md"
HEADER = (
    "# Sweeps: concurrent runs on one device\n\n"
    "Written by `python benchmarks/sweep_concurrency.py`: one section per device kind. "
    "`revise sweep --concurrent K` runs K grid points at once, each in its own thread and CUDA "
    "stream; the runs are the sequential sweep's (same seed, batches and scores).\n"
)


def prepared_data(data: dict[str, torch.Tensor]):
    """Forget = the training images of class 0, retain = the rest: the sweep's four sets'
    two training-side ones (the ranking uses only these)."""
    import pandas as pd

    from revise.data.sets import DecodedSet, DecodedSets

    def as_set(mask: torch.Tensor) -> DecodedSet:
        x, y = data["x_train"][mask], data["y_train"][mask]
        return DecodedSet(x, y, pd.DataFrame({"label": y.numpy()}))

    forget = data["y_train"] == 0
    return DecodedSets("label in [0]", {"forget": as_set(forget), "retain": as_set(~forget)}, {})


def quick_original(data: dict[str, torch.Tensor], device: str) -> torch.nn.Module:
    """One epoch of training: speed does not depend on how well the model learned."""
    from revise.data.sets import DecodedSet
    from revise.unlearn.train import TrainConfig, train_classifier

    everything = DecodedSet(data["x_train"], data["y_train"])
    recipe = TrainConfig(epochs=1, batch_size=256, lr=0.05)
    return train_classifier(fm.fresh_model(0), fm.card(), everything, recipe, device=device)


def outcome(result) -> list[tuple[str, float]]:
    return [(repr(sorted(row.settings.items())), row.score) for row in result.runs()]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from revise.models.pixel import resolve_device
    from revise.unlearn.sweep import sweep

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    g, lam = (int(v) for v in args.grid.lower().split("x"))
    grid = {"gamma": list(GAMMAS[:g]), "lam": list(LAMBDAS[:lam])}
    fixed = {"epochs": 1, "batch_size": args.batch}
    scale = fm.Scale(args.per_class, 10, 1, 1, (), ())
    data = fm.load_fashion_mnist(args.data, scale)
    prepared = prepared_data(data)
    net = quick_original(data, str(device))
    common = dict(method="psg", fixed=fixed, reference=net, device=str(device), seed=0)
    sweep(net, fm.card(), prepared, grid={"gamma": [0.0]}, **common)  # warm-up
    levels: list[dict[str, Any]] = []
    baseline = None
    for k in args.levels:
        t0 = time.perf_counter()
        result = sweep(net, fm.card(), prepared, grid=grid, concurrent=k, **common)
        wall = time.perf_counter() - t0
        # a single run: what run_unlearning does for one grid point (set-up, the method and
        # the evaluation of the revised model); the sequential sweep adds only the bookkeeping
        runs_s = [
            sum(row.record.wall_clock_s.get(phase, 0.0) for phase in RUN_PHASES)
            for row in result.rows
        ]
        level = {
            "concurrent": result.concurrent,
            "grid_wall_clock_s": round(wall, 3),
            "sum_of_run_clocks_s": round(sum(runs_s), 3),
            "outcome": outcome(result),
        }
        if baseline is None:
            baseline = level
        level["speedup_vs_sequential"] = round(baseline["grid_wall_clock_s"] / wall, 3)
        level["sum_of_single_runs_s"] = baseline["sum_of_run_clocks_s"]
        level["grid_vs_sum_of_single_runs"] = round(wall / baseline["sum_of_run_clocks_s"], 3)
        level["same_runs_as_sequential"] = level["outcome"] == baseline["outcome"]
        level["max_score_difference"] = max(
            abs(a[1] - b[1]) for a, b in zip(level["outcome"], baseline["outcome"], strict=True)
        )
        levels.append(level)
        print(
            f"concurrent {k}: grid {wall:.2f} s, sum of single runs "
            f"{baseline['sum_of_run_clocks_s']:.2f} s, speed-up {level['speedup_vs_sequential']}x,"
            f" same runs: {level['same_runs_as_sequential']}",
            flush=True,
        )
    return {
        "benchmark": "sweep_concurrency",
        "machine": tp.machine_info(device),
        "settings": {
            "command": "python benchmarks/sweep_concurrency.py " + " ".join(args.argv),
            "device": device.type,
            "grid": grid,
            "fixed": fixed,
            "forget_images": len(prepared.sets["forget"]),
            "retain_images": len(prepared.sets["retain"]),
        },
        "levels": levels,
    }


def markdown_section(results: dict[str, Any]) -> str:
    mach, s = results["machine"], results["settings"]
    kind = mach["device_kind"]
    points = len(s["grid"]["gamma"]) * len(s["grid"]["lam"])
    lines = [
        f"<!-- sweep:{kind} -->",
        f"## {kind}",
        "",
        f"- {mach['device']}; torch {mach['torch']}, torch threads {mach['torch_threads']}; "
        f"{mach['date']}",
        f"- psg, {points} grid points (gamma {s['grid']['gamma']} x lambda {s['grid']['lam']}),"
        f" {s['fixed']['epochs']} pass over {s['forget_images']} forget images at batch "
        f"{s['fixed']['batch_size']}; each run also evaluates on {s['retain_images']} retain "
        "images",
        f"- command: `{s['command'].strip()}`",
        "",
        "| runs at once | grid wall-clock (s) | sum of single runs (s) | grid / sum | speed-up "
        "| same runs |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for lv in results["levels"]:
        same = lv["same_runs_as_sequential"]
        lines.append(
            f"| {lv['concurrent']} | {lv['grid_wall_clock_s']:.2f} | "
            f"{lv['sum_of_single_runs_s']:.2f} | {lv['grid_vs_sum_of_single_runs']:.2f} | "
            f"{lv['speedup_vs_sequential']:.2f}x | "
            + ("yes" if same else f"max score difference {lv['max_score_difference']:.1e}")
            + " |"
        )
    lines.append(f"<!-- /sweep:{kind} -->")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--data", type=Path, default=fm.DATA, help="Folder of the IDX files.")
    p.add_argument("--per-class", type=int, help="Training images per class (default: all).")
    p.add_argument("--grid", default="4x5", help="GxL: the first G gammas, L lambdas")
    p.add_argument("--batch", type=int, default=64, help="psg's batch (the paper's: 64)")
    p.add_argument(
        "--levels",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[1, 2, 4, 8],
        help="runs at once, comma-separated; the first is the baseline (use 1)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", type=Path, help="JSON (default benchmarks/results/...)")
    p.add_argument("--markdown", type=Path, default=MARKDOWN)
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    results = run(args)
    kind = results["machine"]["device_kind"]
    out = args.out or tp.REPO / "benchmarks" / "results" / f"sweep_concurrency-{kind}.json"
    tp.write_json_atomic(out, tp.rounded(results))
    existing = args.markdown.read_text(encoding="utf-8") if args.markdown.exists() else None
    section = markdown_section(results)
    write_text_atomic(
        args.markdown, tp.merge_markdown(existing, section, kind, tag="sweep", header=HEADER)
    )
    print(section)
    return results


if __name__ == "__main__":
    main()
