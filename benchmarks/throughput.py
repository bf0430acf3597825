#!/usr/bin/env python
"""Throughput of plain training and of psg unlearning, and how close psg comes to its passes.

    python benchmarks/throughput.py [--models allcnn,resnet18_cifar,resnet50] [--batch N]
        [--steps N] [--warmup N] [--repeats N] [--device auto|cpu|cuda] [--compile]
        [--out PATH] [--markdown PATH | --no-markdown]

For every model, on synthetic images resident on the device (uniform random pixels, never
zeros), it measures:

1. **plain training**: images/s of forward + backward + SGD step of the bare network (bf16
   autocast and channels_last on CUDA, fp32 on CPU), after warm-up, every step timed with CUDA
   events (perf_counter on CPU), the host synchronising only once at the end; the median step
   counts (robust to a preempted step on a shared CPU). ``--compile`` adds a row for the
   same step with ``torch.compile``-d network; psg itself runs eager (it does not compile yet).
2. **psg unlearning through the real code path**: ``revise.unlearn.api.unlearn(method="psg")``
   with one inner search step, ``epochs=1``, ``batch_size=--batch``, on ``steps * batch``
   forget images (so exactly ``--steps`` steps), once with ``phi=0`` and once with ``phi=1``
   (a retain batch per step). images/s = forget images / ``record.wall_clock_s["unlearn"]``
   (setup excluded), and the attack / update split from the record's phase timer. One
   unlearn call over ``--warmup`` steps runs first and is discarded; of ``--repeats`` calls
   the one with the median unlearn time counts.
3. **efficiency** = the time psg's passes take when each runs alone at full speed / psg's
   actual time. Per step psg does (``T`` = inner search steps, 1 here):

   ========================================  ===============================  =========
   pass                                      measured component               model
   ========================================  ===============================  =========
   T x labeler forward + backward to input   ``labeler_forward_input_grad``   2/3 tau
   (attack: frozen weights, no weight grads)
   1 x labeler forward (read the new label)  ``labeler_forward``              1/3 tau
   1 x model forward + backward + SGD step   ``train_step``                   1 tau
   phi > 0: 1 x model forward + backward on  ``forward_backward``             1 tau
   a retain batch (same backward, no step)
   ========================================  ===============================  =========

   ``efficiency`` uses the *measured* components, each timed alone at the same batch with the
   same dtype/layout (bare network, no pixel-space normalisation; labeler frozen in eval
   mode): ``steps * sum(components) / unlearn_s``. Everything psg does beyond those passes
   (normalisation, clamps, sign step, noise, gathers, optimizer bookkeeping, Python and
   launch gaps, host syncs) shows up as efficiency below 1. ``efficiency_modelled`` uses the
   cost model in the last column instead (tau = one measured plain training step; a forward
   ~ 1/3 tau, the backward to activations ~ 1/3 tau, the weight gradients ~ 1/3 tau), i.e.
   psg ~ (2T/3 + 4/3) tau per step with phi = 0 and one tau more with phi > 0. The attack
   and update phases get their own efficiencies (their passes over their phase time).
4. A table on stdout, JSON to ``benchmarks/results/throughput-<cpu|gpu-name-slug>.json``
   (or ``--out``) and this device kind's section of ``docs/benchmarks/throughput.md`` (other
   devices' sections are kept), all written atomically, after every model, so a run that is
   cut short still leaves what it measured.

Defaults: on CPU ``allcnn,resnet18_cifar``, batch 32, 5 steps, 2 warm-up, 1 repeat; on CUDA
``allcnn,resnet18_cifar,resnet50``, batch 1024 (ResNet-50 and ResNet-18 at 224: 256), 30 steps,
10 warm-up, 3 repeats. A model may carry constructor arguments:
``allcnn:filters_percentage=0.25``. Models: allcnn, resnet18_cifar, small_cnn (32x32, 10
classes, built from revise's registry) and resnet18, resnet50 (224x224, 1000 classes, defined
here: standard ImageNet ResNets, not built-in architectures).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import datetime
import itertools
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout where revise is not installed (a GPU box)
    sys.path.insert(0, str(REPO))

import revise  # noqa: E402
from revise._io.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from revise.data.sets import DecodedSet  # noqa: E402
from revise.models.architectures import ARCHITECTURES, BasicBlock  # noqa: E402
from revise.models.card import ModelCard  # noqa: E402
from revise.models.pixel import resolve_device  # noqa: E402
from revise.unlearn.api import unlearn  # noqa: E402
from revise.unlearn.base import freeze  # noqa: E402

DEFAULT_MARKDOWN = REPO / "docs" / "benchmarks" / "throughput.md"
INNER_STEPS = 1  # psg's boundary-search steps per update (the authors' default)
PSG_LR = 1e-5  # psg's default SGD settings, also used for the plain-training row
PSG_MOMENTUM = 0.9
PHIS = (0.0, 1.0)
COMPONENTS = ("labeler_forward", "labeler_forward_input_grad", "train_step", "forward_backward")


# --- ImageNet ResNets (not built-in architectures) ---------------------------------------------


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, projection shortcut when needed."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ImageNetResNet(nn.Module):
    """7x7 stride-2 stem, 3x3 max-pool, four stages (64..512 wide), average pool, ``fc``."""

    head_name = "fc"

    def __init__(
        self, block: type[nn.Module], blocks: Sequence[int], in_channels: int, num_classes: int
    ) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin, stages = 64, []
        for i, n in enumerate(blocks):
            width, layers = 64 * 2**i, []
            for j in range(n):
                layers.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


def resnet50(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes)


def resnet18(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes)


# --- what to run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    name: str
    size: int  # square input side
    num_classes: int
    cuda_batch: int  # default batch on CUDA
    local: Callable[..., nn.Module] | None = None  # None: revise's architecture registry
    in_channels: int = 3


SPECS = {
    "allcnn": ModelSpec("allcnn", 32, 10, 1024),
    "resnet18_cifar": ModelSpec("resnet18_cifar", 32, 10, 1024),
    "small_cnn": ModelSpec("small_cnn", 32, 10, 1024),
    "resnet18": ModelSpec("resnet18", 224, 1000, 256, local=resnet18),
    "resnet50": ModelSpec("resnet50", 224, 1000, 256, local=resnet50),
}
DEFAULT_MODELS = {"cpu": "allcnn,resnet18_cifar", "cuda": "allcnn,resnet18_cifar,resnet50"}


@dataclass
class ModelRequest:
    key: str  # as written, e.g. "allcnn:filters_percentage=0.25"
    spec: ModelSpec
    kwargs: dict[str, Any] = field(default_factory=dict)

    def card(self) -> ModelCard:
        c = self.spec.in_channels
        return ModelCard(
            architecture=self.spec.name if self.spec.local is None else f"bench_{self.spec.name}",
            num_classes=self.spec.num_classes,
            in_channels=c,
            input_size=(self.spec.size, self.spec.size),
            mean=(0.5,) * c,
            std=(0.25,) * c,
            arch_kwargs=dict(self.kwargs),
        )

    def build(self) -> nn.Module:
        s = self.spec
        ctor = s.local or ARCHITECTURES.get(s.name)
        return ctor(s.in_channels, s.num_classes, **self.kwargs)


def split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets: ``a:w=(1,2),b`` -> ``["a:w=(1,2)", "b"]``."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def parse_models(text: str) -> list[ModelRequest]:
    requests = []
    for item in split_top_level(text, ","):
        name, *args = split_top_level(item, ":")
        if name not in SPECS:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(SPECS)}")
        kwargs = {}
        for arg in args:
            key, sep, value = arg.partition("=")
            if not sep:
                raise SystemExit(f"model argument {arg!r} is not KEY=VALUE")
            try:
                kwargs[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                kwargs[key.strip()] = value.strip()
        requests.append(ModelRequest(item, SPECS[name], kwargs))
    return requests


# --- the device, timing and data --------------------------------------------------------------


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(module: nn.Module, device: torch.device) -> nn.Module:
    module = module.to(device)
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return module


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_iteration(
    fn: Callable[[int], Any], *, iters: int, warmup: int, repeats: int, device: torch.device
) -> tuple[float, list[float]]:
    """Median time of one call over ``repeats`` windows of ``iters`` calls, after ``warmup``.

    Every call is timed (the median shrugs off a preempted call on a shared CPU); the windows
    run back to back. On CUDA the calls are separated by events and the host waits once, after
    the last window; on CPU the work is synchronous and perf_counter is exact. Also returns
    each window's mean time per call.
    """
    for i in range(warmup):
        fn(i)
    synchronize(device)
    windows: list[list[Any]] = []
    for _ in range(repeats):
        marks: list[Any] = []
        for i in range(iters):
            marks.append(clock(device))
            fn(i)
        marks.append(clock(device))
        windows.append(marks)
    synchronize(device)
    calls: list[float] = []
    means: list[float] = []
    for marks in windows:
        if device.type == "cuda":
            spans = [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(marks)]
        else:
            spans = [b - a for a, b in itertools.pairwise(marks)]
        calls += spans
        means.append(sum(spans) / len(spans))
    return statistics.median(calls), means


def clock(device: torch.device) -> Any:
    """A time mark: a recorded CUDA event (read after the final sync), or perf_counter."""
    if device.type == "cuda":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def synthetic(
    n: int, spec: ModelSpec, device: torch.device, generator: torch.Generator
) -> DecodedSet:
    """Uniform pixels in [0, 1] and uniform labels, made on the device (channels_last on CUDA)."""
    shape = (n, spec.in_channels, spec.size, spec.size)
    x = torch.rand(shape, generator=generator, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, spec.num_classes, (n,), generator=generator, device=device)
    return DecodedSet(x, y)


# --- measurements -----------------------------------------------------------------------------


def measure_components(
    net: nn.Module,
    pool: list[DecodedSet],
    device: torch.device,
    *,
    iters: int,
    warmup: int,
    repeats: int,
) -> dict[str, dict[str, Any]]:
    """Each pass psg makes, timed alone at full speed (seconds per batch)."""
    labeler = freeze(copy.deepcopy(net))
    model = copy.deepcopy(net).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=PSG_LR, momentum=PSG_MOMENTUM)
    leaves = [b.x.detach().clone().requires_grad_(True) for b in pool]

    def batch(i: int) -> DecodedSet:
        return pool[i % len(pool)]

    def labeler_forward(i: int) -> None:
        with torch.no_grad(), autocast(device):
            labeler(batch(i).x)

    def labeler_forward_input_grad(i: int) -> None:
        x = leaves[i % len(leaves)]
        with autocast(device):
            loss = F.cross_entropy(labeler(x).float(), batch(i).y, reduction="sum")
        torch.autograd.grad(loss, x)

    def forward_backward(i: int) -> None:
        model.zero_grad(set_to_none=True)
        with autocast(device):
            loss = F.cross_entropy(model(batch(i).x).float(), batch(i).y)
        loss.backward()

    def train_step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = F.cross_entropy(model(batch(i).x).float(), batch(i).y)
        loss.backward()
        optimizer.step()

    fns = {
        "labeler_forward": labeler_forward,
        "labeler_forward_input_grad": labeler_forward_input_grad,
        "train_step": train_step,
        "forward_backward": forward_backward,
    }
    out = {}
    for name in COMPONENTS:
        median, windows = seconds_per_iteration(
            fns[name], iters=iters, warmup=warmup, repeats=repeats, device=device
        )
        out[name] = {"s": median, "windows_s": windows}
    return out


def measure_compiled_train(
    net: nn.Module,
    pool: list[DecodedSet],
    device: torch.device,
    *,
    iters: int,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """The plain training step with the network under torch.compile (first call compiles)."""
    model = torch.compile(copy.deepcopy(net).train())
    optimizer = torch.optim.SGD(model.parameters(), lr=PSG_LR, momentum=PSG_MOMENTUM)

    def train_step(i: int) -> None:
        b = pool[i % len(pool)]
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = F.cross_entropy(model(b.x).float(), b.y)
        loss.backward()
        optimizer.step()

    t0 = time.perf_counter()
    train_step(0)
    synchronize(device)
    first_call = time.perf_counter() - t0
    median, windows = seconds_per_iteration(
        train_step, iters=iters, warmup=max(1, warmup), repeats=repeats, device=device
    )
    return {"s": median, "windows_s": windows, "first_call_s": round(first_call, 3)}


def measure_psg(
    net: nn.Module,
    card: ModelCard,
    forget: DecodedSet,
    retain: DecodedSet,
    device: torch.device,
    *,
    phi: float,
    batch: int,
    steps: int,
    warmup: int,
    repeats: int,
    seed: int,
    compile: bool = False,
) -> dict[str, Any]:
    """psg through ``revise.unlearn.api.unlearn``; the run with the median unlearn time (with
    ``compile``, the warm-up run pays for compiling)."""
    config = {"epochs": 1, "batch_size": batch, "steps": INNER_STEPS, "phi": phi}
    common = dict(method="psg", config=config, device=str(device), seed=seed, compile=compile)
    if warmup or compile:
        n = min(len(forget), max(1, warmup) * batch)
        unlearn(net, card, DecodedSet(forget.x[:n], forget.y[:n]), retain, **common)
    records = [unlearn(net, card, forget, retain, **common).record for _ in range(repeats)]
    records.sort(key=lambda r: r.wall_clock_s["unlearn"])
    record = records[len(records) // 2]
    if record.steps not in (None, steps):
        raise RuntimeError(f"psg ran {record.steps} steps, expected {steps}")
    wall = record.wall_clock_s
    return {
        "unlearn_s": wall["unlearn"],
        "attack_s": wall.get("attack", 0.0),
        "update_s": wall.get("update", 0.0),
        "unlearn_windows_s": [r.wall_clock_s["unlearn"] for r in records],
        "steps": steps if record.steps is None else record.steps,
        "images": len(forget),
        "compiled": compile,
    }


def psg_row(psg: dict[str, Any], comp: dict[str, float], phi: float) -> dict[str, Any]:
    """img/s, phase split and efficiencies of one psg run against its measured passes."""
    steps, unlearn_s = psg["steps"], max(psg["unlearn_s"], 1e-9)
    attack_ideal = steps * (
        INNER_STEPS * comp["labeler_forward_input_grad"] + comp["labeler_forward"]
    )
    update_ideal = steps * (comp["train_step"] + (comp["forward_backward"] if phi else 0.0))
    tau = comp["train_step"]
    modelled = steps * tau * (INNER_STEPS * 2 / 3 + 1 / 3 + 1 + (1 if phi else 0))
    phases = psg["attack_s"] + psg["update_s"]
    return {
        **psg,
        "phi": phi,
        "img_s": psg["images"] / unlearn_s,
        "attack_frac": psg["attack_s"] / phases if phases else None,
        "update_frac": psg["update_s"] / phases if phases else None,
        "ideal_s": attack_ideal + update_ideal,
        "efficiency": (attack_ideal + update_ideal) / unlearn_s,
        "attack_efficiency": attack_ideal / psg["attack_s"] if psg["attack_s"] else None,
        "update_efficiency": update_ideal / psg["update_s"] if psg["update_s"] else None,
        "efficiency_modelled": modelled / unlearn_s,
    }


def bench_model(
    request: ModelRequest, device: torch.device, args: argparse.Namespace
) -> dict[str, Any]:
    spec = request.spec
    batch = args.batch or (spec.cuda_batch if device.type == "cuda" else 32)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    net = to_device(request.build().float(), device)
    card = request.card()
    # Distinct batches for the timed loops (not one buffer that sits in cache).
    pool = [synthetic(batch, spec, device, gen) for _ in range(max(1, min(args.steps, 8)))]
    iters = dict(iters=args.steps, warmup=args.warmup, repeats=args.repeats)
    comp_raw = measure_components(net, pool, device, **iters)
    comp = {k: v["s"] for k, v in comp_raw.items()}
    result: dict[str, Any] = {
        "input": [spec.in_channels, spec.size, spec.size],
        "num_classes": spec.num_classes,
        "batch": batch,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_img_s": batch / comp["train_step"],
        "components_ms": {k: 1e3 * v for k, v in comp.items()},
        "components_window_mean_ms": {
            k: [1e3 * w for w in v["windows_s"]] for k, v in comp_raw.items()
        },
        "train_compiled_img_s": None,
    }
    if args.compile:
        try:
            compiled = measure_compiled_train(net, pool, device, **iters)
            result["train_compiled_img_s"] = batch / compiled["s"]
            result["train_compiled_first_call_s"] = compiled["first_call_s"]
        except Exception as exc:  # a compiler failure must not cost the eager numbers
            result["train_compiled_error"] = f"{type(exc).__name__}: {exc}"[:500]
    del pool
    forget = synthetic(batch * args.steps, spec, device, gen)
    retain = synthetic(batch * args.steps, spec, device, gen)
    result["psg"] = {}
    for phi in PHIS:
        psg = measure_psg(
            net,
            card,
            forget,
            retain,
            device,
            phi=phi,
            batch=batch,
            steps=args.steps,
            warmup=args.warmup,
            repeats=args.repeats,
            seed=args.seed,
        )
        result["psg"][f"phi{phi:g}"] = psg_row(psg, comp, phi)
    if args.compile and result["train_compiled_img_s"]:
        try:  # psg with both networks compiled, against compiled plain training
            psg = measure_psg(
                net, card, forget, retain, device, phi=0.0, batch=batch, steps=args.steps,
                warmup=args.warmup, repeats=args.repeats, seed=args.seed, compile=True,
            )  # fmt: skip
            row = psg_row(psg, comp, 0.0)
            tau = batch / result["train_compiled_img_s"]
            row["efficiency_vs_compiled_train"] = psg["steps"] * 2 * tau / psg["unlearn_s"]
            result["psg"]["phi0 compiled"] = row
        except Exception as exc:
            result["psg_compiled_error"] = f"{type(exc).__name__}: {exc}"[:500]
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


# --- the machine and the outputs --------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def device_kind(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") or "cuda"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "device_kind": device_kind(device),
        "device": device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "revise": revise.__version__,
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
    return info


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _split(row: dict[str, Any]) -> str:
    if row.get("attack_frac") is None:
        return "-"
    return f"{100 * row['attack_frac']:.0f}% / {100 * row['update_frac']:.0f}%"


def tables(results: dict[str, Any]) -> str:
    """The main table (one row per model and phi) and the per-pass component times."""
    compiled = any(m.get("train_compiled_img_s") for m in results["models"].values())
    head = ["model", "input", "batch", "train img/s"]
    head += ["compiled img/s"] if compiled else []
    head += ["psg phi", "psg img/s", "attack / update", "attack eff", "update eff"]
    head += ["efficiency", "eff. (model)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    comp_lines = [
        "| model | labeler fwd (ms) | labeler fwd+grad x (ms) | train step (ms) | fwd+bwd (ms) |",
        "|---|---|---|---|---|",
    ]
    for key, m in results["models"].items():
        if "error" in m:
            lines.append(f"| {key} | failed: {m['error'][:80]} |" + " |" * (len(head) - 2))
            continue
        c, h, w = m["input"]
        for row in m["psg"].values():
            cells = [key, f"{c}x{h}x{w}", str(m["batch"]), _num(m["train_img_s"])]
            cells += [_num(m["train_compiled_img_s"])] if compiled else []
            cells += [
                f"{row['phi']:g}" + (" compiled" if row.get("compiled") else ""),
                _num(row["img_s"]),
                _split(row),
                _num(row["attack_efficiency"], 2),
                _num(row["update_efficiency"], 2),
                _num(row["efficiency"], 2),
                _num(row["efficiency_modelled"], 2),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        ms = m["components_ms"]
        comp_lines.append(f"| {key} | " + " | ".join(_num(ms[k], 2) for k in COMPONENTS) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(comp_lines) + "\n"


def markdown_section(results: dict[str, Any]) -> str:
    mach, s = results["machine"], results["settings"]
    kind = mach["device_kind"]
    where = (
        f"{mach['device']} ({mach['gpu_memory_gib']} GiB), host CPU {mach['cpu']}"
        if s["device"] == "cuda"
        else f"{mach['device']} ({mach['cpu_count']} cores), torch threads: {mach['torch_threads']}"
    )
    commit = f" @ {mach['git_commit']}" if mach.get("git_commit") else ""
    notes = [
        f"{where}; torch {mach['torch']}, {s['dtype']}; revise {mach['revise']}{commit}; "
        f"{mach['date']}",
        f"components and plain training: median step of {s['repeats']} x {s['steps']} timed "
        f'steps after {s["warmup"]} warm-up; psg: `unlearn(method="psg")`, 1 inner step, '
        f"{s['steps']} steps at the model's batch, median of {s['repeats']} run(s)"
        f"{' after a warm-up run' if s['warmup'] else ''}; "
        f"cudnn.benchmark {'on' if s['cudnn_benchmark'] else 'off'}"
        + (
            "; compiled: plain training, and psg phi 0 with both networks compiled "
            "(`unlearn(compile=True)`; its efficiency column uses the eager passes, the JSON "
            "also holds efficiency_vs_compiled_train)"
            if s["compile"]
            else ""
        ),
        "efficiency = psg's passes timed alone / psg's unlearn time; eff. (model) uses the "
        "train-step cost model instead (see benchmarks/README.md)",
        f"command: `{s['command'].strip()}`",
    ]
    return (
        f"<!-- throughput:{kind} -->\n## {kind}\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n\n"
        + tables(results)
        + f"<!-- /throughput:{kind} -->"
    )


MARKDOWN_HEADER = (
    "# Training and unlearning throughput\n\n"
    "Written by `python benchmarks/throughput.py`: one section per device kind; a rerun on a "
    "device kind replaces its own section and keeps the others. What each number means: "
    "[benchmarks/README.md](../../benchmarks/README.md).\n"
)


def merge_markdown(
    existing: str | None,
    section: str,
    kind: str,
    *,
    tag: str = "throughput",
    header: str = MARKDOWN_HEADER,
) -> str:
    """``existing`` with this device kind's section (between ``<!-- tag:kind -->`` markers)
    replaced, or appended; a new file starts with ``header``."""
    if not existing:
        return header + "\n" + section + "\n"
    pattern = re.compile(
        rf"<!-- {tag}:{re.escape(kind)} -->.*?<!-- /{tag}:{re.escape(kind)} -->",
        re.DOTALL,
    )
    if pattern.search(existing):
        return pattern.sub(lambda _: section, existing, count=1)
    return existing.rstrip("\n") + "\n\n" + section + "\n"


def rounded(obj: Any, digits: int = 6) -> Any:
    """Floats to ``digits`` significant digits, all the way down (timer noise is far larger)."""
    if isinstance(obj, float) and math.isfinite(obj):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def write_outputs(results: dict[str, Any], out: Path, markdown: Path | None) -> None:
    write_json_atomic(out, rounded(results))
    if markdown is not None:
        existing = markdown.read_text(encoding="utf-8") if markdown.exists() else None
        kind = results["machine"]["device_kind"]
        write_text_atomic(markdown, merge_markdown(existing, markdown_section(results), kind))


# --- entry point ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Plain-training and psg-unlearning throughput, and psg's efficiency.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", help=f"comma-separated, of {', '.join(SPECS)} (default by device)")
    p.add_argument(
        "--batch",
        type=int,
        help="batch for every model (default: 32 CPU; CUDA 1024, 256 at 224x224)",
    )
    p.add_argument("--steps", type=int, help="timed steps per window (default 5 CPU, 30 CUDA)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 2 CPU, 10 CUDA)")
    p.add_argument("--repeats", type=int, help="timed windows (default 1 CPU, 3 CUDA)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--compile", action="store_true", help="add a torch.compile training row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        help="JSON path (default benchmarks/results/throughput-<device-kind>.json)",
    )
    p.add_argument(
        "--markdown",
        type=Path,
        default=DEFAULT_MARKDOWN,
        help="Markdown file whose section for this device kind is rewritten",
    )
    p.add_argument("--no-markdown", action="store_true", help="write no Markdown")
    args = p.parse_args(argv)
    for name in ("batch", "steps", "warmup", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            p.error(f"--{name} must be >= {0 if name == 'warmup' else 1}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it wrote to the JSON file."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps or (30 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    args.repeats = args.repeats or (3 if cuda else 1)
    requests = parse_models(args.models or DEFAULT_MODELS["cuda" if cuda else "cpu"])
    if cuda:
        if device.index is not None:  # set_device rejects a bare "cuda"
            torch.cuda.set_device(device)
        # as revise's unlearning sets it (fixed shapes: cuDNN picks algorithms by timing once),
        # so plain training and psg are timed alike
        torch.backends.cudnn.benchmark = True
    info = machine_info(device)
    out = args.out or REPO / "benchmarks" / "results" / f"throughput-{info['device_kind']}.json"
    markdown = None if args.no_markdown else args.markdown
    results: dict[str, Any] = {
        "benchmark": "throughput",
        "machine": info,
        "settings": {
            "device": device.type,
            "dtype": "bf16 autocast, channels_last" if cuda else "fp32",
            "batch": args.batch or ("per model" if cuda else 32),
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "compile": args.compile,
            "psg_compiled": bool(args.compile),
            "cudnn_benchmark": cuda,
            "seed": args.seed,
            "psg_config": {"epochs": 1, "steps": INNER_STEPS, "phi": list(PHIS)},
            "command": "python benchmarks/throughput.py " + " ".join(argv or sys.argv[1:]),
        },
        "cost_model": {
            "per_step": "T*labeler_forward_input_grad + labeler_forward + train_step "
            "(+ forward_backward when phi > 0); T = inner search steps = 1",
            "modelled_tau_units": "forward 1/3, forward + input grad 2/3, train step 1, "
            "forward + backward 1 (tau = measured train step)",
        },
        "models": {},
    }
    results["settings"]["models"] = [r.key for r in requests]
    print(
        f"{info['device']} | torch {info['torch']} | {results['settings']['dtype']} | "
        f"steps {args.steps}, warm-up {args.warmup}, repeats {args.repeats}",
        flush=True,
    )
    if not any(r.spec.name == "resnet50" for r in requests):
        print("  (resnet50 at 224x224 not requested: add it with --models ...,resnet50)")
    for request in requests:
        t0 = time.perf_counter()
        try:
            results["models"][request.key] = bench_model(request, device, args)
        except Exception as exc:  # one model failing (e.g. out of memory) keeps the others
            results["models"][request.key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        finally:
            if cuda:
                torch.cuda.empty_cache()
        status = results["models"][request.key].get("error", "ok")
        print(f"  {request.key}: {status} ({time.perf_counter() - t0:.1f} s)", flush=True)
        write_outputs(results, out, markdown)
    print()
    print(tables(results), end="")
    print(f"\nwrote {out}" + (f" and {markdown}" if markdown else ""))
    return results


if __name__ == "__main__":
    res = main()
    sys.exit(1 if any("error" in m for m in res["models"].values()) else 0)
