"""The recipe's plan as values: stages, the problems found while planning, the values
every stage builder reads, and the small readers of recipe values."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from revise._schema import MISSING, UNKNOWN, Problem
from revise.errors import RevisionError, UsageError
from revise.models.io import load_model
from revise.recipe.selection import _selection_files, shown_args
from revise.registry import did_you_mean
from revise.stages._options import StageOptions, collect

STATE_FILE = "state.json"


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
    criteria: Path | None = None  # validate.criteria: auto runs aim under their ceiling

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


def _section(
    problems, where: str, value: Any, options: type[StageOptions], path: Callable[..., Path | None]
) -> StageOptions | None:
    """A recipe section holding a stage's options: names and values checked by the stage's
    options model (one source of truth with the CLI's flags), file options resolved against the
    recipe's folder first. None when a problem was found."""
    if value is None:
        return options()
    if not isinstance(value, Mapping):
        problems.add(where, f"a mapping of `revise {where}` options")
        return None
    files = options.path_fields()
    given: dict[str, Any] = {}
    written: dict[str, str] = {}  # option -> the key as the recipe writes it (dashes or not)
    for key, raw in value.items():
        name = str(key).replace("-", "_")
        written[name] = str(key)
        given[name] = path(f"{where}.{key}", raw) if name in files and raw is not None else raw
    found = collect(options, given, spell=lambda field: f"{where}.{field}")
    unknown = "not an option of this stage"
    for problem in found.problems:
        at, text = _place(where, problem, options.model_fields, unknown=unknown)
        if problem.kind in UNKNOWN:
            at = f"{where}.{written.get(str(problem.field), problem.field)}"
        problems.add(at, text)
    return found.value


def _place(
    part: str, problem: Problem, fields: Mapping[str, FieldInfo], *, unknown: str
) -> tuple[str, str]:
    """Where in the recipe ``problem`` is (``export.opset``), and what it says there (``must be
    a number, not 'many'``): a problem of ``part`` (a section; "" for the top level), whose
    ``fields`` are those given. ``unknown``: what a key not among them is called."""
    keys = {info.alias or name: info for name, info in fields.items()}
    at = f"{part}.{problem.field}" if part else str(problem.field)
    if problem.kind in UNKNOWN:
        return at, f"{unknown}{_hint(str(problem.field), keys)}"
    if problem.kind in MISSING:
        about = getattr(keys.get(str(problem.field)), "description", None)
        return at, f"missing: {about}" if about else "missing (required)"
    hint = f" ({problem.hint})" if problem.hint else ""
    if problem.field is None:  # the part as a whole
        return part, problem.text + hint
    where, _, text = problem.text.partition(" ")  # each text starts with where it is
    return where.rstrip(":"), text + hint


def _opt(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _hint(name: str, known) -> str:
    hint = did_you_mean(name, known)
    return f" ({hint})" if hint else f" (known: {', '.join(sorted(known))})"


def _paths(options: StageOptions | None) -> list[Path]:
    """The file and folder options of a section (resolved to Paths by _section)."""
    out: list[Path] = []
    for value in options.model_dump().values() if options is not None else []:
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, Path):
                out.append(item)
    return out
