"""`revise run recipe.yaml` on the demo site: every mistake reported at once before anything
runs, the whole path to a signed bundle, skipping what is done, failing gates leaving the bundle
unsigned, and a killed run that resumes to the uninterrupted result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from clirunner import kill_when

# Gates the untouched model fails: the recipe's run lowers forget accuracy from 0.947 to 0.848
LENIENT = """
gates:
  - {name: retired device forgotten, metric: accuracy, set: forget, at_most: original - 0.05}
  - {metric: accuracy, set: heldout_retain, per: device, at_least: original - 0.2}
  - {metric: parity_label_agreement, at_least: 1.0}
"""
# MIA-Efficacy (share of the forget set taken for non-members): 0.685 after the run, 0.362 before
MORE_FORGETTING = "  - {metric: mia_efficacy, at_least: original + 0.1}\n"
IMPOSSIBLE = "gates:\n  - {name: impossible, metric: accuracy, set: heldout_forget, at_most: 0.0}\n"
PARITY_ONLY = "gates:\n  - {metric: parity_label_agreement, at_least: 1.0}\n"


def recipe(tmp_path: Path, site, *, criteria: str = LENIENT, **overrides) -> Path:
    (tmp_path / "gates.yaml").write_text(criteria)
    doc = {
        "workdir": "work",
        "model": str(site.model),
        "data": {"images": str(site.dicom), "labels": str(site.labels), "site": "demo"},
        "forget": 'device == "Borealis CR-7"',
        "device": "cpu",
        "unlearn": [{"method": "psg", "settings": {"epochs": 1, "lr": 0.001, "phi": 2}}],
        "export": {"name": "digits"},
        "validate": {"criteria": "gates.yaml"},
        **overrides,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def stage_lines(result) -> dict[str, str]:
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    return {line[1 : line.index("]")]: line for line in lines}


def test_every_mistake_is_reported_at_once_and_nothing_runs(cli, demo_site, tmp_path):
    path = recipe(
        tmp_path,
        demo_site,
        forget='device === "Borealis CR-7"',
        unlearn=[
            {"method": "psgg"},
            {"method": "psg", "settings": {"epoch": 1}},
            {"method": "finetune", "colour": "red"},
            {"method": "auto", "settings": {"lr": 1}},
        ],
        merge={"strenghts": "0.5,0.5,0.5,0.5"},
        export={"name": "digits", "opset": "many"},
        sign={"key": "missing.key", "password_env": "REVISE_TEST_NO_SUCH_VARIABLE"},
        validate={"criteria": "gates.yaml", "reference": "nowhere/"},
        compile="yes",
    )
    result = cli("run", path, code=2)
    message = result.stderr
    assert "has 11 problem(s); nothing was run" in message, message
    for expected in (
        "forget: selection",
        "unlearn[1].method: unknown method 'psgg' (did you mean psg?)",
        "unlearn[2].settings: psg has no hyperparameter(s) epoch",
        "unlearn[3].colour: unknown key",
        "unlearn[4].settings: method auto takes no settings",
        "merge.strenghts: not an option of this stage (did you mean strengths",
        "export.opset: must be a number, not 'many'",
        "sign.key:",
        "sign.password_env: the environment variable REVISE_TEST_NO_SUCH_VARIABLE is not set",
        "validate.reference:",
        "compile: must be true or false, not 'yes'",
    ):
        assert expected in message, expected
    assert not (tmp_path / "work").exists()


@pytest.fixture(scope="module")
def keys(tmp_path_factory, isolated_env) -> Path:
    from revise.export.keys import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, generate_keys

    folder = tmp_path_factory.mktemp("keys")
    generate_keys(folder / PRIVATE_KEY_NAME, folder / PUBLIC_KEY_NAME)
    return folder


@pytest.mark.slow  # end to end; CI runs it with the slow set
def test_the_whole_revision_to_a_signed_bundle_and_back_again(
    cli, demo_site, retrained_model, keys, tmp_path
):
    path = recipe(
        tmp_path,
        demo_site,
        unlearn=[
            {"method": "psg", "settings": {"epochs": 1, "lr": 0.001, "phi": 2}},
            {"name": "ft", "method": "finetune", "settings": {"epochs": 1}},
        ],
        merge={"search_strengths": True, "grid": "0,0.5,1", "reference": str(retrained_model)},
        sign={"key": str(keys / "revise-signing.key")},
    )
    result = cli("run", path, code=0)
    assert list(stage_lines(result)) == [
        "index", "unlearn:psg", "unlearn:ft", "merge", "export", "validate", "sign",
    ]  # fmt: skip
    bundle = tmp_path / "work" / "bundle"
    assert f"bundle ready: {bundle}" in result.stdout
    verified = cli("verify", bundle, "--pub", keys / "revise-signing.pub", code=0)
    assert "OK:" in verified.stdout
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["validation"]["verdict"] == "pass"
    resolved = yaml.safe_load((bundle / "recipe.yaml").read_text())
    psg = resolved["recipe"]["unlearn"][0]["settings"]
    assert psg["epochs"] == 1 and {"gamma", "lam", "eps", "freeze_bn"} <= set(psg)
    assert resolved["commands"]["merge"][:2] == ["revise", "merge"]
    run = json.loads((bundle / "run.json").read_text())
    assert run["merge"]["mode"] == "strengths"

    again = cli("run", path, code=0)  # nothing changed: nothing runs
    assert all("up to date, skipped" in line for line in stage_lines(again).values())

    (tmp_path / "gates.yaml").write_text(LENIENT + MORE_FORGETTING)
    edited = cli("run", path, code=0)  # new criteria: validate and sign again, nothing else
    ran = [name for name, line in stage_lines(edited).items() if "skipped" not in line]
    assert ran == ["validate", "sign"]
    cli("verify", bundle, "--pub", keys / "revise-signing.pub", code=0)


@pytest.mark.slow  # end to end; CI runs it with the slow set
def test_failed_gates_leave_the_bundle_unsigned(cli, demo_site, keys, tmp_path):
    path = recipe(
        tmp_path, demo_site, criteria=IMPOSSIBLE, sign={"key": str(keys / "revise-signing.key")}
    )
    result = cli("run", path, code=1)
    assert "[sign] skipped: the validation gates failed" in result.stdout
    assert "validation gates failed" in result.stdout
    assert not (tmp_path / "work" / "bundle" / "revise.sig").exists()
    assert (
        json.loads((tmp_path / "work" / "bundle" / "bundle.json").read_text())["validation"][
            "verdict"
        ]
        == "fail"
    )
    cli("run", path, code=1)  # and stays so on a rerun


def test_dry_run_prints_the_commands_and_runs_nothing(cli, demo_site, tmp_path):
    path = recipe(tmp_path, demo_site, nproc_per_node=2, compile=True)
    result = cli("run", path, "--dry-run", code=0)
    lines = stage_lines(result)
    assert list(lines) == ["index", "unlearn:psg", "export", "validate"]
    assert "revise unlearn --model" in lines["unlearn:psg"]
    assert "--nproc-per-node 2" in lines["unlearn:psg"]  # torchrun workers, one per GPU
    assert "--compile" in lines["unlearn:psg"]
    assert not (tmp_path / "work").exists()
    # quoted as a shell needs it: the selection comes back whole when the line is pasted
    import shlex

    argv = shlex.split(lines["unlearn:psg"].split("] ", 1)[1])
    assert argv[argv.index("--forget") + 1] == cli.forget


def test_a_killed_run_resumes_to_the_uninterrupted_result(cli, demo_site, tmp_path):
    """SIGKILL during unlearning (after its first checkpoint); the rerun continues the run from
    the checkpoint and ends with the weights of an uninterrupted run."""
    from revise.models.io import load_model, weights_digest

    settings = {"epochs": 8, "lr": 0.001, "phi": 2}  # 56 steps: seconds after the checkpoint
    runs = {}
    for name in ("killed", "whole"):
        folder = tmp_path / name
        folder.mkdir()
        runs[name] = recipe(
            folder, demo_site, unlearn=[{"method": "psg", "settings": settings}],
            checkpoint_every=2, validate=None,
        )  # fmt: skip
    checkpoint = tmp_path / "killed" / "work" / "runs" / "psg.partial" / "checkpoint"
    kill_when(["run", runs["killed"]], checkpoint, tmp_path / "killed.log")
    resumed = cli("run", runs["killed"], code=0)
    lines = stage_lines(resumed)
    assert "skipped" in lines["index"] and "--resume" in lines["unlearn:psg"]
    cli("run", runs["whole"], code=0)
    digests = [
        weights_digest(load_model(tmp_path / name / "work" / "runs" / "psg").module)
        for name in ("killed", "whole")
    ]
    assert digests[0] == digests[1]


# three whole recipe runs: end to end, in the slow set (run by CI)
@pytest.mark.slow
def test_changed_inputs_rerun_their_stages_and_a_new_key_re_signs(
    cli, demo_site, tmp_path, monkeypatch
):
    """Every path a stage reads is fingerprinted (here the manifest and the deployed model's
    folder); a rotated key re-signs; no patient ID reaches the logs or the recipe copies."""
    import shutil

    import torch

    from revise.data import manifest as manifest_mod
    from revise.export.keys import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, generate_keys
    from revise.models.io import load_model, save_model

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(demo_site.manifest, tmp_path / "m.parquet")
    shutil.copytree(demo_site.model, tmp_path / "deployed")
    keys = tmp_path / "keys"
    generate_keys(keys / PRIVATE_KEY_NAME, keys / PUBLIC_KEY_NAME)
    clear_id = "MRN-0042-DOE"  # a clear patient ID (no such patient: it selects nothing more)
    (tmp_path / "also.txt").write_text(f"{clear_id}\n")
    path = recipe(
        tmp_path,
        demo_site,
        criteria=PARITY_ONLY,
        model="deployed",
        data={"manifest": "m.parquet"},
        forget=f'device == "Borealis CR-7" or patient == "{clear_id}" or patient in @also.txt',
        sign={"key": str(keys / PRIVATE_KEY_NAME)},
    )
    work, stages = tmp_path / "work", ["unlearn:psg", "export", "validate", "sign"]

    def ran(result) -> list[str]:
        return [name for name, line in stage_lines(result).items() if "skipped" not in line]

    first = cli("run", path, code=0)
    assert ran(first) == stages
    written = [work / "recipe.resolved.yaml", work / "bundle" / "recipe.yaml", work / "state.json"]
    for text in [first.stdout, first.stderr, *(p.read_text() for p in written)]:
        assert clear_id not in text
    resolved = yaml.safe_load((work / "bundle" / "recipe.yaml").read_text())
    assert resolved["recipe"]["forget"] == (
        'device == "Borealis CR-7" or patient == <identifier> or patient in @<list file>'
    )
    forget = resolved["commands"]["validate"].index("--forget") + 1
    assert resolved["commands"]["validate"][forget] == resolved["recipe"]["forget"]

    generate_keys(keys / PRIVATE_KEY_NAME, keys / PUBLIC_KEY_NAME, overwrite=True)  # rotation
    rotated = cli("run", path, code=0)
    assert ran(rotated) == ["sign"]
    cli("verify", work / "bundle", "--pub", keys / PUBLIC_KEY_NAME, code=0)

    df = manifest_mod.load(tmp_path / "m.parquet")
    manifest_mod.save(df.iloc[5:], tmp_path / "m.parquet")  # the data changed
    assert ran(cli("run", path, code=0)) == stages

    deployed = load_model(tmp_path / "deployed")
    with torch.no_grad():
        next(deployed.module.parameters()).mul_(0.5)
    save_model(deployed.module, deployed.card, tmp_path / "deployed")  # the model changed
    assert ran(cli("run", path, code=0)) == stages
    assert ran(cli("run", path, code=0)) == []  # and nothing more to do
    cli("verify", work / "bundle", "--pub", keys / PUBLIC_KEY_NAME, code=0)


@pytest.mark.slow  # end to end; CI runs it with the slow set
def test_a_validation_crash_stops_the_recipe_and_is_not_a_verdict(cli, demo_site, tmp_path):
    """A crash of `revise validate` (exit 1, like failed gates) must not be read as the old
    report's verdict: the recipe fails with the error, nothing is signed, and the next run
    validates again."""
    manifest = {"manifest": str(demo_site.manifest)}
    path = recipe(tmp_path, demo_site, criteria=PARITY_ONLY, data=manifest)
    cli("run", path, code=0)
    report = tmp_path / "work" / "validation" / "revision_report.json"
    assert json.loads(report.read_text())["verdict"] == "pass"

    (tmp_path / "newheld").mkdir()
    (tmp_path / "newheld" / "a.dcm").write_text("not a DICOM file\n")
    recipe(
        tmp_path,
        demo_site,
        criteria=PARITY_ONLY,
        data=manifest,
        validate={"criteria": "gates.yaml", "heldout": "newheld"},
    )
    for _ in range(2):  # and the next run does not take it as done
        crashed = cli("run", path, code=1)
        lines = stage_lines(crashed)
        assert "skipped" not in lines["validate"], crashed.stdout
        assert "no held-out image came from" in crashed.stderr
        assert "error: the validate stage failed: no held-out image" in crashed.stderr
        assert "bundle ready" not in crashed.stdout
        assert "validation gates failed" not in crashed.stdout
        assert not report.exists()  # the old report is not left to pass for this run's
        state = json.loads((tmp_path / "work" / "state.json").read_text())
        assert "validate" not in state["done"]


def test_a_gate_needing_a_reference_points_to_the_recipe_key(cli, demo_site, tmp_path):
    gates = "gates:\n  - metric: distance_to_reference\n    at_most: 0.5\n"
    path = recipe(tmp_path, demo_site, criteria=gates)
    message = cli("run", path, code=2).stderr
    assert "validate.criteria:" in message and "pass validate.reference RETRAINED_MODEL" in message
    assert "--reference" not in message


def test_a_changed_hidden_path_in_the_selection_still_changes_the_stage_fingerprint(tmp_path):
    """Records show `path == <identifier>`; the fingerprint must still see which path (keyed),
    or an edited selection would be taken for the stage already done."""
    from revise.recipe import Stage
    from revise.recipe.selection import _fingerprint

    def fingerprint(forget: str) -> str:
        args = ["unlearn", "--forget", forget, "-o", str(tmp_path / "run")]
        return _fingerprint(Stage("unlearn", args, tmp_path / "run"), {})

    one, other = 'path == "/site/A/1.dcm"', 'path == "/site/B/1.dcm"'
    assert Stage("x", ["--forget", one], tmp_path).shown() == ["--forget", "path == <identifier>"]
    assert fingerprint(one) != fingerprint(other)
    assert fingerprint(one) == fingerprint(one)


def test_a_run_without_a_method_is_the_automatic_revision(cli, demo_site, tmp_path):
    """As `revise unlearn` without --method: the run is auto, named auto, with no settings."""
    path = recipe(tmp_path, demo_site, unlearn=[{"seed": 3}])
    lines = stage_lines(cli("run", path, "--dry-run", code=0))
    assert list(lines) == ["index", "unlearn:auto", "export", "validate"]
    argv = lines["unlearn:auto"].split()
    assert argv[argv.index("--method") + 1] == "auto" and "--set" not in argv
    path = recipe(tmp_path, demo_site, unlearn=[{"settings": {"lr": 0.1}}])
    line = cli.one_line_error(cli("run", path, "--dry-run", code=2))
    assert "method auto takes no settings" in line
