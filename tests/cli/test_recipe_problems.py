"""The recipe document's keys and types (revise.recipe.document): every problem of every part -
the top level, data:, each run of unlearn:, sign:, the stage sections - reported at once, each
under its location, and the checks after the schema still run on what passed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from revise.errors import UsageError
from revise.recipe import load_plan


def refused(tmp_path: Path, doc: object) -> dict[str, str]:
    """The problems `load_plan` refuses ``doc`` for: recipe key -> what is wrong there."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(UsageError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert message.startswith(f"{path} has "), message
    listed = message.split("nothing was run: ", 1)[1]
    items = re.split(r"(?:^|; )\(\d+\) ", listed)[1:]
    count = int(message.split(" has ", 1)[1].split(" ", 1)[0])
    assert len(items) == count, message
    found = dict(item.split(": ", 1) for item in items)
    assert len(found) == count, message  # each location once
    return found


def test_a_recipe_with_several_problems_reports_each_with_its_location(tmp_path):
    found = refused(
        tmp_path,
        {
            "wokdir": "work",
            "model": "deployed/",
            "data": {"manifest": "m.parquet", "images": "site/", "colour": "red"},
            "forget": 'device == "Borealis CR-7"',
            "unlearn": [
                7,
                {"method": "psg", "seed": 1.5, "settings": "fast", "speed": 2},
                {"name": "ft", "method": "finetune", "settings": {"epochs": 1}},
            ],
            "seed": True,
            "checkpoint_every": -1,
            "compile": "yes",
            "export": {"opset": "many", "fp-16": True},
            "sign": {"allow_unvalidated": "false"},
        },
    )
    assert found == {
        "wokdir": "unknown key (did you mean workdir?)",
        "seed": "True is not an integer",
        "checkpoint_every": "-1 is not an integer >= 0",
        "compile": "must be true or false, not 'yes'",
        "data": "give exactly one of manifest: or images:",
        "data.colour": "unknown key (known: images, labels, loader, manifest, site)",
        "unlearn[1]": (
            "must be a mapping of names to values, not 7 (e.g. {method: psg, settings: {lr: "
            "0.001}}; method: is auto when not given)"
        ),
        "unlearn[2].settings": "must be a mapping of names to values, not 'fast'",
        "unlearn[2].seed": "1.5 is not an integer",
        "unlearn[2].speed": "unknown key (did you mean seed?)",
        "sign.key": "missing: the private key (make one with `revise keygen`)",
        "sign.allow_unvalidated": "must be true or false, not 'false'",
        # the checks after the schema, on what passed it
        "model": f"{tmp_path / 'deployed'} does not exist",
        "merge": "2 unlearning runs need a merge: section",
        "export.fp-16": "not an option of this stage (did you mean fp16?)",
        "export.opset": "must be a number, not 'many'",
        "sign": "signing needs a validate: section (or allow_unvalidated: true)",
    }


def test_required_keys_missing_or_empty_are_each_said(tmp_path):
    assert refused(tmp_path, {"device": "cpu"}) == {
        "model": "missing: the deployed model: its folder, or a weights file",
        "data": "missing: the site's images: {manifest: FILE} or {images: FOLDER, labels: CSV}",
        "forget": 'missing: the selection to forget, e.g. device == "Borealis CR-7"',
        "unlearn": "missing: the unlearning runs, e.g. [{method: psg, settings: {lr: 0.001}}]",
    }
    # given empty (`unlearn:` with nothing after it): refused, never taken for "none"
    empty = dict.fromkeys(("model", "data", "forget", "unlearn", "workdir", "sign"))
    assert refused(tmp_path, empty) == {
        "workdir": "must be text, not None",
        "model": "must be text, not None",
        "forget": "must be text, not None",
        "unlearn": "must be a list, not None (e.g. [{method: psg, settings: {lr: 0.001}}])",
        "data": (
            "must be a mapping of names to values, not None ({manifest: FILE} or "
            "{images: FOLDER, labels: CSV})"
        ),
    }  # sign: given empty is no sign: section, as before
    assert refused(tmp_path, {**empty, "unlearn": [], "sign": "keys/k"})["unlearn"] == (
        "must have at least 1 value, not [] (e.g. [{method: psg, settings: {lr: 0.001}}])"
    )


def test_numbers_given_for_text_are_that_text(tmp_path):
    """`name: 7` or a folder named 2024 are what YAML makes numbers of: text as written."""
    found = refused(
        tmp_path,
        {
            "workdir": 2024,
            "model": 1,
            "data": {"manifest": 3},
            "forget": 'device == "x"',
            "unlearn": [{"name": 7, "method": "psg", "seed": 2.0}],
        },
    )
    assert found == {
        "model": f"{tmp_path / '1'} does not exist",
        "data.manifest": f"{tmp_path / '3'} does not exist",
    }


def test_a_recipe_that_is_no_mapping_is_refused_at_once(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("- model: deployed/\n")
    with pytest.raises(UsageError, match=r"a recipe is a YAML mapping \(see `revise run --help`\)"):
        load_plan(path)
