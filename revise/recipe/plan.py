"""Reading and checking a recipe into a :class:`~revise.recipe.model.Plan`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from revise._io.text import not_utf8
from revise.errors import UsageError
from revise.recipe.candidate import _data_stage, _merge_stage, _unlearn_stages
from revise.recipe.checks import _check_runtime, _check_selection
from revise.recipe.document import Document, read_document
from revise.recipe.model import Plan, Stage, _Build, _opt, _Problems
from revise.recipe.release import _export_stage, _sign_stage, _validate_stage
from revise.recipe.selection import _fingerprint, shown_selection
from revise.unlearn.api import make_config
from revise.unlearn.auto import AUTO


def load_plan(recipe: str | Path) -> Plan:
    """Parse and check the whole recipe; every problem found is reported in one UsageError."""
    recipe = Path(recipe).resolve()
    problems = _Problems(recipe)
    doc = _read_recipe(recipe)
    document = read_document(doc, recipe, problems)  # the keys and their types
    top = document.recipe
    base = recipe.parent

    def path(where: str, value: Any, *, must_exist: bool = True) -> Path | None:
        if value is None:
            return None
        p = (base / str(value)).resolve()
        if must_exist and not p.exists():
            problems.add(where, f"{p} does not exist")
        return p

    workdir = path("workdir", top.workdir, must_exist=False)
    assert workdir is not None  # it has a default
    model = path("model", top.model)
    card = path("card", top.card)
    cache = path("cache", top.cache, must_exist=False) or workdir / "cache"
    if top.forget is not None:
        _check_selection(problems, top.forget)
    common = [*(["--card", str(card)] if card else []), *_opt("--arch", top.arch)]
    stages: list[Stage] = []
    manifest = _data_stage(problems, document.data, path, workdir, stages)
    b = _Build(
        problems,
        path,
        workdir,
        model,
        manifest,
        top.forget,
        common,
        [card] if card else [],
        top.device,
        top.seed,
        cache,
        stages,
        arch=top.arch,
    )
    _check_runtime(b)
    b.checkpoint_every, b.workers, b.compile = top.checkpoint_every, top.nproc_per_node, top.compile
    checks = top.validate_
    if isinstance(checks, Mapping) and checks.get("criteria") is not None:  # fixed before the run
        b.criteria = path("validate.criteria", checks["criteria"], must_exist=False)
    runs = _unlearn_stages(b, document.runs)
    candidate = _merge_stage(b, top.merge, runs)
    bundle = workdir / "bundle"
    _export_stage(b, top.export, candidate, bundle)
    validate = _validate_stage(b, top.validate_)
    _sign_stage(problems, document.sign, path, bundle, validate, stages)
    problems.raise_if_any()
    resolved = _resolved(doc, document, model, card, workdir, manifest, cache, stages)
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


def _resolved(
    doc: Mapping, document: Document, model, card, workdir, manifest, cache, stages
) -> dict[str, Any]:
    """The recipe as run: absolute paths, every hyperparameter of every method, the commands.
    ``doc``: the recipe as written; ``document``: as read (a recipe without problems)."""

    runs = []
    for written, run in zip(doc["unlearn"], document.runs, strict=True):
        assert run is not None  # else the plan is refused
        method = run.method or AUTO
        if method == AUTO:  # it chooses its settings; run.json records them
            runs.append({**written, "method": AUTO, "settings": {}})
            continue
        config = make_config(method, run.settings or {})
        runs.append({**written, "settings": dataclasses.asdict(config)})
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
            "device": document.recipe.device,
            "seed": document.recipe.seed,
        },
        "commands": {stage.name: ["revise", *stage.shown()] for stage in stages},
    }
