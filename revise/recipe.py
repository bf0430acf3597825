"""`revise run recipe.yaml`: the whole revision - index, unlearn, merge, export, validate, sign -
from one file, checked as a whole before anything runs, and resumable.

```yaml
workdir: work                    # every output; relative paths are relative to the recipe
model: deployed/                 # the deployed model (card:, arch: for bare weights)
data: {images: site/dicom, labels: site/labels.csv, site: north}  # or {manifest: m.parquet}
forget: 'device == "Borealis CR-7"'
unlearn:
  - {method: psg, settings: {lr: 0.001, phi: 2}}
  - {name: ft, method: finetune, settings: {epochs: 2}}
merge: {search_strengths: true}  # any `revise merge` option; runs are named by `name`
compile: false                   # torch.compile the unlearning runs (revise unlearn --compile)
export: {name: digits, fp16: false}
validate: {criteria: gates.yaml, reference: retrained/}            # any `revise validate` option
sign: {key: keys/revise-signing.key, password_env: REVISE_KEY_PASSWORD}
```

Checked before anything runs, every problem reported in one numbered message (exit 2): the
recipe's keys and values, and its inputs opened as their stages will open them - the device,
the deployed and reference models loaded, the manifest read and the forget selection applied
to it (every ``@file`` read), a held-out manifest, the merge criteria, the signing key opened
with its password - so that nothing fails hours later. Run and bundle names are letters,
digits, '-' and '_' only (folder names inside the workdir).

Each stage calls the library function that the CLI command of the same name calls
(:mod:`revise.stages`), so a recipe does exactly what the commands do; each stage's equivalent
command line is shown, recorded and pasteable. A stage whose output exists and whose fingerprint
(its arguments, the fingerprints of the stages it reads, the digests of its input files and
folders) is unchanged is skipped; an unlearning run interrupted mid-way continues from its
checkpoint. The resolved recipe (absolute paths, every hyperparameter) is stored in the bundle;
its selections are stored as `revise.data.select.describe` writes them (values given for
``patient`` hidden).

Input digests: every path a stage reads from outside the workdir - the deployed model, the
manifest, the image folder and labels, the card, the reference model, the criteria, the held-out
source, the signing key and every ``@file`` named in a selection - goes into the fingerprint. A
file is hashed by content (sha256). A folder is walked in sorted order and each entry adds its
relative path, size and modification time (ns): cheap for an image folder of 100,000 DICOM files,
and a file rewritten in place changes its mtime; a touched file re-runs the stage, which errs on
the safe side. ``@file`` lists of patients are hashed with the site's PHI key (HMAC), like the
selections that name patients, so the state file holds no unkeyed hash of a patient ID.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from revise._io import (
    REPORT_JSON,
    RESOLVED_RECIPE,
    check_output,
    not_utf8,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from revise.errors import RevisionError, SelectionError, UsageError
from revise.registry import did_you_mean
from revise.stages._options import StageOptions, collect, parse_scalar

if TYPE_CHECKING:
    from revise.stages.unlearn import UnlearnJob

TOP_LEVEL = (
    "workdir",
    "model",
    "card",
    "arch",
    "data",
    "forget",
    "unlearn",
    "merge",
    "export",
    "validate",
    "sign",
    "device",
    "seed",
    "cache",
    "checkpoint_every",
    "nproc_per_node",
    "compile",
)
DATA_KEYS = ("manifest", "images", "labels", "site", "loader")  # images: what `revise index` reads
RUN_KEYS = ("name", "method", "settings", "seed")
SIGN_KEYS = ("key", "password_env", "allow_unvalidated")
STATE_FILE = "state.json"
# Options whose value is a selection: the command runs with the text as written, every record
# and log line shows it as describe() writes it (patient values hidden).
SELECTION_FLAGS = ("--forget", "--heldout-select")


@dataclass
class StageCall:
    """How one stage runs this time."""

    overwrite: bool  # its output exists from an earlier run that is now out of date
    resume: bool  # an interrupted unlearning run continues from its checkpoint
    say: Callable[[str], None]  # progress lines (silent with --quiet)
    tell: Callable[[str], None]  # results: the verdict of each gate, unreadable files
    progress: Callable[[str], Any] | None  # a step-progress context manager, as the CLI's
    global_args: list[str]  # --quiet / --debug, for torchrun workers


@dataclass
class Stage:
    name: str
    args: list[str]  # the equivalent revise command line, without "revise"
    output: Path  # exists once the stage is complete
    # the library call: 0, or 1 when the validation gates failed
    run: Callable[[StageCall], int] = field(repr=False, default=lambda call: 0)
    inputs: list[Path] = field(default_factory=list)  # files whose content the stage depends on
    after: list[str] = field(default_factory=list)  # stages whose outputs it reads
    partial: Path | None = None  # unlearning: the <run>.partial folder a checkpoint lives in
    overwrites: bool = True  # replaces an out-of-date output (sign re-signs in place)
    spell: Mapping[str, str] = field(default_factory=dict)  # library option -> recipe key
    fingerprint: str = ""

    def shown(self) -> list[str]:
        """The command line as logs and records show it: selections with patient values
        hidden (the stage itself runs with ``args``)."""
        return shown_args(self.args)


@dataclass
class Plan:
    recipe: Path
    workdir: Path
    resolved: dict[str, Any]
    stages: list[Stage]

    def state_path(self) -> Path:
        return self.workdir / STATE_FILE


class _Problems:
    """Collects every mistake of a recipe so that all are reported at once, numbered on one
    line (as the acceptance criteria's check reports them)."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(" ".join(f"{where}: {message}".split()))  # one line, whatever it quotes

    def check(self, where: str, check: Callable[[], object]) -> None:
        """Run ``check``, the library call a stage makes on one of its inputs (loading the
        model, the manifest, the key): what it refuses is a problem of ``where`` now, not a
        failure when that stage runs, hours later."""
        try:
            check()
        except RevisionError as exc:
            self.add(where, str(exc))

    def raise_if_any(self) -> None:
        if self.items:
            listed = "; ".join(f"({i}) {item}" for i, item in enumerate(self.items, 1))
            raise UsageError(
                f"{self.source} has {len(self.items)} problem(s); nothing was run: {listed}"
            )


@dataclass
class _Build:
    """What every stage builder reads and appends to while a recipe is planned."""

    problems: _Problems
    path: Callable[..., Path | None]  # a recipe path, resolved (and checked) against its folder
    workdir: Path
    model: Path | None
    manifest: Path
    forget: Any
    common: list[str]  # --card / --arch for the commands that load the deployed model
    card: list[Path]  # the card file, when the recipe names one
    device: str
    seed: int
    cache: Path
    stages: list[Stage] = field(default_factory=list)
    arch: str | None = None  # the recipe's arch:, for the stages that load the deployed model
    checkpoint_every: int = 50
    workers: int = 1  # torchrun workers for each unlearning run (one per GPU)
    compile: bool = False

    def spell(self, section: str, **keys: str) -> _Spelling:
        """Library option -> the recipe key that gives it, for a stage of ``section``."""
        top = {"model": "model", "original": "model", "card": "card", "arch": "arch"}
        top |= {"forget": "forget", "cache": "cache", "device": "device", "seed": "seed"}
        top |= {"data": "data", "manifest": "data.manifest", "out": "workdir"}
        return _Spelling(section, top | keys)

    def runtime(self) -> list[str]:
        """--device, --seed, --cache: what every computing stage takes from the recipe."""
        return ["--device", self.device, "--seed", str(self.seed), "--cache", str(self.cache)]

    def selection(self) -> list[str]:
        return ["--data", str(self.manifest), "--forget", str(self.forget)]

    def data_inputs(self) -> list[Path]:
        """What a stage given ``selection()`` reads: the manifest when the recipe names one
        (an index stage's manifest is covered by that stage's fingerprint), the @files of the
        forget selection, the card."""
        given = [self.manifest] if not any(s.name == "index" for s in self.stages) else []
        return [*given, *_selection_files(self.forget), *self.card]

    def check_model(self, where: str, model: Path | None, *, with_card: bool = True) -> None:
        """Load ``model`` as its stage will (with the recipe's card and arch where the stage
        passes them): a file that is not what its name says is a problem now. A missing path
        (or card) is reported already."""
        from revise.models.io import load_model

        if model is None or not model.exists() or not all(c.exists() for c in self.card):
            return
        card = self.card[0] if self.card and with_card else None
        arch = self.arch if with_card else None
        self.problems.check(where, lambda: load_model(model, card=card, architecture=arch))


class _Spelling(dict):
    """Library option -> recipe key: the recipe's own keys, else ``<section>.<option>``."""

    def __init__(self, section: str, known: Mapping[str, str]) -> None:
        super().__init__(known)
        self.section = section

    def __missing__(self, option: str) -> str:
        return f"{self.section}.{option}"

    def get(self, option: str, default: Any = None) -> str:  # every option has a key
        return self[option]


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


def run_plan(
    plan: Plan,
    *,
    say: Callable[[str], None],
    tell: Callable[[str], None] | None = None,
    progress: Callable[[str], Any] | None = None,
    restart: bool = False,
    global_args: list[str] | None = None,
) -> int:
    """Run the stages not already done; 0 when the bundle is complete (validated and, if asked,
    signed), 1 when validation failed (the bundle is left unsigned). ``say``: progress lines;
    ``tell``: results (default ``say``); ``progress(description)``: a step-progress context
    manager for the unlearning runs; ``global_args``: --quiet/--debug for torchrun workers."""
    # new, empty or a recipe's own (its resolved recipe is written first): never a folder of
    # the user's files, nor one holding an input, which the stages would write over
    inputs = [plan.recipe, *(path for stage in plan.stages for path in stage.inputs)]
    check_output(plan.workdir, overwrite=True, inputs=inputs, option="workdir")
    plan.workdir.mkdir(parents=True, exist_ok=True)
    state = {} if restart else _read_state(plan.state_path())
    done, started = state.setdefault("done", {}), state.setdefault("started", {})
    write_text_atomic(
        plan.workdir / RESOLVED_RECIPE, yaml.safe_dump(plan.resolved, sort_keys=False)
    )
    verdict = 0
    ran: set[str] = set()
    for stage in plan.stages:
        fresh = not ran.intersection(stage.after)  # nothing it reads was rebuilt just now
        if fresh and done.get(stage.name) == stage.fingerprint and stage.output.exists():
            say(f"[{stage.name}] up to date, skipped")
            if stage.name == "validate":
                verdict = _verdict(stage.output)
            continue
        call = StageCall(False, False, say, tell or say, progress, list(global_args or []))
        if stage.name == "validate" and stage.output.exists():
            # Its verdict is read from the report it writes: a report left by an earlier run
            # must not pass for this run's when validation crashes before writing one.
            shutil.rmtree(stage.output)
        call.overwrite = stage.output.exists() and stage.overwrites  # out of date
        if stage.partial is not None and stage.partial.exists():
            if started.get(stage.name) == stage.fingerprint:
                call.resume = True  # the same run was interrupted: continue it
            else:
                shutil.rmtree(stage.partial)
        if stage.name == "sign" and verdict != 0 and "--allow-unvalidated" not in stage.args:
            say("[sign] skipped: the validation gates failed; the bundle is left unsigned")
            continue
        started[stage.name] = stage.fingerprint
        for name in _dependents(plan, stage.name):  # their outputs go stale once this starts
            done.pop(name, None)
        _write_state(plan.state_path(), state)
        shown = shown_args(call_args(stage.args, call))
        say(f"[{stage.name}] revise {' '.join(_quote(a) for a in shown)}")
        try:
            code = stage.run(call)
        except RevisionError as exc:  # which stage, and the options it names as recipe keys
            before = f"the {stage.name} stage failed: "
            exc.respell(
                lambda option, spelling=stage.spell: spelling.get(option, option), before=before
            )
            raise
        if stage.name == "validate":
            verdict = code
        done[stage.name] = stage.fingerprint
        ran.add(stage.name)
        _write_state(plan.state_path(), state)
    return verdict


def call_args(args: list[str], call: StageCall) -> list[str]:
    """A stage's command line as run this time (replacing or resuming its output)."""
    return [
        *args,
        *(["--overwrite"] if call.overwrite else []),
        *(["--resume"] if call.resume else []),
    ]


def _dependents(plan: Plan, name: str) -> list[str]:
    """``name`` and every stage that reads its output, directly or through another stage."""
    out = [name]
    for stage in plan.stages:
        if set(stage.after) & set(out) and stage.name not in out:
            out.append(stage.name)
    return out


# -- inputs, checked as the stages read them ----------------------------------------------------


def _check_runtime(b: _Build) -> None:
    """What every computing stage reads: the device, the deployed model (with the card and
    arch), the manifest and the forget selection on it."""
    from revise.models.pixel import resolve_device

    b.problems.check("device", lambda: resolve_device(b.device))
    b.check_model("model", b.model)
    _check_data(b)


def _check_data(b: _Build) -> None:
    """The manifest loaded and the forget selection applied as the stages do it (partition:
    its @files read, a selection that matches no labelled training row refused). With an index
    stage the manifest does not exist yet: only the selection's @files are read."""
    from revise.data import manifest as manifest_mod
    from revise.data.split import partition

    if any(s.name == "index" for s in b.stages) or not b.manifest.exists():
        _check_list_files(b.problems, "forget", b.forget)
        return
    try:
        df = manifest_mod.load(b.manifest)
    except RevisionError as exc:
        b.problems.add("data.manifest", str(exc))
        return
    if b.forget is None or _selection_tree(b.forget) is None:
        return  # missing or not parsing: reported already
    try:
        partition(df, str(b.forget))
    except SelectionError as exc:
        b.problems.add("forget", str(exc))
    except RevisionError as exc:  # e.g. no labelled row
        b.problems.add("data.manifest", str(exc))


def _check_list_files(problems: _Problems, where: str, text: Any) -> None:
    """Read every @file of a selection as the stages will: a missing or unreadable one is a
    problem now."""
    from revise.data.select import InFile, _leaves, _read_list

    tree = _selection_tree(text) if text is not None else None
    for leaf in _leaves(tree) if tree is not None else []:
        if isinstance(leaf, InFile):
            problems.check(where, lambda leaf=leaf: _read_list(leaf.path, None))


def _check_heldout(problems: _Problems, heldout: Any, selection: Any) -> None:
    """A held-out manifest loaded and narrowed by the selection as `revise validate` does; a
    folder or a DICOMweb server is read only when validation runs, so only the selection's
    @files are read now."""
    from revise.data import manifest as manifest_mod
    from revise.data.select import select

    manifest = isinstance(heldout, Path) and heldout.suffix in (".parquet", ".csv")
    if not (manifest and heldout.is_file()):
        _check_list_files(problems, "validate.heldout_select", selection)
        return
    try:
        rows = manifest_mod.load(heldout)
    except RevisionError as exc:
        problems.add("validate.heldout", str(exc))
        return
    if selection is not None and _selection_tree(selection) is not None:
        problems.check("validate.heldout_select", lambda: select(rows, str(selection)))


def _check_name(problems: _Problems, where: str, name: str) -> None:
    from revise.export.bundle import check_name

    problems.check(where, lambda: check_name(name, "name"))


# -- stages -----------------------------------------------------------------------------------


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
        from revise.validate.criteria import check_models, load_criteria

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


# -- helpers ----------------------------------------------------------------------------------


def _section(
    problems, where: str, value: Any, options: type[StageOptions], path: Callable[..., Path | None]
) -> StageOptions | None:
    """A recipe section holding a stage's options: names checked against the stage's options
    model (one source of truth with the CLI's flags), values converted and checked by it, file
    options resolved against the recipe's folder. None when a problem was found."""
    if value is None:
        return options()
    if not isinstance(value, Mapping):
        problems.add(where, f"a mapping of `revise {where}` options")
        return None
    allowed = sorted(options.model_fields)
    files = options.path_fields()
    given: dict[str, Any] = {}
    known = True
    for key, raw in value.items():
        name = str(key).replace("-", "_")
        if name not in allowed:
            problems.add(f"{where}.{key}", f"not an option of this stage{_hint(name, allowed)}")
            known = False
        elif name in files and raw is not None:
            given[name] = path(f"{where}.{key}", raw, must_exist=files[name])
        else:
            given[name] = raw
    found = collect(options, given, spell=lambda field: f"{where}.{field}")
    for problem in found.problems:  # "<key> <what is wrong>", said as "<key>: <...>"
        key = f"{where}.{problem.field}" if problem.field else where
        text = problem.text.removeprefix(key).lstrip(": ") if problem.field else problem.text
        problems.add(key, text + (f" ({problem.hint})" if problem.hint else ""))
    return found.value if known else None


def _opt(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _int(problems, where: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an integer (at least ``minimum``); otherwise a problem, and ``minimum``."""
    least = "" if minimum is None else f" >= {minimum}"
    number = None  # a whole number only: 1.5 or true is refused, not rounded
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is None or (minimum is not None and number < minimum):
        problems.add(where, f"{value!r} is not an integer{least}")
        return minimum or 0
    return number


def _hint(name: str, known) -> str:
    hint = did_you_mean(name, known)
    return f" ({hint})" if hint else f" (known: {', '.join(sorted(known))})"


def _check_selection(problems, text: str, where: str = "forget") -> None:
    from revise.data.select import parse

    try:
        parse(text)
    except UsageError as exc:
        problems.add(where, str(exc))


def _paths(options: StageOptions | None) -> list[Path]:
    """The file and folder options of a section (resolved to Paths by _section)."""
    out: list[Path] = []
    for value in options.model_dump().values() if options is not None else []:
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, Path):
                out.append(item)
    return out


def _selection_tree(text: Any):
    from revise.data.select import parse

    try:
        return parse(str(text))
    except UsageError:
        return None  # reported by _check_selection


def _selection_files(text: Any) -> list[Path]:
    """The ``@file`` lists a selection reads, resolved as the commands resolve them (against
    the working directory)."""
    from revise.data.select import InFile, _leaves

    tree = _selection_tree(text) if text is not None else None
    if tree is None:
        return []
    files = [Path(leaf.path).expanduser() for leaf in _leaves(tree) if isinstance(leaf, InFile)]
    return [f if f.is_absolute() else Path.cwd() / f for f in files]


def _names_patients(text: str) -> bool:
    """Whether a selection gives values describe() hides (patient IDs, file paths): its
    fingerprint must then see them keyed, as the shown text no longer does."""
    from revise.data._select_tree import Random
    from revise.data.select import IDENTIFYING, _leaves

    tree = _selection_tree(text)
    return tree is not None and any(
        leaf.column in IDENTIFYING and not isinstance(leaf, Random) for leaf in _leaves(tree)
    )


def shown_selection(text: Any) -> str:
    """A selection as records and logs show it: values given for ``patient`` and ``path``
    hidden."""
    from revise.data.select import describe

    tree = _selection_tree(text)
    return describe(tree) if tree is not None else "<selection that does not parse>"


def shown_args(args: list[str]) -> list[str]:
    """A command line with every selection as `shown_selection` writes it."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg in SELECTION_FLAGS:
            out[i + 1] = shown_selection(out[i + 1])
    return out


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "/._-=:,+@" for c in arg) else repr(arg)


def _fingerprint(stage: Stage, upstream: Mapping[str, str]) -> str:
    """sha256 over the stage's command line, the fingerprints of the stages it reads and the
    digests of its inputs. Selections naming patients go in as an HMAC under the site's PHI
    key (the state file must not hold an unkeyed hash of a patient ID)."""
    h = hashlib.sha256(json.dumps(shown_args(stage.args)).encode())
    for i, arg in enumerate(stage.args[:-1]):
        if arg in SELECTION_FLAGS and _names_patients(stage.args[i + 1]):
            h.update(f"\0{arg}={_keyed(stage.args[i + 1].encode())}".encode())
    for name in stage.after:
        h.update(f"\0{name}={upstream.get(name, '')}".encode())
    patient_lists = _patient_files(stage.args)
    for path in dict.fromkeys(stage.inputs):  # each once, in order
        h.update(f"\0{path}={_input_digest(path, keyed=path in patient_lists)}".encode())
    return h.hexdigest()


def _patient_files(args: list[str]) -> set[Path]:
    """The @files compared with ``patient`` in the selections of ``args``."""
    from revise.data.select import PATIENT, InFile, _leaves

    out: set[Path] = set()
    for i, arg in enumerate(args[:-1]):
        tree = _selection_tree(args[i + 1]) if arg in SELECTION_FLAGS else None
        for leaf in _leaves(tree) if tree is not None else []:
            if isinstance(leaf, InFile) and leaf.column == PATIENT:
                path = Path(leaf.path).expanduser()
                out.add(path if path.is_absolute() else Path.cwd() / path)
    return out


def _keyed(data: bytes) -> str:
    from revise.phi import site_key

    return hmac.new(site_key(), b"revise-recipe\0" + data, hashlib.sha256).hexdigest()


def _input_digest(path: Path, *, keyed: bool = False) -> str:
    """A file: sha256 of its content (HMAC when ``keyed``). A folder: sha256 over its entries
    in sorted order, each as relative path, size and mtime in ns (see the module docstring).
    Missing: empty (the command then reports it)."""
    if path.is_file():
        return _keyed(path.read_bytes()) if keyed else sha256_file(path)
    if not path.is_dir():
        return ""
    h = hashlib.sha256(b"folder")
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            entry = Path(root) / name
            try:
                st = entry.stat()
            except OSError:  # a dangling link: its name still counts
                st = None
            rel = entry.relative_to(path).as_posix()
            size, mtime = (st.st_size, st.st_mtime_ns) if st else (-1, -1)
            h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


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


def _verdict(report_folder: Path) -> int:
    """0 when the validation report says every gate passed, else 1."""
    return 0 if _read_verdict(report_folder / REPORT_JSON) == "pass" else 1


def _read_verdict(report: Path) -> str | None:
    try:
        return json.loads(report.read_text()).get("verdict")
    except (OSError, ValueError, AttributeError):
        return None


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    write_json_atomic(path, state)
