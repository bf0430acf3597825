"""The stages that release the candidate - its export as a bundle, its validation against the
acceptance criteria, the bundle's signature - each built as its equivalent command line (shown,
recorded, fingerprinted) and its call of the library function that the command calls too."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from revise._io.outputs import RESOLVED_RECIPE
from revise.errors import UsageError
from revise.export.keys import load_private_key
from revise.export.manifest import SIGNATURE_NAME
from revise.export.signing import sign_bundle
from revise.recipe.checks import _check_heldout, _check_selection
from revise.recipe.document import SignSection
from revise.recipe.model import (
    Stage,
    StageCall,
    _Build,
    _opt,
    _paths,
    _Problems,
    _section,
)
from revise.recipe.selection import _selection_files
from revise.stages.export import ExportOptions, export_bundle
from revise.stages.validate import ValidateOptions, validate_model, verdict_lines
from revise.validate.criteria import load_criteria
from revise.validate.gate_checks import check_models


def _export_stage(b: _Build, export: Any, candidate: Path, bundle: Path) -> None:

    options = _section(b.problems, "export", export, ExportOptions, b.path)
    if options is None:
        return
    recipe = b.workdir / RESOLVED_RECIPE
    args = ["export", str(candidate), "-o", str(bundle), "--data", str(b.manifest)]
    args += ["--recipe", str(recipe), "--cache", str(b.cache), *options.flags()]
    forget = str(b.forget) if options.int8 else None  # INT8 calibration keeps off the forget set
    args += ["--forget", forget] if forget is not None else []

    def run(call: StageCall) -> int:

        export_bundle(
            candidate,
            bundle,
            options,
            manifest=b.manifest,
            recipe=recipe,
            cache=b.cache,
            forget=forget,
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
        have = ["original", "onnx", *(["reference"] if options.reference else [])]
        exported = next((s for s in b.stages if s.name == "export"), None)
        have += ["int8"] if exported is not None and "--int8" in exported.args else []
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
        call.tell(f"{result.record.summary}; report in {out}/report.html")
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


def _sign_stage(
    problems: _Problems,
    sign: SignSection | None,
    path,
    bundle: Path,
    validate: Stage | None,
    stages: list[Stage],
) -> None:
    if sign is None:
        return
    key = path("sign.key", sign.key)  # None: missing or not text, a problem already
    env = sign.password_env
    if env is not None and env not in os.environ:
        problems.add("sign.password_env", f"the environment variable {env} is not set")
    elif env is not None and not os.environ[env]:
        problems.add("sign.password_env", f"the environment variable {env} is empty")
    elif key is not None and key.is_file():  # as `revise sign` loads it: a key, the password
        password = os.environ[env].encode("utf-8") if env else None
        problems.check("sign.key", lambda: load_private_key(key, password))
    allow = sign.allow_unvalidated
    if validate is None and not allow:
        problems.add("sign", "signing needs a validate: section (or allow_unvalidated: true)")
    args = ["sign", str(bundle), "--key", str(key), *_opt("--password-env", env)]
    args += ["--allow-unvalidated"] if allow else []
    after = ["export"] + (["validate"] if validate else [])

    def run(call: StageCall) -> int:

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
