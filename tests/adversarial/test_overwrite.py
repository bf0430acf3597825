"""Outputs never destroy a command's inputs or files revise did not write (issue 13, class 3).

Probes kept here (what a careless user tried -> what revise must do):

* `unlearn -o MANIFEST --overwrite`, the run folder over its own input manifest -> exit 2, one
  line naming the input, the manifest byte for byte unchanged, nothing run.
* `select M EXPR -o M`, and `-o LINK` where LINK is a symlink to M, with or without
  --overwrite -> exit 2, M unchanged, nothing printed.
* `evaluate --json MANIFEST`, no --overwrite at all -> exit 2 before any image is decoded.
* `export MODEL -o FOLDER_OF_DICOM_FILES --overwrite` -> exit 2 naming the folder (revise did not
  write it), every file unchanged.
* `unlearn --model W/base -o W --overwrite`, W a revise run folder that holds the input model
  -> exit 2 (a folder that contains an input), W unchanged.
* `unlearn -o OUT` where ``OUT.partial`` (where runs are built) is a folder of the user's ->
  exit 2 naming it, its files unchanged (it used to be removed as an unfinished run).
* `merge A B ... -o A --overwrite` (a run over one of its own runs) -> exit 2.
* `validate ... --criteria W/gates.yaml -o W --overwrite` -> exit 2.
* `index --labels L --failures L` (the failure list over the labels input) -> exit 2.
* `index -o EXISTING_MANIFEST` without --overwrite -> exit 2 (file outputs follow the folder
  rule); with --overwrite the manifest revise wrote is replaced; a .parquet revise did not
  write is refused even with --overwrite, naming it.
* `evaluate --json USER.json --overwrite` (a JSON revise did not write) -> exit 2 naming it;
  evaluate's own metrics JSON is replaced with --overwrite.
* `revise run` with a workdir that already holds the user's files -> exit 2 naming the workdir,
  before any stage runs, the files unchanged.
* `revise demo -o FOLDER_OF_USER_FILES` -> exit 2, the demo never starts.
* The mechanism itself (revise._io.outputs.check_output): an empty folder and a folder revise wrote
  may be replaced with overwrite; a user's folder, file, or an input (also through a symlink or
  inside the output folder) may not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from revise.errors import UsageError


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) -> its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def copy_manifest(demo_site, folder: Path, rows: int | None = None) -> Path:
    """A writable copy of the shared manifest (its first ``rows`` rows)."""
    from revise.data import manifest as manifest_mod

    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "manifest.parquet"
    if rows is None:
        shutil.copyfile(demo_site.manifest, out)
    else:
        manifest_mod.save(manifest_mod.load(demo_site.manifest).head(rows), out)
    return out


def refused(cli, result, *phrases: object) -> str:
    line = cli.one_line_error(result)
    for phrase in phrases:
        assert str(phrase) in line, line
    return line


# --- a command's own inputs --------------------------------------------------------------------


def test_unlearn_does_not_turn_its_input_manifest_into_a_run_folder(cli, demo_site, tmp_path):
    manifest = copy_manifest(demo_site, tmp_path)
    before = manifest.read_bytes()
    args = ["unlearn", "--model", demo_site.model, "--data", manifest, "--forget", cli.forget]
    cache = tmp_path / "cache"
    result = cli(*args, "-o", manifest, "--overwrite", "--cache", cache, "--device", "cpu", code=2)
    refused(cli, result, f"-o {manifest} would replace the input {manifest}", "choose another -o")
    assert manifest.is_file() and manifest.read_bytes() == before
    assert not cache.exists(), "refused before any image was decoded"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_select_never_writes_over_its_manifest_nor_through_a_symlink_to_it(
    cli, demo_site, tmp_path, overwrite
):
    manifest = copy_manifest(demo_site, tmp_path)
    before = manifest.read_bytes()
    link = tmp_path / "selected.parquet"
    link.symlink_to(manifest)
    for out in (manifest, link):
        result = cli("select", manifest, cli.forget, "-o", out, *overwrite, code=2)
        refused(cli, result, f"-o {out} would replace the input {manifest}")
    assert manifest.read_bytes() == before and link.is_symlink()


def test_evaluate_json_over_its_manifest_is_refused_before_any_work(cli, demo_site, tmp_path):
    manifest = copy_manifest(demo_site, tmp_path)
    before = manifest.read_bytes()
    cache = tmp_path / "cache"
    args = ["evaluate", "--model", demo_site.model, "--data", manifest, "--cache", cache]
    result = cli(*args, "--json", manifest, "--device", "cpu", code=2)
    refused(cli, result, f"--json {manifest} would replace the input {manifest}")
    assert manifest.read_bytes() == before
    assert not cache.exists()


def test_unlearn_refuses_an_output_folder_that_holds_its_input_model(
    cli, demo_site, run_folder, tmp_path
):
    work = Path(shutil.copytree(run_folder, tmp_path / "old-run"))  # revise wrote it
    base = Path(shutil.copytree(demo_site.model, work / "base"))
    before = snapshot(work)
    args = ["unlearn", "--model", base, "--data", demo_site.manifest, "--forget", cli.forget]
    result = cli(*args, "-o", work, "--overwrite", "--device", "cpu", code=2)
    refused(cli, result, f"-o {work} would replace the input {base}")
    assert snapshot(work) == before


def test_unlearn_never_removes_a_partial_folder_revise_did_not_make(cli, demo_site, tmp_path):
    """``OUT.partial`` is where a run is built; a user's folder of that name is not removed."""
    out = tmp_path / "run"
    mine = tmp_path / "run.partial"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's\n")
    before = snapshot(mine)
    result = cli(*cli.unlearn_args(demo_site, out), code=2)
    refused(cli, result, f"{mine} is where the run run is built, but revise did not make it")
    assert snapshot(mine) == before and not out.exists()


def test_merge_refuses_to_write_over_one_of_its_runs(cli, run_folder, tmp_path):
    a = Path(shutil.copytree(run_folder, tmp_path / "a"))
    b = Path(shutil.copytree(run_folder, tmp_path / "b"))
    before = snapshot(a)
    result = cli("merge", a, b, "--backbone", a, "--head", b, "-o", a, "--overwrite", code=2)
    refused(cli, result, f"-o {a} would replace the input {a}")
    assert snapshot(a) == before


def test_validate_refuses_a_report_folder_that_holds_its_criteria(
    cli, demo_site, run_folder, tmp_path
):
    work = tmp_path / "w"
    work.mkdir()
    criteria = work / "gates.yaml"
    criteria.write_text("gates:\n  - {metric: accuracy, set: retain, at_least: 0.0}\n")
    args = ["validate", run_folder, "--original", demo_site.model, "--data", demo_site.manifest]
    args += ["--forget", cli.forget, "--criteria", criteria, "--device", "cpu"]
    result = cli(*args, "-o", work, "--overwrite", code=2)
    refused(cli, result, f"-o {work} would replace the input {criteria}")
    assert sorted(p.name for p in work.iterdir()) == ["gates.yaml"]


@pytest.fixture
def small_site(demo_site, tmp_path) -> Path:
    """A writable copy of one patient's DICOM files (a few dozen)."""
    return Path(shutil.copytree(demo_site.dicom / "05", tmp_path / "site" / "05")).parent


def test_index_does_not_write_its_failure_list_over_the_labels(
    cli, demo_site, small_site, tmp_path
):
    labels = Path(shutil.copyfile(demo_site.labels, tmp_path / "labels.csv"))
    before = labels.read_bytes()
    args = ["index", small_site, "-o", tmp_path / "m.parquet", "--labels", labels]
    result = cli(*args, "--failures", labels, "--overwrite", code=2)
    refused(cli, result, f"--failures {labels} would replace the input {labels}")
    assert labels.read_bytes() == before
    assert not (tmp_path / "m.parquet").exists()


# --- files and folders revise did not write ----------------------------------------------------


def test_export_over_a_folder_of_dicom_files_is_refused_even_with_overwrite(
    cli, demo_site, tmp_path
):
    site = Path(shutil.copytree(demo_site.dicom / "03", tmp_path / "dicom"))
    before = snapshot(site)
    result = cli("export", demo_site.model, "-o", site, "--overwrite", code=2)
    refused(cli, result, f"-o {site} does not look like revise's output", "replaces only its own")
    assert snapshot(site) == before
    assert cli.leftovers(tmp_path) == []


def test_index_output_file_follows_the_overwrite_rule(cli, small_site, tmp_path):
    manifest = tmp_path / "m.parquet"
    cli("index", small_site, "-o", manifest, code=0)
    first = manifest.read_bytes()
    result = cli("index", small_site, "-o", manifest, code=2)
    refused(cli, result, f"-o {manifest} already exists", "--overwrite")
    assert manifest.read_bytes() == first
    cli("index", small_site, "-o", manifest, "--overwrite", code=0)  # revise wrote it
    assert len(pd.read_parquet(manifest)) == len(list(small_site.rglob("*.dcm")))
    theirs = tmp_path / "theirs.parquet"
    pd.DataFrame({"patient_name": ["x"], "score": [1.0]}).to_parquet(theirs)
    mine = theirs.read_bytes()
    result = cli("index", small_site, "-o", theirs, "--overwrite", code=2)
    refused(cli, result, f"-o {theirs} does not look like revise's output")
    assert theirs.read_bytes() == mine


def test_evaluate_json_replaces_only_its_own_metrics(cli, demo_site, tmp_path):
    manifest = copy_manifest(demo_site, tmp_path / "data", rows=60)
    notes = tmp_path / "notes.json"
    notes.write_text('{"reviewer": "keep me"}\n')
    args = ["evaluate", "--model", demo_site.model, "--data", manifest, "--device", "cpu"]
    result = cli(*args, "--json", notes, "--overwrite", code=2)
    refused(cli, result, f"--json {notes} does not look like revise's output")
    assert notes.read_text() == '{"reviewer": "keep me"}\n'
    metrics = tmp_path / "metrics.json"
    cli(*args, "--json", metrics, code=0)
    first = json.loads(metrics.read_text())
    assert first["retain"]["n"] == 60
    refused(cli, cli(*args, "--json", metrics, code=2), f"--json {metrics} already exists")
    cli(*args, "--json", metrics, "--overwrite", code=0)
    assert json.loads(metrics.read_text()) == first


def test_a_recipe_workdir_holding_user_files_is_refused_before_any_stage(
    cli, demo_site, small_site, tmp_path
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "manifest.parquet").write_bytes(b"the user's own table, not revise's")
    (work / "notes.txt").write_text("keep me\n")
    before = snapshot(work)
    gates = "gates:\n  - {metric: accuracy, set: retain, at_least: 0}\n"
    (tmp_path / "gates.yaml").write_text(gates)
    doc = {
        "workdir": "work",
        "model": str(demo_site.model),
        "data": {"images": str(small_site), "labels": str(demo_site.labels)},
        "forget": 'device == "no such device"',
        "device": "cpu",
        "unlearn": [{"method": "psg", "settings": {"epochs": 1}}],
        "validate": {"criteria": "gates.yaml"},
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(doc))
    result = cli("run", recipe, code=2)
    refused(cli, result, f"workdir {work} does not look like revise's output")
    assert snapshot(work) == before


def test_demo_refuses_a_folder_of_user_files(cli, tmp_path, monkeypatch):
    import revise.stages.demo

    def never(*args, **kwargs):
        raise AssertionError("the demo ran in the user's folder")

    monkeypatch.setattr(revise.stages.demo, "run_demo", never)
    folder = tmp_path / "mine"
    (folder / "site").mkdir(parents=True)
    (folder / "site" / "notes.txt").write_text("keep me\n")
    result = cli("demo", "-o", folder, "--device", "cpu", code=2)
    refused(cli, result, f"-o {folder} does not look like revise's output")
    assert snapshot(folder) == {"site/notes.txt": b"keep me\n"}


# --- the mechanism -----------------------------------------------------------------------------


def test_check_output_rules(tmp_path):
    from revise._io.outputs import check_output

    empty = tmp_path / "empty"
    empty.mkdir()
    check_output(empty, overwrite=True)  # nothing to lose
    with pytest.raises(UsageError, match="already exists"):
        check_output(empty, overwrite=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    check_output(run, overwrite=True)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "a.txt").write_text("a")
    with pytest.raises(UsageError, match="does not look like revise"):
        check_output(theirs, overwrite=True, option="-o")
    data = run / "data.csv"
    data.write_text("sample_key,path\n")
    with pytest.raises(UsageError, match="would replace the input"):
        check_output(run, overwrite=True, inputs=[data])  # an input inside the output folder
    with pytest.raises(UsageError, match="would replace the input"):
        check_output(tmp_path / "link", overwrite=True, inputs=[None, tmp_path / "link"])
    check_output(tmp_path / "new", overwrite=False, inputs=[data])  # beside it: fine
