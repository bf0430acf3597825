"""`revise run`'s check before anything runs, and the files `revise run` and `revise merge`
read first: what is wrong is reported at once, never after hours of unlearning.

Probes kept (what a careless user tried, and what revise must do):
* a recipe whose model is a text file named .safetensors, whose manifest is a .parquet that is
  not parquet, whose export name is ``../../escape`` (a Triton folder outside the workdir),
  whose signing key is no key and whose device is ``cuda:99``: exit 2 with one message that
  numbers every problem under its recipe key, before any stage (the workdir is never made);
* one at a time: a model folder whose model.safetensors is text, a reference model that is
  not one, a manifest without the columns every manifest has, a forget selection whose
  ``@file`` matches nobody or does not exist, an encrypted key without a password, a wrong
  password, an empty password variable, a negative checkpoint interval, zero workers, a seed of
  1.5 or true (silently rounded before): each
  refused up front under its key, without the patient IDs of the ``@file``;
* a recipe that is not UTF-8 (Latin-1): exit 2, one line naming the file and the fix (not an
  internal error);
* `revise merge` of a run folder whose run.json is truncated, not an object, lacks the base
  model's digest, records its base model as a bare string, or is not UTF-8: one line naming
  that run.json and the fix, nothing written (not an internal error).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from cli_site import quick_recipe

PATIENT_ID = "MRN-NOBODY-0001"  # no such patient at the demo site


def write_recipe(tmp_path: Path, site, **overrides) -> Path:
    """A quick recipe over the shared manifest (no index stage): psg for one epoch, export."""
    sections = {
        "unlearn": [{"method": "psg", "settings": {"epochs": 1, "lr": 0.001, "phi": 2}}],
        "export": {"name": "digits"},
    }
    return quick_recipe(tmp_path, site, **{**sections, **overrides})


def refused(cli, path: Path) -> str:
    """`revise run` refuses the recipe before any stage: exit 2, one line, no workdir."""
    line = cli.one_line_error(cli("run", path, code=2))
    assert "nothing was run" in line, line
    assert not (path.parent / "work").exists()
    return line


def problems(line: str) -> dict[str, str]:
    """The numbered problems of the message: recipe key -> what is wrong."""
    listed = line.split("nothing was run: ", 1)[1]
    items = re.split(r"(?:^|; )\(\d+\) ", listed)[1:]
    return {item.split(": ", 1)[0]: item.split(": ", 1)[1] for item in items}


def text_file(path: Path, text: str = "this is not a model\n") -> Path:
    path.write_text(text)
    return path


def test_every_content_problem_is_reported_at_once_before_any_stage(cli, demo_site, tmp_path):
    fake = text_file(tmp_path / "deployed.safetensors")
    path = write_recipe(
        tmp_path,
        demo_site,
        model=str(fake),
        card=str(demo_site.model / "card.json"),
        data={"manifest": str(text_file(tmp_path / "m.parquet", "sample_key,path\n"))},
        export={"name": "../../escape"},
        sign={"key": str(text_file(tmp_path / "k.key", "not a key\n")), "allow_unvalidated": True},
        device="cuda:99",
    )
    line = refused(cli, path)
    assert "has 5 problem(s)" in line and "(1) " in line and "(5) " in line, line
    found = problems(line)
    assert set(found) == {"model", "data.manifest", "export.name", "sign.key", "device"}, line
    assert "deployed.safetensors" in found["model"] and "text file" in found["model"]
    assert "m.parquet" in found["data.manifest"] and "unreadable" in found["data.manifest"]
    assert "'../../escape'" in found["export.name"]
    assert "not a PEM private key" in found["sign.key"]
    assert "cuda:99" in found["device"]


def _model_folder_with_text_weights(tmp_path: Path, site) -> Path:
    folder = tmp_path / "deployed"
    shutil.copytree(site.model, folder)
    text_file(folder / "model.safetensors")
    return folder


def _manifest_without_columns(tmp_path: Path) -> Path:
    path = tmp_path / "bare.parquet"
    pd.DataFrame({"label": [0, 1]}).to_parquet(path)
    return path


def _encrypted_key(tmp_path: Path) -> Path:
    from revise.export.keys import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, generate_keys

    generate_keys(tmp_path / PRIVATE_KEY_NAME, tmp_path / PUBLIC_KEY_NAME, password=b"right")
    return tmp_path / PRIVATE_KEY_NAME


CASES = {
    "model folder with text weights": (
        lambda tmp, site: {"model": str(_model_folder_with_text_weights(tmp, site))},
        "model",
        "model.safetensors",
    ),
    "reference that is no model": (
        lambda tmp, site: {
            "validate": {
                "criteria": str(
                    text_file(
                        tmp / "g.yaml",
                        "gates:\n  - {metric: accuracy, set: retain, at_least: 0.0}\n",
                    )
                ),
                "reference": str(text_file(tmp / "ref.safetensors")),
            }
        },
        "validate.reference",
        "ref.safetensors",
    ),
    "manifest without its columns": (
        lambda tmp, site: {"data": {"manifest": str(_manifest_without_columns(tmp))}},
        "data.manifest",
        "lacks column(s) sample_key, path",
    ),
    "@file that matches nobody": (
        lambda tmp, site: {
            "forget": f"patient in @{text_file(tmp / 'nobody.txt', PATIENT_ID + chr(10))}"
        },
        "forget",
        "matched 0 of",
    ),
    "@file that does not exist": (
        lambda tmp, site: {"forget": f"patient in @{tmp / 'missing.txt'}"},
        "forget",
        "does not exist",
    ),
    "encrypted key without a password": (
        lambda tmp, site: {"sign": {"key": str(_encrypted_key(tmp)), "allow_unvalidated": True}},
        "sign.key",
        "encrypted and no password was given",
    ),
    "wrong password": (
        lambda tmp, site: {
            "sign": {
                "key": str(_encrypted_key(tmp)),
                "password_env": "REVISE_TEST_KEY_PASSWORD",
                "allow_unvalidated": True,
            }
        },
        "sign.key",
        "wrong password",
    ),
    "negative checkpoint interval": (
        lambda tmp, site: {"checkpoint_every": -1},
        "checkpoint_every",
        "-1 is not an integer >= 0",
    ),
    "no workers": (
        lambda tmp, site: {"nproc_per_node": 0},
        "nproc_per_node",
        "0 is not an integer >= 1",
    ),
    "a seed that is not a whole number": (
        lambda tmp, site: {"seed": 1.5},
        "seed",
        "1.5 is not an integer",
    ),
    "a run's seed that is a boolean": (
        lambda tmp, site: {"unlearn": [{"method": "psg", "seed": True}]},
        "unlearn[1].seed",
        "True is not an integer",
    ),
    "empty password variable": (
        lambda tmp, site: {
            "sign": {
                "key": str(_encrypted_key(tmp)),
                "password_env": "REVISE_TEST_EMPTY_PASSWORD",
                "allow_unvalidated": True,
            }
        },
        "sign.password_env",
        "is empty",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_input_is_checked_under_its_recipe_key_before_any_stage(
    cli, demo_site, tmp_path, monkeypatch, case
):
    monkeypatch.setenv("REVISE_TEST_KEY_PASSWORD", "wrong")
    monkeypatch.setenv("REVISE_TEST_EMPTY_PASSWORD", "")
    overrides, key, expected = CASES[case]
    line = refused(cli, write_recipe(tmp_path, demo_site, **overrides(tmp_path, demo_site)))
    found = problems(line)
    assert list(found) == [key], line
    assert expected in found[key], line
    assert PATIENT_ID not in line


def test_a_recipe_that_is_not_utf8_is_a_usage_error_naming_the_file(cli, demo_site, tmp_path):
    path = write_recipe(tmp_path, demo_site)
    path.write_bytes(("# the Zürich site's revision\n" + path.read_text()).encode("latin-1"))
    line = cli.one_line_error(cli("run", path, code=2))
    assert str(path) in line and "UTF-8" in line and "internal error" not in line, line
    assert not (tmp_path / "work").exists()


# -- revise merge: a damaged run.json -------------------------------------------------------


def _truncated(record: dict) -> bytes:
    return json.dumps(record).encode()[:40]


def _bare_base(record: dict) -> bytes:
    return json.dumps({**record, "base_model": "deployed/"}).encode()


DAMAGE = {
    "truncated": (_truncated, "not valid JSON"),
    "not an object": (lambda record: b"[1, 2, 3]", "not a JSON object"),
    "no base digest": (
        lambda record: json.dumps({"method": "psg"}).encode(),
        "base_model_digest",
    ),
    "base model a string": (_bare_base, "base_model"),
    "not UTF-8": (lambda record: b'{"method": "ps\xe9g"}', "not UTF-8"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_merge_of_a_damaged_run_json_names_it_and_the_fix(cli, run_folder, tmp_path, damage):
    make, expected = DAMAGE[damage]
    damaged, intact = tmp_path / "damaged", tmp_path / "intact"
    shutil.copytree(run_folder, damaged)
    shutil.copytree(run_folder, intact)
    record = json.loads((damaged / "run.json").read_text())
    (damaged / "run.json").write_bytes(make(record))
    out = tmp_path / "merged"
    result = cli("merge", damaged, intact, "--strengths", "0.5,0.5", "-o", out, "--device", "cpu")
    line = cli.one_line_error(result)
    assert result.exit_code == 1 and "internal error" not in line, line
    assert str(damaged / "run.json") in line and expected in line, line
    assert "revise unlearn" in line  # the fix: write the run folder again
    assert not out.exists() and not out.with_name("merged.partial").exists()
