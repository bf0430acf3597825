"""Reading and checking a recipe into a :class:`~revise.recipe.model.Plan`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from revise._io import (
    not_utf8,
)
from revise.errors import UsageError
from revise.recipe.builders import (
    _data_stage,
    _export_stage,
    _merge_stage,
    _sign_stage,
    _unlearn_stages,
    _validate_stage,
)
from revise.recipe.checks import _check_runtime, _check_selection
from revise.recipe.model import TOP_LEVEL, Plan, Stage, _Build, _hint, _int, _opt, _Problems
from revise.recipe.selection import _fingerprint, shown_selection


def load_plan(recipe: str | Path) -> Plan:
    """Parse and check the whole recipe; every problem found is reported in one UsageError."""
    recipe = Path(recipe).resolve()
    doc = _read_recipe(recipe)
    problems = _Problems(recipe)
    if not isinstance(doc, Mapping):
        raise UsageError(f"{recipe}: a recipe is a YAML mapping (see `revise run --help`)")
    base = recipe.parent
    for key in doc:
        if key not in TOP_LEVEL:
            problems.add(str(key), f"unknown key{_hint(str(key), TOP_LEVEL)}")
    for key in ("model", "data", "forget", "unlearn"):
        if key not in doc:
            problems.add(key, "missing (required)")

    def path(where: str, value: Any, *, must_exist: bool = True) -> Path | None:
        if value is None:
            return None
        p = (base / str(value)).resolve()
        if must_exist and not p.exists():
            problems.add(where, f"{p} does not exist")
        return p

    workdir = path("workdir", doc.get("workdir", "revise-run"), must_exist=False)
    model = path("model", doc.get("model"))
    card = path("card", doc.get("card"))
    cache = path("cache", doc.get("cache"), must_exist=False) or workdir / "cache"
    device = str(doc.get("device", "auto"))
    seed = _int(problems, "seed", doc.get("seed", 0))
    every = _int(problems, "checkpoint_every", doc.get("checkpoint_every", 50), minimum=0)
    workers = _int(problems, "nproc_per_node", doc.get("nproc_per_node", 1), minimum=1)
    # torchrun workers for each unlearning run (one per GPU), as `revise unlearn` launches them
    compiled = doc.get("compile", False)
    if not isinstance(compiled, bool):
        problems.add("compile", f"{compiled!r} is not true or false")
    forget = doc.get("forget")
    if forget is not None:
        _check_selection(problems, str(forget))
    common = [*(["--card", str(card)] if card else []), *_opt("--arch", doc.get("arch"))]
    stages: list[Stage] = []
    manifest = _data_stage(problems, doc.get("data"), path, workdir, stages)
    b = _Build(
        problems,
        path,
        workdir,
        model,
        manifest,
        forget,
        common,
        [card] if card else [],
        device,
        seed,
        cache,
        stages,
        arch=None if doc.get("arch") is None else str(doc.get("arch")),
    )
    _check_runtime(b)
    b.checkpoint_every, b.workers, b.compile = every, workers, compiled is True
    runs = _unlearn_stages(b, doc.get("unlearn"))
    candidate = _merge_stage(b, doc.get("merge"), runs)
    bundle = workdir / "bundle"
    _export_stage(b, doc.get("export"), candidate, bundle)
    validate = _validate_stage(b, doc.get("validate"))
    _sign_stage(problems, doc.get("sign"), path, bundle, validate, stages)
    problems.raise_if_any()
    resolved = _resolved(doc, model, card, workdir, manifest, cache, device, seed, stages)
    for stage in stages:
        stage.fingerprint = _fingerprint(stage, {s.name: s.fingerprint for s in stages})
    return Plan(recipe, workdir, resolved, stages)


def _read_recipe(recipe: Path) -> Any:
    """The recipe's YAML document; a file that is not UTF-8 text or not YAML is a UsageError
    on one line."""
    try:
        text = recipe.read_text(encoding="utf-8-sig")  # a byte-order mark is harmless
    except UnicodeDecodeError:
        hint = "save it as UTF-8, e.g. iconv -f latin1 -t utf-8"
        raise not_utf8(recipe, "recipe", hint=hint) from None
    except OSError as exc:
        raise UsageError(f"cannot read recipe {recipe}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        said = " ".join(str(exc).split())  # PyYAML's message spans lines
        raise UsageError(f"recipe {recipe} is not valid YAML: {said}") from None


def _resolved(doc, model, card, workdir, manifest, cache, device, seed, stages) -> dict[str, Any]:
    """The recipe as run: absolute paths, every hyperparameter of every method, the commands."""
    from revise.unlearn.api import make_config
    from revise.unlearn.auto import AUTO

    runs = []
    for run in doc.get("unlearn") or []:
        method = str(run.get("method") or AUTO)
        if method == AUTO:  # it chooses its settings; run.json records them
            runs.append({**dict(run), "method": AUTO, "settings": {}})
            continue
        config = make_config(method, run.get("settings") or {})
        runs.append({**dict(run), "settings": dataclasses.asdict(config)})
    recipe = {k: v for k, v in doc.items() if k != "unlearn"} | {"unlearn": runs}
    # The copy goes into the bundle: selections as describe() writes them, never patient IDs.
    if recipe.get("forget") is not None:
        recipe["forget"] = shown_selection(recipe["forget"])
    validate = recipe.get("validate")
    if isinstance(validate, Mapping):
        validate = dict(validate)
        for key in ("heldout_select", "heldout-select"):
            if validate.get(key) is not None:
                validate[key] = shown_selection(validate[key])
        recipe["validate"] = validate
    return {
        "recipe": recipe,
        "resolved": {
            "workdir": str(workdir),
            "model": str(model),
            "card": str(card) if card else None,
            "manifest": str(manifest),
            "cache": str(cache),
            "device": device,
            "seed": seed,
        },
        "commands": {stage.name: ["revise", *stage.shown()] for stage in stages},
    }
