"""report.html: self-contained (fetches nothing), escapes user data, tolerates absent optional
parts, and renders every figure in a real headless browser (Debian chromium)."""

from __future__ import annotations

import copy
import os
import re
import shutil
from typing import Any

from chromium import browse, chromium, figures_rendered

from revise.validate.report_html import render_html, write_html

CLASSES = [str(i) for i in range(10)]
DEVICES = ("Acme DX-100", "Borealis CR-7")
EVIL = '<script>alert("x")</script> & "CR-9"'  # a hostile group name from the manifest


def _estimate(n: int, value: float) -> dict[str, Any]:
    half = round(1.96 * (value * (1 - value) / max(n, 1)) ** 0.5 + 0.004, 4)
    return {"n": n, "value": value, "ci95": [max(0.0, value - half), min(1.0, value + half)]}


def _set_table(n: int, value: float, devices: dict[str, float], spread: float) -> dict:
    labels = {
        c: _estimate(n // 10, max(0.0, min(1.0, value + spread * ((i % 5) - 2) / 2)))
        for i, c in enumerate(CLASSES)
    }
    return {
        **_estimate(n, value),
        "by": {
            "device": {d: _estimate(n // max(len(devices), 1), v) for d, v in devices.items()},
            "label": labels,
        },
    }


def _accuracy(forget: float, retain: float, hf: float, hr: float, hr_evil: float) -> dict:
    return {
        "forget": _set_table(435, forget, {"Acme DX-100": forget}, 0.04),
        "retain": _set_table(928, retain, {"Borealis CR-7": retain, EVIL: retain - 0.01}, 0.01),
        "heldout_forget": _set_table(110, hf, {"Acme DX-100": hf}, 0.05),
        "heldout_retain": _set_table(324, hr, {"Borealis CR-7": hr, EVIL: hr_evil}, 0.02),
    }


def _confusion(diagonal: float, seed: int) -> dict:
    matrix = []
    for i in range(10):
        row = [((i * 7 + j * 3 + seed) % 5) if i != j else 0 for j in range(10)]
        row[i] = int(43 * diagonal) + i
        matrix.append(row)
    return {"set": "heldout", "labels": CLASSES, "matrix": matrix}


def _histogram(shift: float) -> dict:
    edges = [round(0.1 * i, 2) for i in range(31)]
    members = [max(0, int(120 * 0.6**i)) for i in range(30)]
    nonmembers = [max(0, int(25 * (1 - abs(i - 8 * shift) / 12))) + 1 for i in range(30)]
    return {
        "edges": edges,
        "members": members,
        "nonmembers": nonmembers,
        "members_label": "forget set (train)",
        "nonmembers_label": "held-out, forgotten group",
    }


def _mia(mean: float, efficacy: float) -> dict:
    return {
        "loss_mia": {
            "mean": mean,
            "std": 0.02,
            "n_per_group": 110,
            "n_splits": 5,
            "members": "forget",
            "nonmembers": "heldout_forget",
        },
        "mia_efficacy": {"value": efficacy, "n_shadow": 324},
    }


def make_report() -> dict[str, Any]:
    """A realistic report of the demo's shape: 10 classes, 2 devices, 3 models, one failing
    per-device gate, and a group name that tries to inject a script."""
    return {
        "schema": "revise.validation_report/1",
        "verdict": "fail",
        "summary": "3 of 5 gates passed",
        "created_utc": "2026-11-28T20:40:00Z",
        "forget_selection": 'device == "Acme DX-100"',
        "class_names": CLASSES,
        "models": {
            "original": {"path": "deployed/", "format": "run", "sha256": "c0ffee" * 10 + "abcd"},
            "candidate": {"path": "runs/psg", "format": "run", "sha256": "ab12" * 16},
            "reference": {"path": "retrained/", "format": "run", "sha256": "9f" * 32},
        },
        "inputs": {
            "data": {"path": "site.parquet", "digest": "d1" * 32},
            "heldout": {
                "source": "http://127.0.0.1:8042/dicom-web",
                "kind": "dicomweb",
                "digest": "e2" * 32,
            },
            "criteria": {"path": "gates.yaml", "sha256": "f3" * 32},
            "onnx": {"path": "model.onnx", "sha256": "a4" * 32},
        },
        "sets": {
            "forget": {"n": 435, "description": "training images inside the forget selection"},
            "retain": {"n": 928, "description": "training images outside the forget selection"},
            "heldout_forget": {"n": 110, "description": "held-out images inside the selection"},
            "heldout_retain": {"n": 324, "description": "held-out images outside the selection"},
        },
        "gates": [
            {
                "name": "retired device forgotten on held-out images",
                "metric": "accuracy",
                "set": "heldout_forget",
                "group": None,
                "rule": "at_most 0.45",
                "threshold": 0.45,
                "value": 0.382,
                "interval": [0.29, 0.47],
                "judged_on": "estimate",
                "judged_value": 0.382,
                "n": 110,
                "passed": True,
                "margin": 0.068,
                "message": "estimate 0.382 <= 0.450 by 0.068 on 110 images",
            },
            {
                "name": "remaining devices keep their accuracy",
                "metric": "accuracy",
                "set": "heldout_retain",
                "group": {"device": "Borealis CR-7"},
                "rule": "at_least original - 0.02",
                "threshold": 0.952,
                "value": 0.961,
                "interval": [0.94, 0.98],
                "judged_on": "lower_bound",
                "judged_value": 0.94,
                "n": 162,
                "passed": False,
                "margin": -0.012,
                "message": "lower bound 0.940 < 0.952 (original 0.972 - 0.02) by 0.012 on 162 "
                "images",
            },
            {
                "name": "remaining devices keep their accuracy",
                "metric": "accuracy",
                "set": "heldout_retain",
                "group": {"device": EVIL},
                "rule": "at_least original - 0.02",
                "threshold": 0.95,
                "value": 0.93,
                "interval": [0.9, 0.96],
                "judged_on": "lower_bound",
                "judged_value": 0.9,
                "n": 162,
                "passed": False,
                "margin": -0.05,
                "message": f"lower bound 0.900 < 0.950 on group {EVIL}",
            },
            {
                "name": "indistinguishable from non-members",
                "metric": "loss_mia",
                "set": None,
                "group": None,
                "rule": "between [0.4, 0.6]",
                "threshold": [0.4, 0.6],
                "value": 0.52,
                "interval": None,
                "judged_on": "estimate",
                "judged_value": 0.52,
                "n": 220,
                "passed": True,
                "margin": 0.08,
                "message": "0.520 within [0.400, 0.600] by 0.080",
            },
            {
                "name": "ONNX matches PyTorch",
                "metric": "parity_max_abs_diff",
                "set": None,
                "group": None,
                "rule": "at_most 0.0001",
                "threshold": 0.0001,
                "value": 3.3e-6,
                "interval": None,
                "judged_on": "estimate",
                "judged_value": 3.3e-6,
                "n": 256,
                "passed": True,
                "margin": 9.67e-5,
                "message": "3.3e-06 <= 1e-04 on 256 images",
            },
        ],
        "accuracy": {
            "original": _accuracy(0.998, 0.998, 0.982, 0.972, 0.97),
            "candidate": _accuracy(0.434, 0.977, 0.382, 0.935, 0.93),
            "reference": _accuracy(0.372, 0.999, 0.354, 0.966, 0.96),
        },
        "agreement": {
            "forget": _estimate(435, 0.43),
            "retain": _estimate(928, 0.97),
            "heldout_forget": _estimate(110, 0.38),
            "heldout_retain": _estimate(324, 0.94),
        },
        "confusion": {
            "original": _confusion(0.98, 0),
            "candidate": _confusion(0.7, 1),
            "reference": _confusion(0.68, 2),
        },
        "mia": {
            "original": _mia(0.71, 0.05),
            "candidate": _mia(0.52, 0.61),
            "reference": _mia(0.5, 0.64),
        },
        "loss_histograms": {
            "original": _histogram(1.0),
            "candidate": _histogram(0.5),
            "reference": _histogram(0.4),
        },
        "reference": {
            "distance": 0.041,
            "avg_gap": 2.3,
            "original_distance": 0.62,
            "original_avg_gap": 31.5,
        },
        "parity": {
            "n": 256,
            "max_abs_diff": 3.3e-6,
            "max_rel_diff": 1e-5,
            "label_agreement": 1.0,
            "within_tolerance": True,
        },
        "definitions": {
            "accuracy": "share of images whose predicted class is the label",
            "loss_mia": "held-out accuracy of a logistic regression on per-sample loss",
            "mia_efficacy": "share of the forget set an SVC calls non-member",
        },
        "software": {
            "revise": "0.1.0",
            "python": "3.11.7",
            "torch": "2.13.0",
            "platform": "Linux-6.1-x86_64",
        },
        "timings_s": {"decode": 2.0, "inference": 0.4, "mia": 1.1, "total": 4.0},
        "decode_failures": 0,
    }


# Figures the fixture should draw: per set (4) a device and a label chart, a confusion matrix
# and a loss histogram per model (3 each).
EXPECTED_FIGURES = 4 * 2 + 3 + 3


# -- static checks -------------------------------------------------------------------------------


def test_self_contained():
    page = render_html(make_report())
    assert page.startswith("<!DOCTYPE html>")
    assert "<link" not in page.lower()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"@import", page, re.I)
    for attr in re.findall(r"""\b(?:src|href|xlink:href)\s*=\s*["']?([^"'\s>]*)""", page, re.I):
        assert attr.startswith("#"), f"reference out of the page: {attr!r}"
    for target in re.findall(r"url\(\s*([^)]*)\)", page, re.I):
        assert target.strip("'\" ").startswith("#"), f"url() out of the page: {target!r}"
    assert page.count('<svg class="figure"') == EXPECTED_FIGURES
    assert page.count("<script>") == 1  # only the figure counter


def test_escapes_user_data():
    page = render_html(make_report())
    assert EVIL not in page
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;CR-9&quot;" in page
    assert "device == &quot;Acme DX-100&quot;" in page
    assert "Borealis CR-7" in page


def test_content():
    report = make_report()
    page = render_html(report)
    assert ">FAIL<" in page and "3 of 5 gates passed" in page
    assert page.count('<tr class="head fail">') == 2
    assert page.count('<tr class="head pass">') == 3
    assert "0.972" in page  # accuracies to 3 decimals
    assert "3.3e-06" in page  # tiny parity differences stay readable
    assert "-0.012" in page and "+0.068" in page  # signed margins
    full = report["models"]["candidate"]["sha256"]
    assert f'title="{full}"' in page and f">{full[:12]}…<" in page
    for anchor in (
        "gates",
        "accuracy",
        "agreement",
        "confusion",
        "mia",
        "reference",
        "parity",
        "inputs",
        "definitions",
        "software",
    ):
        assert f'<section id="{anchor}">' in page and f'href="#{anchor}"' in page


def test_optional_parts_absent():
    report = make_report()
    report["verdict"], report["summary"] = "pass", "2 of 2 gates passed"
    report["gates"] = [g for g in report["gates"] if g["passed"]][:2]
    report["reference"] = None
    report["parity"] = None
    report["inputs"]["onnx"] = None
    for key in ("accuracy", "mia", "loss_histograms", "confusion"):
        report[key].pop("reference")
    del report["models"]["reference"]
    report["mia"]["original"] = {"loss_mia": {"error": "too few non-members"}}
    del report["loss_histograms"]["original"]
    for model in report["accuracy"].values():
        for entry in model.values():
            entry["by"] = {}
    page = render_html(report)
    assert ">PASS<" in page and 'class="banner pass"' in page
    assert 'id="reference"' not in page and 'id="parity"' not in page
    assert 'href="#parity"' not in page
    assert "too few non-members" in page
    assert page.count('<svg class="figure"') == 2 + 1  # confusion x2, histogram x1

    bare = {"verdict": "fail", "summary": "no data", "gates": []}
    assert "FAIL" in render_html(bare)
    minimal = copy.deepcopy(report)
    for key in (
        "agreement",
        "confusion",
        "mia",
        "loss_histograms",
        "definitions",
        "software",
        "timings_s",
        "sets",
        "inputs",
    ):
        minimal.pop(key)
    assert "<svg" not in render_html(minimal)


def test_write_html_atomic(tmp_path):
    out = write_html(make_report(), tmp_path / "sub" / "report.html")
    assert out == tmp_path / "sub" / "report.html"
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left


# -- a real browser ----------------------------------------------------------------------------


def test_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    exe = chromium()
    page = write_html(make_report(), tmp_path / "report.html")
    url = page.resolve().as_uri()
    assert figures_rendered(page, tmp_path / "profile-dom") == (EXPECTED_FIGURES, EXPECTED_FIGURES)

    shot = tmp_path / "report.png"
    run = browse(
        exe, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,10000", url
    )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1280, 10000)
        small = rgb.resize((160, 1250))
        colours = small.getcolors(maxcolors=1 << 16) or []
        assert len(colours) > 50, "the screenshot is (nearly) blank"
        lo, hi = zip(*(band.getextrema() for band in rgb.split()), strict=True)
        assert min(lo) < 60 and max(hi) > 200  # dark text on a light page
    keep = os.environ.get("REVISE_REPORT_SCREENSHOT")  # e.g. /tmp/report_screenshot.png
    if keep:  # for a human to look at
        shutil.copyfile(shot, keep)
