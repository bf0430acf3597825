"""One builder per stage: the stage's equivalent command line (shown, recorded,
fingerprinted) and its call of the library function that the command calls too."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revise._io import (
    RESOLVED_RECIPE,
)
from revise.errors import RevisionError, UsageError
from revise.recipe.checks import _check_heldout, _check_name, _check_selection
from revise.recipe.model import (
    DATA_KEYS,
    RUN_KEYS,
    SIGN_KEYS,
    Stage,
    StageCall,
    _Build,
    _hint,
    _int,
    _opt,
    _paths,
    _section,
    _Spelling,
    _text,
)
from revise.recipe.run import call_args
from revise.recipe.selection import _selection_files
from revise.stages._options import parse_scalar

if TYPE_CHECKING:
    from revise.stages.unlearn import UnlearnJob


def _data_stage(problems, data, path, workdir: Path, stages: list[Stage]) -> Path:
    if not isinstance(data, Mapping):
        if data is not None:
            problems.add("data", "a mapping: {manifest: FILE} or {images: FOLDER, labels: CSV}")
        return workdir / "manifest.parquet"
    for key in data:
        if key not in DATA_KEYS:
            problems.add(f"data.{key}", f"unknown key{_hint(str(key), DATA_KEYS)}")
    if ("manifest" in data) == ("images" in data):
        problems.add("data", "give exactly one of manifest: or images:")
        return workdir / "manifest.parquet"
    if "manifest" in data:
        return path("data.manifest", data["manifest"]) or workdir / "manifest.parquet"
    root = path("data.images", data["images"])
    labels = path("data.labels", data.get("labels"))
    out = workdir / "manifest.parquet"
    site, loader = data.get("site"), data.get("loader")
    args = ["index", str(root), "-o", str(out)]
    args += _opt("--labels", labels) + _opt("--site", site) + _opt("--loader", loader)

    def run(call: StageCall) -> int:
        from revise.stages.index import failure_lines, index_site

        assert root is not None  # a missing folder stops the plan
        result = index_site(
            root,
            out,
            labels=labels,
            site="" if site is None else str(site),
            loader="auto" if loader is None else str(loader),
            overwrite=call.overwrite,
            say=call.say,
        )
        for line in failure_lines(result):
            call.tell(line)
        return 0

    spell = _Spelling("data", {"root": "data.images", "labels": "data.labels"})
    inputs = [p for p in (root, labels) if p]
    stages.append(Stage("index", args, out, run, inputs=inputs, spell=spell))
    return out


def _unlearn_stages(b: _Build, runs: Any) -> dict[str, Path]:
    from revise.stages.unlearn import UnlearnJob
    from revise.unlearn.api import make_config
    from revise.unlearn.auto import AUTO
    from revise.unlearn.base import METHODS

    problems, model = b.problems, b.model
    if runs is None:
        return {}
    if not isinstance(runs, list) or not runs:
        problems.add("unlearn", "a list of runs, e.g. [{method: psg, settings: {lr: 0.001}}]")
        return {}
    out: dict[str, Path] = {}
    for i, run in enumerate(runs, 1):
        where = f"unlearn[{i}]"
        if not isinstance(run, Mapping):
            problems.add(where, "a mapping with method: (default auto), settings:, name:, seed:")
            continue
        for key in run:
            if key not in RUN_KEYS:
                problems.add(f"{where}.{key}", f"unknown key{_hint(str(key), RUN_KEYS)}")
        method = str(run.get("method") or AUTO)  # as `revise unlearn` without --method
        name = str(run.get("name") or method)
        _check_name(problems, f"{where}.name", name)
        if name in out:
            problems.add(f"{where}.name", f"{name!r} is used twice; give each run a name:")
        settings = run.get("settings") or {}
        if method == AUTO:
            if settings:
                problems.add(f"{where}.settings", "method auto takes no settings: drop them")
        elif method not in METHODS:
            problems.add(f"{where}.method", f"unknown method {method!r}{_hint(method, METHODS)}")
        elif not isinstance(settings, Mapping):
            problems.add(f"{where}.settings", "a mapping name: value")
        else:
            try:
                make_config(method, settings)
            except UsageError as exc:
                problems.add(f"{where}.settings", str(exc))
        folder = b.workdir / "runs" / name
        out[name] = folder
        given = dict(settings) if isinstance(settings, Mapping) else {}
        pairs = [a for k, v in given.items() for a in ("--set", f"{k}={_text(v)}")]
        seed = _int(problems, f"{where}.seed", run["seed"]) if "seed" in run else b.seed
        args = [
            "unlearn",
            "--model",
            str(model),
            *b.selection(),
            "--method",
            method,
            *pairs,
            "-o",
            str(folder),
            "--device",
            b.device,
            "--seed",
            str(seed),
            "--cache",
            str(b.cache),
            "--checkpoint-every",
            str(b.checkpoint_every),
            *(["--nproc-per-node", str(b.workers)] if b.workers > 1 else []),
            *(["--compile"] if b.compile else []),
            *b.common,
        ]
        job = None
        if model is not None and b.forget is not None:
            job = UnlearnJob(
                model=model,
                manifest=b.manifest,
                forget=str(b.forget),
                out=folder,
                method=method,
                # as the command line reads them: YAML 1.1 reads 1e-3 as text
                settings={k: parse_scalar(_text(v)) for k, v in given.items()},
                card=b.card[0] if b.card else None,
                arch=b.arch,
                checkpoint_every=b.checkpoint_every,
                compile=b.compile,
                cache=b.cache,
                device=b.device,
                seed=seed,
            )
        b.stages.append(
            Stage(
                f"unlearn:{name}",
                args,
                folder,
                partial(_unlearn, job, b.workers, args),
                inputs=[*([model] if model else []), *b.data_inputs()],
                after=[s.name for s in b.stages if s.name == "index"],
                partial=folder.with_name(folder.name + ".partial"),
                spell=b.spell(where, settings=f"{where}.settings"),
            )
        )
    return out


def _unlearn(job: UnlearnJob | None, workers: int, args: list[str], call: StageCall) -> int:
    """One unlearning run: in this process, or in ``workers`` torchrun workers (one per GPU)
    that run its command line, as `revise unlearn --nproc-per-node` does."""
    from revise import distributed
    from revise.stages.unlearn import summary, unlearn_run

    assert job is not None  # a plan without a model or selection is refused
    if workers > 1:
        code = distributed.relaunch(workers, [*call.global_args, *call_args(args, call)])
        if code != 0:
            raise RevisionError(
                f"the unlearning run {job.out.name} failed in its torchrun workers (exit "
                f"{code}); their error is above"
            )
        return 0
    result = unlearn_run(
        job, overwrite=call.overwrite, resume=call.resume, say=call.say, progress=call.progress
    )
    for line in summary(result.record) if result is not None else []:
        call.say(line)
    call.say(f"run written to {job.out}")
    return 0


def _merge_stage(b: _Build, merge: Any, runs: dict[str, Path]) -> Path:
    if merge is None:
        if len(runs) > 1:
            b.problems.add("merge", f"{len(runs)} unlearning runs need a merge: section")
        return next(iter(runs.values()), b.workdir / "runs" / "missing")
    if len(runs) < 2:
        b.problems.add("merge", "merging needs at least two unlearning runs")
    from revise.stages.merge import MergeOptions

    options = _section(b.problems, "merge", merge, MergeOptions, b.path)
    if options is None:
        return b.workdir / "merged"
    for key in ("reference", "base"):  # `revise merge` loads them without a card
        b.check_model(f"merge.{key}", getattr(options, key), with_card=False)
    criteria = options.criteria
    if criteria is not None and criteria.is_file():
        from revise.validate.criteria import load_criteria

        b.problems.check("merge.criteria", lambda: load_criteria(criteria))
    names = list(runs)
    renamed = {  # runs are named in the recipe, folders in the command
        key: str(names.index(str(getattr(options, key))))
        for key in ("backbone", "head")
        if str(getattr(options, key)) in runs
    }
    options = options.model_copy(update=renamed)
    out = b.workdir / "merged"
    args = [
        "merge",
        *map(str, runs.values()),
        "-o",
        str(out),
        *b.selection(),
        *b.runtime(),
        *options.flags(),
    ]

    def run(call: StageCall) -> int:
        from revise.stages.merge import merge_to_run, summary

        result = merge_to_run(
            list(runs.values()),
            out,
            options,
            manifest=b.manifest,
            forget=str(b.forget),
            cache=b.cache,
            device=b.device,
            seed=b.seed,
            overwrite=call.overwrite,
            say=call.say,
        )
        for line in summary(result.record):
            call.say(line)
        return 0

    after = [s.name for s in b.stages if s.name.startswith("unlearn:") or s.name == "index"]
    inputs = [*_paths(options), *b.data_inputs()]
    b.stages.append(
        Stage("merge", args, out, run, inputs=inputs, after=after, spell=b.spell("merge"))
    )
    return out


def _export_stage(b: _Build, export: Any, candidate: Path, bundle: Path) -> None:
    from revise.stages.export import ExportOptions

    options = _section(b.problems, "export", export, ExportOptions, b.path)
    if options is None:
        return
    recipe = b.workdir / RESOLVED_RECIPE
    args = ["export", str(candidate), "-o", str(bundle), "--data", str(b.manifest)]
    args += ["--recipe", str(recipe), "--cache", str(b.cache), *options.flags()]

    def run(call: StageCall) -> int:
        from revise.stages.export import export_bundle

        export_bundle(
            candidate,
            bundle,
            options,
            manifest=b.manifest,
            recipe=recipe,
            cache=b.cache,
            overwrite=call.overwrite,
            say=call.say,
        )
        return 0

    after = [s.name for s in b.stages if s.output == candidate or s.name == "index"]
    spell = b.spell("export")
    b.stages.append(
        Stage("export", args, bundle, run, inputs=_paths(options), after=after, spell=spell)
    )


def _validate_stage(b: _Build, validate: Any) -> Stage | None:
    if validate is None:
        return None
    from revise.stages.validate import ValidateOptions

    problems, path = b.problems, b.path
    section = dict(validate) if isinstance(validate, Mapping) else validate
    criteria = None
    if isinstance(section, dict) and "criteria" in section:
        criteria = path("validate.criteria", section.pop("criteria")) or Path("<missing>")
    elif isinstance(section, dict):
        problems.add("validate.criteria", "missing: the acceptance criteria file")
    options = _section(problems, "validate", section, ValidateOptions, path)
    if options is None:
        return None
    if options.heldout is not None and not options.is_url():
        options = options.model_copy(
            update={"heldout": str(path("validate.heldout", options.heldout))}
        )
    held_select = options.heldout_select
    if held_select is not None:
        _check_selection(problems, held_select, "validate.heldout_select")
    local = Path(options.heldout) if options.heldout and not options.is_url() else None
    _check_heldout(problems, local or options.heldout, held_select)
    b.check_model("validate.reference", options.reference)
    if criteria is not None and criteria.exists():
        from revise.validate.criteria import load_criteria
        from revise.validate.gate_checks import check_models

        have = ["original", "onnx", *(["reference"] if options.reference else [])]
        spelling = b.spell("validate")
        try:
            check_models(load_criteria(criteria), have)
        except UsageError as exc:  # the inputs it asks for, as the recipe keys that give them
            problems.add("validate.criteria", exc.said_as(spelling.get))
    out = b.workdir / "validation"
    bundle = b.workdir / "bundle"
    args = [
        "validate",
        str(bundle),
        "--original",
        str(b.model),
        *b.selection(),
        "--criteria",
        str(criteria),
        "-o",
        str(out),
        *b.runtime(),
        *b.common,
        *options.flags(),
    ]

    def run(call: StageCall) -> int:
        from revise.stages.validate import validate_model, verdict_lines

        assert b.model is not None and criteria is not None  # else the plan is refused
        result = validate_model(
            bundle,
            b.model,
            b.manifest,
            str(b.forget),
            criteria,
            out,
            options,
            card=b.card[0] if b.card else None,
            arch=b.arch,
            cache=b.cache,
            device=b.device,
            seed=b.seed,
            overwrite=call.overwrite,
            say=call.say,
        )
        for line in verdict_lines(result):
            call.tell(line)
        call.tell(f"{result.report['summary']}; report in {out}/report.html")
        return 0 if result.passed else 1

    inputs = [
        *([criteria] if criteria else []),
        *([b.model] if b.model else []),
        *_paths(options),
        *([local] if local else []),
        *b.data_inputs(),
        *(_selection_files(held_select) if held_select is not None else []),
    ]
    spell = b.spell("validate", model="the bundle")
    stage = Stage("validate", args, out, run, inputs=inputs, after=["export"], spell=spell)
    b.stages.append(stage)
    return stage


def _sign_stage(problems, sign, path, bundle: Path, validate, stages: list[Stage]) -> None:
    if sign is None:
        return
    if not isinstance(sign, Mapping):
        problems.add("sign", "a mapping: {key: FILE, password_env: VAR, allow_unvalidated: bool}")
        return
    for key in sign:
        if key not in SIGN_KEYS:
            problems.add(f"sign.{key}", f"unknown key{_hint(str(key), SIGN_KEYS)}")
    key = path("sign.key", sign.get("key"))
    if key is None:
        problems.add("sign.key", "missing: the private key (make one with `revise keygen`)")
    env = None if sign.get("password_env") is None else str(sign["password_env"])
    if env is not None and env not in os.environ:
        problems.add("sign.password_env", f"the environment variable {env} is not set")
    elif env is not None and not os.environ[env]:
        problems.add("sign.password_env", f"the environment variable {env} is empty")
    elif key is not None and key.is_file():  # as `revise sign` loads it: a key, the password
        from revise.export.signing import load_private_key

        password = os.environ[env].encode("utf-8") if env else None
        problems.check("sign.key", lambda: load_private_key(key, password))
    allow = bool(sign.get("allow_unvalidated", False))
    if validate is None and not allow:
        problems.add("sign", "signing needs a validate: section (or allow_unvalidated: true)")
    args = ["sign", str(bundle), "--key", str(key), *_opt("--password-env", env)]
    args += ["--allow-unvalidated"] if allow else []
    after = ["export"] + (["validate"] if validate else [])

    def run(call: StageCall) -> int:
        from revise.export.bundle import SIGNATURE_NAME
        from revise.export.signing import sign_bundle

        assert key is not None  # else the plan is refused
        password = os.environ[env].encode("utf-8") if env else None
        call.say(f"signing {bundle} with {key} ...")
        record = sign_bundle(bundle, key, password=password, allow_unvalidated=allow)
        verdict = record["validation_verdict"] or "not validated"
        forced = ", signed with allow_unvalidated" if record["allow_unvalidated"] else ""
        call.tell(f"signed {bundle} -> {bundle / SIGNATURE_NAME} (validation: {verdict}{forced})")
        return 0

    inputs = [key] if key else []
    stages.append(
        Stage(
            "sign", args, bundle / "revise.sig", run, inputs=inputs, after=after, overwrites=False
        )
    )
