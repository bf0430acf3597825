"""The path of an ``@file`` list never reaches a record, a log line or the console.

Sites keep forget lists in folders named after the patient (``/requests/Doe^Jane_MRN0042/...``),
so a selection's ``@path`` is as identifying as the IDs in the file. ``describe()``, the
redaction every record and log line uses, shows it as ``@<list file>``.

Probes kept (what a careless user tried, and what revise must do):
* `revise -vv unlearn --forget 'patient in @/…/Doe^Jane_MRN0042/forget.txt'`, then `revise
  export` of the run, then `revise -vv validate` of the bundle with the same selection: no file
  written under the run folder, the bundle (run.json, bundle.json, model.onnx and its
  metadata_props) or the report folder holds the path or the folder name, nor does any output
  on stdout or stderr (debug logs included); the records still say a list file was used; the
  bundle's attestations (in-toto statement, ML-BOM) hold no patient's name, ID or birth date;
* ``describe()`` of ``@file`` comparisons on any column (``device in @devs.txt`` too): no path.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from revise.data.select import describe
from revise.export.manifest import ATTESTATION_FILES, STATEMENT_FILE

FOLDER = "Doe^Jane_MRN0042"


def _no_secret(texts: dict[str, str | bytes], secrets: tuple[str, ...]) -> None:
    for where, text in texts.items():
        data = text if isinstance(text, bytes) else text.encode()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} appears in {where}"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def forget_list(tmp_path) -> Path:
    path = tmp_path / "requests" / FOLDER / "forget.txt"
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"DEMO-{p:04d}\n" for p in range(6)))
    return path


def test_the_list_file_path_reaches_no_record_log_or_output(cli, demo_site, forget_list, tmp_path):
    selection = f'patient in @"{forget_list}"'
    secrets = (str(forget_list), FOLDER, "MRN0042")
    run = tmp_path / "run"
    unlearn = cli("-vv", *cli.unlearn_args(demo_site, run, forget=selection), code=0)
    bundle = tmp_path / "bundle"
    export = cli(
        "-vv", "export", run, "-o", bundle, "--data", demo_site.manifest, "--parity-samples", 8,
        code=0,
    )  # fmt: skip
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("gates:\n  - {metric: accuracy, set: retain, at_least: 0.0}\n")
    report = tmp_path / "report"
    validate = cli(
        "-vv", "validate", bundle, "--original", demo_site.model, "--data", demo_site.manifest,
        "--forget", selection, "--criteria", criteria, "-o", report, "--device", "cpu", code=0,
    )  # fmt: skip
    outputs = {
        f"{name} {stream}": getattr(result, stream)
        for name, result in (("unlearn", unlearn), ("export", export), ("validate", validate))
        for stream in ("stdout", "stderr")
    }
    _no_secret(outputs, secrets)
    _no_secret(_files(run) | _files(bundle) | _files(report), secrets)
    metadata = {p.key: p.value for p in onnx.load(str(bundle / "model.onnx")).metadata_props}
    _no_secret(metadata, secrets)
    # still a useful record: the selection's shape, and that a list file was used
    assert metadata["com.revise.forget_selection"] == "patient in @<list file>"
    assert '"patient in @<list file>"' in (run / "run.json").read_text()
    # the attestations record the revision with the selection as digests only: no patient's
    # name, ID or birth date (those of the list included), no selection text, no path
    attestations = {name: (bundle / name).read_text() for name in ATTESTATION_FILES}
    _no_secret(attestations, (*secrets, *_patient_values(demo_site.dicom), "patient in"))
    revision = json.loads(attestations[STATEMENT_FILE])["predicate"]["revision"]
    assert revision["method"] == "psg" and len(revision["forget_selection_sha256"]) == 64
    assert set(revision["set_digests"]) >= {"forget", "retain"}


def _patient_values(dicom: Path) -> tuple[str, ...]:
    """Every patient's ID, name (and its parts) and birth date, read from the site's files."""
    import pydicom

    values: set[str] = set()
    for folder in sorted(p for p in dicom.iterdir() if p.is_dir()):
        first = next(folder.glob("*.dcm"))
        ds = pydicom.dcmread(first, stop_before_pixels=True)
        name = str(ds.PatientName)
        values.update({str(ds.PatientID), name, *name.split("^"), str(ds.PatientBirthDate)})
    assert len(values) > 3 * 10  # a real site of patients, not an empty probe
    return tuple(sorted(v for v in values if len(v) >= 4 and v != "Demo"))


@pytest.mark.parametrize(
    "selection",
    [
        'patient in @"/requests/Doe^Jane_MRN0042/forget.txt"',
        "patient not in @/requests/Doe^Jane_MRN0042/forget.txt",
        'device in @"/requests/Doe^Jane_MRN0042/devices.txt" and label == 1',
        "not path in @/requests/Doe^Jane_MRN0042/files.txt",
    ],
)
def test_describe_hides_every_list_file_path(selection):
    text = describe(selection)
    assert "Doe" not in text and "MRN0042" not in text and "/requests" not in text, text
    assert "@<list file>" in text
