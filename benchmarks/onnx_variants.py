#!/usr/bin/env python
"""A bundle's fp32, fp16 and INT8 ONNX files side by side in ONNX Runtime on this CPU: how fast
each runs at batch 1 and batch 32, and how much accuracy each keeps on a site's held-out images.

    python benchmarks/onnx_variants.py [--demo DIR] [--threads N] [--repeats N] [--window S]
        [--speed-models resnet18_cifar] [--out PATH] [--markdown PATH | --no-markdown]

The model is the revised model of `revise demo` (the digits DICOM site with two devices, the
deployed small_cnn revised by psg to forget the "Borealis CR-7" device), built on the fly in a
temporary folder, or in (and reused from) ``--demo DIR``. Its bundle is written by the code
`revise export --fp16 --int8` runs (:func:`revise.export.bundle.write_bundle`): model.onnx,
model.fp16.onnx, and model.int8.onnx calibrated on 256 images of the retain set (the remaining
device; never the forget set). Then, in this one process, for every file:

1. **images/s** at batch 1 and batch 32 in an ONNX Runtime CPU session (default graph
   optimisations; ``--threads`` intra-op threads, 0 = ONNX Runtime's default), on real held-out
   images: warm-up runs first, then ``--repeats`` timed windows of about ``--window`` seconds
   (as many runs as fit, measured in the warm-up); images/s = images / window time, the median
   window counts (robust to a preempted window on a shared CPU);
2. **accuracy** on the held-out sets of the site - the remaining device (heldout_retain) and the
   retired one (heldout_forget, where the revised model should score like a model that never saw
   the device) - and the share of images on which it predicts as the fp32 file, beside the
   model's own accuracy in PyTorch (fp32).

The demo model is tiny, so ``--speed-models`` (default ``resnet18_cifar``) adds speed-only rows
for larger registry CNNs at 3x32x32: random weights (speed does not depend on what a model
learned), the same export, fp16 conversion and INT8 quantization, without the accuracy gates.

Writes ``benchmarks/results/onnx_variants-cpu.json`` (machine, settings, every window), the page
``docs/benchmarks/onnx-variants.md`` and the table on stdout.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revise._io.atomic import write_json_atomic, write_text_atomic  # noqa: E402

VARIANTS = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
BATCHES = (1, 32)
HELDOUT = {"heldout_retain": "remaining device", "heldout_forget": "retired device"}


def demo_model(folder: Path, say) -> Path:
    """``folder`` holding a finished `revise demo` (made now unless it is there already)."""
    from revise.stages.demo import run_demo

    if (
        not (folder / "revised" / "run.json").is_file()
        or not (folder / "demo_report.json").is_file()
    ):
        say(f"building the demo site and its revised model in {folder} (about two minutes)")
        run_demo(folder, device="cpu", say=lambda line: say(line.strip()))
    return folder


def bundle_and_data(demo: Path, out: Path):
    """(the bundle with the three variants, the card, the demo's decoded sets, the model)."""
    from revise.data import manifest as manifest_mod
    from revise.data.tensors import prepare
    from revise.export.bundle import write_bundle
    from revise.export.quantize import calibration_set
    from revise.models.io import load_model
    from revise.models.pixel import normalize
    from revise.stages.demo import FORGET

    model = load_model(demo / "revised")
    card = model.card
    data = prepare(
        manifest_mod.load(demo / "manifest.parquet"), card, FORGET, cache_dir=demo / "cache"
    )
    sets = data.sets
    calibration = calibration_set(sets["retain"], card, source="the demo's retain set")
    bundle = write_bundle(
        model,
        out,
        samples=normalize(sets["heldout_retain"].x[:256], card),
        name="demo_digits",
        fp16=True,
        int8=calibration,
        overwrite=True,
    )
    return bundle, card, sets, model


def speed_files(arch: str, folder: Path) -> dict[str, Path]:
    """fp32, fp16 and INT8 files of a larger CNN (random weights: speed does not depend on what
    a model learned), made by the same steps as a bundle's, without the accuracy gates that
    random weights would fail."""
    import onnx
    import torch
    from onnxconverter_common import float16

    from revise.export.onnx import export_onnx
    from revise.export.quantize import quantize
    from revise.models.architectures import build
    from revise.models.card import ModelCard

    card = ModelCard(arch, 10, 3, (32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / file for name, file in VARIANTS.items()}
    export_onnx(build(card).eval(), card, files["fp32"])
    proto = float16.convert_float_to_float16(onnx.load(str(files["fp32"])), keep_io_types=True)
    onnx.save(proto, str(files["fp16"]))
    calibration = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    quantize(files["fp32"], files["int8"], calibration)
    return files


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def throughput(sess, x: np.ndarray, repeats: int, window: float) -> dict[str, Any]:
    """images/s of ``sess`` on the batch ``x``: warm-up, then ``repeats`` timed windows."""
    feed = {sess.get_inputs()[0].name: x}
    fetch = [sess.get_outputs()[0].name]
    for _ in range(5):
        sess.run(fetch, feed)
    t0, runs = time.perf_counter(), 0
    while time.perf_counter() - t0 < window / 2 or runs < 3:  # warm-up that also times a run
        sess.run(fetch, feed)
        runs += 1
    per_run = (time.perf_counter() - t0) / runs
    n = max(3, int(window / per_run))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            sess.run(fetch, feed)
        rates.append(len(x) * n / (time.perf_counter() - t0))
    return {
        "images_per_s": statistics.median(rates),
        "ms_per_batch": 1000 * len(x) / statistics.median(rates),
        "runs_per_window": n,
        "windows_images_per_s": rates,
    }


def predictions(sess, x: np.ndarray, batch: int = 256) -> np.ndarray:
    feed, fetch = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    parts = [sess.run([fetch], {feed: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(parts).argmax(axis=1)


def cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            info["model"] = value.strip()
        elif key.strip() == "flags":
            wanted = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "f16c"}
            info["flags"] = sorted(wanted & set(value.split()))
            break
    return info


def git_commit() -> str | None:
    """HEAD, with ``+changes`` when the working tree differs from it."""

    def git(*words: str) -> str:
        return subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True).stdout

    try:
        commit, dirty = git("rev-parse", "--short", "HEAD").strip(), git("status", "--porcelain")
    except OSError:
        return None
    return (commit + ("+changes" if dirty.strip() else "")) or None


def measure(args: argparse.Namespace, demo: Path, work: Path, say) -> dict[str, Any]:
    import onnxruntime
    import torch

    from revise.models.pixel import normalize
    from revise.unlearn.evaluate import predict

    t_start = time.perf_counter()
    load = [round(v, 2) for v in os.getloadavg()]  # other jobs on this CPU, when it starts
    bundle, card, sets, model = bundle_and_data(demo, work / "bundle")
    held = {s: sets[s] for s in HELDOUT if s in sets and len(sets[s])}
    x = {s: normalize(held[s].x, card).numpy().astype(np.float32) for s in held}
    y = {s: held[s].y.numpy() for s in held}
    pool = np.concatenate(list(x.values()))
    torch_pred = {
        s: predict(model.module, card, held[s].x, device="cpu").argmax(1).numpy() for s in held
    }
    rows: dict[str, Any] = {
        "pytorch fp32": {
            "accuracy": {s: float(np.mean(torch_pred[s] == y[s])) for s in held},
        }
    }
    fp32_pred: dict[str, np.ndarray] = {}
    manifest = bundle.manifest.onnx.variants
    for name, file in VARIANTS.items():
        sess = session(bundle.path / file, args.threads)
        pred = {s: predictions(sess, x[s]) for s in held}
        fp32_pred = fp32_pred or pred
        parity = manifest[file].parity
        rows[name] = {
            "file": file,
            "bytes": (bundle.path / file).stat().st_size,
            "accuracy": {s: float(np.mean(pred[s] == y[s])) for s in held},
            "agreement_with_fp32": {s: float(np.mean(pred[s] == fp32_pred[s])) for s in held},
            "parity_vs_pytorch": parity.to_json() if parity is not None else None,
        }
        for b in BATCHES:
            got = rows[name][f"batch_{b}"] = throughput(sess, pool[:b], args.repeats, args.window)
            say(f"  {name:<5} batch {b:>2}: {got['images_per_s']:>10,.0f} img/s")
    speed: dict[str, Any] = {}
    for arch in [a for a in args.speed_models.split(",") if a]:
        files = speed_files(arch, work / "speed" / arch)
        x = np.random.default_rng(0).normal(size=(32, 3, 32, 32)).astype(np.float32)
        speed[arch] = {"input": [3, 32, 32], "variants": {}}
        for name, path in files.items():
            sess = session(path, args.threads)
            entry = speed[arch]["variants"][name] = {"bytes": path.stat().st_size}
            for b in BATCHES:
                got = entry[f"batch_{b}"] = throughput(sess, x[:b], args.repeats, args.window)
                say(f"  {arch} {name:<5} batch {b:>2}: {got['images_per_s']:>10,.0f} img/s")
    int8 = manifest["model.int8.onnx"]
    return {
        "benchmark": "onnx_variants",
        "model": {
            "what": "revise demo's revised model (small_cnn, psg, forget device 'Borealis CR-7')",
            "architecture": card.architecture,
            "input": [card.in_channels, *card.input_size],
            "classes": card.num_classes,
        },
        "heldout": {s: {"n": len(y[s]), "device": HELDOUT[s]} for s in held},
        "int8": {"quantization": int8.quantization, "calibration": int8.calibration},
        "variants": rows,
        "speed_only": speed,
        "settings": {
            "batches": list(BATCHES),
            "repeats": args.repeats,
            "window_s": args.window,
            "threads": args.threads or "onnxruntime default",
            "inputs": "held-out images of the site, normalised (fp32 input for every variant)",
        },
        "machine": {
            "cpu": cpu_info(),
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15_min": load,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d"),
        },
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def table(report: dict[str, Any]) -> str:
    """The accuracy and speed table (in fixed orders: the JSON's keys are sorted)."""
    held = [s for s in HELDOUT if s in report["heldout"]]
    heads = [f"accuracy, {HELDOUT[s]} (n={report['heldout'][s]['n']})" for s in held]
    lines = [
        "| variant | file | img/s batch 1 | img/s batch 32 | "
        + " | ".join(heads)
        + " | labels agree with fp32 |",
        "|---|---:|---:|---:|" + "---:|" * len(heads) + "---:|",
    ]
    for name in ["pytorch fp32", *VARIANTS]:
        row = report["variants"][name]
        accuracy = " | ".join(f"{row['accuracy'][s]:.3f}" for s in held)
        if "file" not in row:
            lines.append(f"| {name} | | | | {accuracy} | |")
            continue
        agree = ", ".join(f"{row['agreement_with_fp32'][s]:.3f}" for s in held)
        size = f"{row['bytes'] / 1024:.1f} KiB"
        speed = " | ".join(f"{row[f'batch_{b}']['images_per_s']:,.0f}" for b in BATCHES)
        lines.append(f"| {name} | {size} | {speed} | {accuracy} | {agree} |")
    return "\n".join(lines) + "\n"


def speed_table(report: dict[str, Any]) -> str:
    lines = [
        "| model | variant | file | img/s batch 1 | img/s batch 32 | vs fp32 (batch 1, 32) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for arch, entry in report.get("speed_only", {}).items():
        base = entry["variants"]["fp32"]
        for name in VARIANTS:
            row = entry["variants"][name]
            speed = [row[f"batch_{b}"]["images_per_s"] for b in BATCHES]
            ratio = ", ".join(
                f"{s / base[f'batch_{b}']['images_per_s']:.2f}x"
                for s, b in zip(speed, BATCHES, strict=True)
            )
            size = f"{row['bytes'] / 2**20:.1f} MiB"
            lines.append(
                f"| {arch} | {name} | {size} | {speed[0]:,.0f} | {speed[1]:,.0f} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def markdown(report: dict[str, Any]) -> str:
    m, s, q = report["machine"], report["settings"], report["int8"]
    cpu = m["cpu"]
    flags = ", ".join(cpu["flags"]) or "none of avx2/avx512/vnni/amx"
    commit = f" @ {m['git_commit']}" if m.get("git_commit") else ""
    return "\n".join(
        [
            "# ONNX variants: fp32, fp16, INT8 in ONNX Runtime (CPU)",
            "",
            f"Written by `python benchmarks/onnx_variants.py` on {m['date']}{commit}. Model: "
            f"{report['model']['what']}, input {report['model']['input']}. Files from "
            "`write_bundle(fp16=True, int8=...)`, the code `revise export --fp16 --int8` runs.",
            "",
            table(report),
            f"img/s: ONNX Runtime {m['onnxruntime']} CPUExecutionProvider, default graph "
            f"optimisations, intra-op threads: {s['threads']}; median of {s['repeats']} windows "
            f"of about {s['window_s']} s after warm-up, on held-out images. Accuracy: on the "
            "site's held-out images (the retired device is the one the revision forgot: there "
            "the revised model should score like a model that never saw it, not like the "
            "original). Labels agree: share of images on which the variant predicts the class "
            "the fp32 file predicts (remaining device, retired device).",
            "",
            "Speed only, a larger CNN at 3x32x32 (random weights, the same export, fp16 "
            "conversion and INT8 quantization; INT8 calibrated on random images: its accuracy "
            "means nothing, its speed does):",
            "",
            speed_table(report),
            f"INT8: {q['quantization']['format']}, activations {q['quantization']['activations']}"
            f", weights {q['quantization']['weights']}, {q['quantization']['calibration']} "
            f"calibration on {q['calibration']['n']} images of {q['calibration']['source']}.",
            "",
            f"Machine: {cpu['model']} ({m['cpu_count']} logical CPUs, flags: {flags}), shared "
            f"with other jobs (load average {m['load_average_1_5_15_min'][0]} at the start); "
            f"torch {m['torch']}, Python {m['python']}; {report['seconds']} s for the bundle "
            "and the measurements. The demo model is tiny (16x16 inputs, two conv layers): "
            "per-call overhead weighs heavily at batch 1; int8 and fp16 kernels gain most on "
            "larger models and on CPUs with VNNI / AMX (int8) or native fp16 arithmetic.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="Folder of a `revise demo` (made if absent).")
    parser.add_argument("--threads", type=int, default=0, help="Intra-op threads (0: default).")
    parser.add_argument("--repeats", type=int, default=7, help="Timed windows per measurement.")
    parser.add_argument("--window", type=float, default=0.5, help="Seconds per timed window.")
    parser.add_argument(
        "--speed-models",
        default="resnet18_cifar",
        help="Comma-separated registry architectures timed at 3x32x32 too ('' for none).",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/onnx_variants-cpu.json"
    )
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs/benchmarks/onnx-variants.md")
    parser.add_argument("--no-markdown", dest="markdown", action="store_const", const=None)
    args = parser.parse_args(argv)

    say = functools.partial(print, flush=True)
    with tempfile.TemporaryDirectory(prefix="revise-onnx-variants-") as tmp:
        demo = demo_model(args.demo or Path(tmp) / "demo", say)
        report = measure(args, demo, Path(tmp), say)
    write_json_atomic(args.out, report)
    if args.markdown is not None:
        write_text_atomic(args.markdown, markdown(report))
    print(table(report))
    if report["speed_only"]:
        print(speed_table(report))
    return report


if __name__ == "__main__":
    main()
