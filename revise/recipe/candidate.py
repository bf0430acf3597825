"""The stages that compute the candidate model - the index of the site's images, the
unlearning runs, their merge - each built as its equivalent command line (shown, recorded,
fingerprinted) and its call of the library function that the command calls too."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revise import distributed
from revise.errors import RevisionError, UsageError
from revise.recipe.checks import _check_name
from revise.recipe.document import DataSection, RunSection
from revise.recipe.model import (
    Stage,
    StageCall,
    _Build,
    _hint,
    _opt,
    _paths,
    _Problems,
    _section,
    _Spelling,
    _text,
)
from revise.recipe.run import call_args
from revise.stages._options import parse_scalar
from revise.stages.index import failure_lines, index_site
from revise.stages.merge import MergeOptions, merge_to_run
from revise.stages.merge import summary as merge_summary
from revise.stages.unlearn import UnlearnJob, unlearn_run
from revise.stages.unlearn import summary as run_summary
from revise.unlearn.api import make_config
from revise.unlearn.auto import AUTO
from revise.unlearn.base import METHODS
from revise.validate.criteria import load_criteria

if TYPE_CHECKING:
    from revise.stages.unlearn import UnlearnJob


def _data_stage(
    problems: _Problems, data: DataSection | None, path, workdir: Path, stages: list[Stage]
) -> Path:
    """The manifest the stages read: the recipe's, or the one an index stage writes from its
    images. Neither or both given (a problem already): a manifest that no stage writes."""
    default = workdir / "manifest.parquet"
    if data is None or (data.manifest is None) == (data.images is None):
        return default
    if data.manifest is not None:
        return path("data.manifest", data.manifest) or default
    root = path("data.images", data.images)
    labels = path("data.labels", data.labels)
    out = default
    site, loader = data.site, data.loader
    args = ["index", str(root), "-o", str(out)]
    args += _opt("--labels", labels) + _opt("--site", site) + _opt("--loader", loader)

    def run(call: StageCall) -> int:

        assert root is not None  # a missing folder stops the plan
        result = index_site(
            root,
            out,
            labels=labels,
            site="" if site is None else site,
            loader="auto" if loader is None else loader,
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


def _unlearn_stages(b: _Build, runs: list[RunSection | None]) -> dict[str, Path]:

    problems, model = b.problems, b.model
    out: dict[str, Path] = {}
    for i, run in enumerate(runs, 1):
        if run is None:  # not a mapping: a problem already
            continue
        where = f"unlearn[{i}]"
        method = run.method or AUTO  # as `revise unlearn` without --method
        name = run.name or method
        _check_name(problems, f"{where}.name", name)
        if name in out:
            problems.add(f"{where}.name", f"{name!r} is used twice; give each run a name:")
        settings = run.settings or {}
        if method == AUTO:
            if settings:
                problems.add(f"{where}.settings", "method auto takes no settings: drop them")
        elif method not in METHODS:
            problems.add(f"{where}.method", f"unknown method {method!r}{_hint(method, METHODS)}")
        else:
            try:
                make_config(method, settings)
            except UsageError as exc:
                problems.add(f"{where}.settings", str(exc))
        folder = b.workdir / "runs" / name
        out[name] = folder
        pairs = [a for k, v in settings.items() for a in ("--set", f"{k}={_text(v)}")]
        seed = b.seed if run.seed is None else run.seed
        criteria = b.criteria if method == AUTO else None  # what auto aims under
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
            *(["--criteria", str(criteria)] if criteria else []),
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
                settings={k: parse_scalar(_text(v)) for k, v in settings.items()},
                card=b.card[0] if b.card else None,
                arch=b.arch,
                checkpoint_every=b.checkpoint_every,
                compile=b.compile,
                cache=b.cache,
                device=b.device,
                seed=seed,
                criteria=criteria,
            )
        b.stages.append(
            Stage(
                f"unlearn:{name}",
                args,
                folder,
                partial(_unlearn, job, b.workers, args),
                inputs=[
                    *([model] if model else []),
                    *b.data_inputs(),
                    *([criteria] if criteria else []),
                ],
                after=[s.name for s in b.stages if s.name == "index"],
                partial=folder.with_name(folder.name + ".partial"),
                spell=b.spell(where, settings=f"{where}.settings"),
            )
        )
    return out


def _unlearn(job: UnlearnJob | None, workers: int, args: list[str], call: StageCall) -> int:
    """One unlearning run: in this process, or in ``workers`` torchrun workers (one per GPU)
    that run its command line, as `revise unlearn --nproc-per-node` does."""

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
    for line in run_summary(result.record) if result is not None else []:
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

    options = _section(b.problems, "merge", merge, MergeOptions, b.path)
    if options is None:
        return b.workdir / "merged"
    for key in ("reference", "base"):  # `revise merge` loads them without a card
        b.check_model(f"merge.{key}", getattr(options, key), with_card=False)
    criteria = options.criteria
    if criteria is not None and criteria.is_file():
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
        for line in merge_summary(result.record):
            call.say(line)
        return 0

    after = [s.name for s in b.stages if s.name.startswith("unlearn:") or s.name == "index"]
    inputs = [*_paths(options), *b.data_inputs()]
    b.stages.append(
        Stage("merge", args, out, run, inputs=inputs, after=after, spell=b.spell("merge"))
    )
    return out
