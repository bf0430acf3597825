"""One stage function, two shells: a recipe section and a command's flags are the same options
(revise.stages), each shell names them its own way, and the command line a recipe shows for a
stage is one the CLI accepts with the same values."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_site import quick_recipe

from revise._io.outputs import RESOLVED_RECIPE
from revise.cli import cli as revise_cli
from revise.errors import OptionError, UsageError
from revise.recipe import load_plan
from revise.stages._options import build
from revise.stages.merge import MergeOptions
from revise.stages.validate import ValidateOptions

GATES = "gates:\n  - {metric: parity_label_agreement, at_least: 1.0}\n"


def write_recipe(tmp_path: Path, site, **sections) -> Path:
    (tmp_path / "gates.yaml").write_text(GATES)
    return quick_recipe(tmp_path, site, **sections)


def parsed(args: list[str]) -> dict:
    """What `revise ARGS` would run with: click's parse of the command line, nothing run."""
    command = revise_cli.commands[args[0]]
    return command.make_context(args[0], list(args[1:])).params


def test_every_section_option_reaches_its_command_with_its_value(demo_site, tmp_path):
    plan = load_plan(
        write_recipe(
            tmp_path,
            demo_site,
            unlearn=[{"name": "a", "method": "psg"}, {"name": "b", "method": "finetune"}],
            merge={
                "search_strengths": True,
                "grid": [0, 0.5, 1],
                "base": str(demo_site.model),  # base_path in the CLI's code: --base on the line
                "strength": ["fc.*=1"],  # overrides in the CLI's code: --strength on the line
                "reestimate_bn": False,  # the off switch: --keep-bn
                "finetune_epochs": 1,
                "backbone": "b",  # a run's recipe name: its index on the command line
            },
            export={"name": "digits", "fp16": True, "parity_samples": 8, "opset": 17},
            validate={
                "criteria": "gates.yaml",
                "heldout_select": 'device == "Borealis CR-7"',
                "timeout": 5,
                "by": ["device"],
            },
        )
    )
    stages = {stage.name: stage for stage in plan.stages}
    for stage in plan.stages:  # the outputs later stages read exist by then (click checks)
        stage.output.mkdir(parents=True, exist_ok=True)
    (plan.workdir / RESOLVED_RECIPE).write_text("")  # written by `revise run` before export
    merge = parsed(stages["merge"].args)
    assert merge["grid"] == "0,0.5,1" and merge["search_strengths"] is True
    assert merge["base_path"] == demo_site.model and merge["overrides"] == ("fc.*=1",)
    assert merge["reestimate_bn"] is False and merge["finetune_epochs"] == 1
    assert merge["backbone"] == "1"
    export = parsed(stages["export"].args)
    assert (export["name"], export["fp16"], export["parity_samples"]) == ("digits", True, 8)
    assert export["opset"] == 17
    validate = parsed(stages["validate"].args)
    assert validate["heldout_select"] == 'device == "Borealis CR-7"'
    assert validate["timeout"] == 5 and validate["by"] == ("device",)


def test_a_cross_option_mistake_names_the_options_as_each_shell_does(cli, demo_site, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("sample_key,label\n")
    # Python: the keyword names
    with pytest.raises(UsageError) as caught:
        build(ValidateOptions, {"heldout_labels": labels}, what="validation")
    assert "heldout_labels label held-out images: give the images (heldout) too" in str(
        caught.value
    )
    # the CLI: its flags
    (tmp_path / "gates.yaml").write_text(GATES)
    result = cli(
        "validate", demo_site.model, "--original", demo_site.model, "--data", demo_site.manifest,
        "--forget", cli.forget, "--criteria", tmp_path / "gates.yaml", "-o", tmp_path / "report",
        "--heldout-labels", labels, code=2,
    )  # fmt: skip
    line = cli.one_line_error(result)
    assert "--heldout-labels label held-out images: give the images (--heldout) too" in line
    # a recipe: its keys
    path = write_recipe(
        tmp_path, demo_site, validate={"criteria": "gates.yaml", "heldout_labels": str(labels)}
    )
    with pytest.raises(UsageError) as caught:
        load_plan(path)
    assert (
        "validate.heldout_labels: label held-out images: give the images (validate.heldout) too"
        in str(caught.value)
    )


def test_a_library_error_is_said_with_flags_by_the_cli_and_keys_by_the_recipe():
    error = OptionError("label_map", "needs {label_tag}", hint="e.g. {label_tag} body_part",
                        options=("label_tag",))  # fmt: skip
    assert str(error) == "label_map needs label_tag (e.g. label_tag body_part)"
    flags = revise_cli.spelled  # type: ignore[attr-defined]
    said = error.said_as(lambda option: flags("index", option))
    assert said == "--label-map needs --label-tag (e.g. --label-tag body_part)"
    error.respell(lambda option: f"data.{option}", before="the index stage failed: ")
    assert str(error) == (
        "the index stage failed: data.label_map needs data.label_tag (e.g. data.label_tag "
        "body_part)"
    )


def test_merge_options_refuse_every_mistake_at_once():
    with pytest.raises(UsageError) as caught:
        build(
            MergeOptions,
            {"grid": "0,x", "finetune_epochs": -1, "criteria": Path("g.yaml")},
            what="revise merge",
            spell=lambda field: "--" + field.replace("_", "-"),
        )
    message = str(caught.value)
    assert message.startswith("revise merge: 3 problems:"), message
    assert "--grid '0,x' is not comma-separated numbers" in message
    assert "--finetune-epochs must be >= 0, not -1" in message
    assert "--criteria steer the strength search: add --search-strengths" in message


def test_an_auto_run_aims_under_the_recipes_criteria_and_a_named_method_does_not(
    demo_site, tmp_path
):
    plan = load_plan(
        write_recipe(
            tmp_path,
            demo_site,
            unlearn=[{"name": "a"}, {"name": "b", "method": "psg"}],  # a: auto, the default
            merge={},
            validate={"criteria": "gates.yaml"},
        )
    )
    stages = {stage.name: stage for stage in plan.stages}
    gates = tmp_path / "gates.yaml"
    auto = parsed(stages["unlearn:a"].args)
    assert auto["method"] == "auto" and auto["criteria"] == gates
    assert gates in stages["unlearn:a"].inputs  # a change of criteria reruns the revision
    assert parsed(stages["unlearn:b"].args)["criteria"] is None
    assert gates not in stages["unlearn:b"].inputs
