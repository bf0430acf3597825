"""report.html: self-contained (fetches nothing), escapes user data wherever it appears (tables,
captions, chart labels, tooltips), renders to the same bytes every time, tolerates absent
optional parts, and renders every figure in a real headless browser (Debian chromium)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import markupsafe
from chromium import browse, chromium, figures_rendered

from revise.validate.report_html import render_html, write_html

CLASSES = [str(i) for i in range(10)]
DEVICES = ("Acme DX-100", "Borealis CR-7")
EVIL = '<script>alert("x")</script> & "CR-9"'  # a hostile group name from the manifest
# EVIL as the templates (markupsafe) escape it.
EVIL_ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;CR-9&#34;"


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
    assert EVIL_ESCAPED in page  # the gate's group and message, the bar chart's tooltips
    assert "&lt;script&gt;alert…pt&gt; &amp;" in page  # the chart's (shortened) axis label
    assert f"<title>{EVIL_ESCAPED}</title><text " in page  # ... with the full name on hover
    assert "device == &#34;Acme DX-100&#34;" in page
    assert "Borealis CR-7" in page


def _hostile(tag: str) -> str:
    """User text that is markup, an entity, quotes and mathtext, marked to be found again."""
    return f"<x-{tag}>&amp;\"'$x$"


def _hostile_report() -> dict[str, Any]:
    """The realistic report with hostile text in every field that the page shows."""
    h = _hostile
    report = make_report()
    report.update(
        created_utc=h("created"),
        schema=h("schema"),
        summary=h("summary"),
        forget_selection=h("selection"),
        class_names=[h(f"c{i}") for i in range(10)],
        definitions={h("defname"): h("deftext")},
        software={h("package"): h("version")},
        timings_s={h("stage"): 1.0},
        decode_failures=2,
        decode_left_out={h("leftout"): {"n": 2}},
    )
    report["models"]["candidate"].update(path=h("path"), format=h("format"), sha256=h("sha"))
    report["models"][h("model")] = {"path": "other/", "format": "run"}
    report["inputs"][h("input")] = {"source": h("source"), "kind": h("kind"), "digest": h("dg")}
    report["sets"][h("set")] = {"n": 3, "description": h("setdesc"), "digest": h("setdg")}
    gate = report["gates"][1]
    gate.update(
        name=h("gate"),
        metric=h("metric"),
        set=h("gateset"),
        group={h("gcol"): h("gval")},
        rule=h("rule"),
        judged_on=h("judged"),
        message=h("message"),
    )
    report["gates"][2]["group"] = h("gstr")
    by = report["accuracy"]["candidate"]["retain"]["by"]
    by[h("column")] = {h("group"): _estimate(10, 0.5)}
    by["label"] = {h(f"c{i}"): entry for i, entry in enumerate(by["label"].values())}
    report["accuracy"][h("model")] = {"forget": _estimate(435, 0.5)}
    report["confusion"]["original"]["labels"] = [h(f"l{i}") for i in range(10)]
    report["confusion"]["original"]["set"] = h("cmset")
    report["loss_histograms"]["candidate"].update(members_label=h("mem"), nonmembers_label=h("non"))
    report["mia"]["original"] = {
        "loss_mia": {"error": h("lossmiaerr")},
        "mia_efficacy": {"error": h("efferr")},
    }
    report["mia"]["candidate"]["loss_mia"].update(members=h("members"), nonmembers=h("nonmem"))
    return report


# Each hostile field, and where it is shown: as escaped text in the HTML (including the
# figures' tooltips, escaped by the templates' rules) or as text in a figure, which matplotlib
# escapes (&lt; &gt; &amp;, quotes kept) and draws without mathtext.
SHOWN_AS_HTML = [
    "created",
    "schema",
    "summary",
    "selection",
    "defname",
    "deftext",
    "package",
    "version",
    "stage",
    "leftout",
    "path",
    "format",
    "sha",
    "model",
    "input",
    "source",
    "kind",
    "dg",
    "set",
    "setdesc",
    "setdg",
    "gate",
    "metric",
    "gateset",
    "gcol",
    "gval",
    "rule",
    "judged",
    "message",
    "gstr",
    "column",
    "group",
    "lossmiaerr",
    "efferr",
    "members",
    "nonmem",
    "cmset",
]
SHOWN_IN_FIGURES = ["group", "c0", "c9", "l0", "l9", "mem", "non", "model"]


def test_every_piece_of_user_text_is_escaped_everywhere():
    page = render_html(_hostile_report())
    assert "<x-" not in page  # no user text became an element, anywhere on the page
    assert page.count("<script>") == 1
    for tag in SHOWN_AS_HTML:
        assert str(markupsafe.escape(_hostile(tag))) in page, tag
    for tag in SHOWN_IN_FIGURES:
        shown = re.escape(f"&lt;x-{tag}&gt;&amp;amp;\"'$x$")  # $x$ as typed, not mathtext
        assert re.search(f"<text [^>]*>{shown}[^<]*</text>", page), tag
    # shortened labels keep the whole name as the tooltip, escaped
    assert f"<title>{markupsafe.escape(_hostile('group'))} - candidate (revised): 0.500" in page
    # the digest shortened for reading: both halves escaped
    sha = _hostile("sha")
    assert f'<code title="{markupsafe.escape(sha)}">{markupsafe.escape(sha[:12])}…</code>' in page


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


def test_no_address_outside_the_page():
    """Nothing on the page points outside it: the only addresses are the SVG namespace names
    (identifiers, never fetched) and the user's own DICOMweb source, shown as text."""
    page = render_html(make_report())
    page = page.replace("<code>http://127.0.0.1:8042/dicom-web</code>", "", 1)
    page = re.sub(r'\sxmlns(?::xlink)?="http://www\.w3\.org/(?:2000/svg|1999/xlink)"', "", page)
    assert not re.search(r"https?:|//[a-z]|<link|<script\s[^>]*src|<img|<image|data:", page, re.I)


def test_figures_are_accessible_and_their_ids_unique_on_the_page():
    page = render_html(make_report())
    figures = re.findall(r"<svg\b[^>]*>(?:<title>[^<]+</title>)?", page)
    assert len(figures) == EXPECTED_FIGURES
    for svg in figures:
        assert 'class="figure" role="img"' in svg and "<title>" in svg, svg
        assert re.search(r'viewBox="0 0 [\d.]+ [\d.]+"', svg)
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "an id defined twice (several figures share the page)"
    for ref in re.findall(r'(?:href="#|url\(#)([^")]+)', page):
        assert ref in ids, f"a reference to nothing: #{ref}"
    # no page-wide stylesheet from inside a figure (matplotlib writes one by default)
    assert page.count("<style") == 1


def test_what_the_charts_show():
    page = render_html(make_report())
    charts = re.findall(r'<svg class="figure".*?</svg>', page, re.S)
    bars, confusion, loss = charts[:8], charts[8:11], charts[11:]
    device = bars[6]  # held-out, retained, by device: the failing per-device gate's group
    assert "<title>Accuracy on the held-out, retained by device</title>" in device
    assert ">accuracy</text>" in device and ">Borealis CR-7</text>" in device
    for model in ("original (deployed)", "candidate (revised)", "reference (retrained)"):
        assert f">{model}</text>" in device  # the legend
    assert ">0.972</text>" in device and ">0.935</text>" in device  # values beside the bars
    tip = "<title>Borealis CR-7 - candidate (revised): 0.935 (95% CI 0.893-0.977), n=162</title>"
    assert tip in device  # the interval and n on hover
    # each model keeps its colour in every chart (Okabe-Ito blue, orange, green)
    for colour in ("#0072b2", "#e69f00", "#009e73"):
        assert all(f"fill: {colour}" in chart for chart in bars)
    for chart in confusion:
        assert ">predicted class</text>" in chart and ">true class</text>" in chart
        assert "of the row)</title>" in chart
    assert ">30</text>" in confusion[1]  # a count in its cell
    for chart in loss:
        assert (
            ">share of group</text>" in chart and ">per-sample cross-entropy loss</text>" in chart
        )
        assert ">forget set (train) (n=295)</text>" in chart
        assert "#d55e00" in chart and "#0072b2" in chart  # members vermillion, non-members blue


def test_a_missing_bar_says_so():
    from revise.validate.figures import Bar, grouped_hbar

    svg = grouped_hbar(
        ["CR-7", "DX-100"],
        [("original", [Bar(0.9, (0.8, 0.95), 40), Bar(0.5)]), ("candidate", [Bar(0.7), None])],
        title="Accuracy by device",
    )
    assert svg.count("<title>") == 1 + 3  # the figure's name, one tooltip per drawn bar
    assert ">n/a (candidate)</text>" in svg and ">0.500</text>" in svg
    assert "<title>CR-7 - original: 0.900 (95% CI 0.800-0.950), n=40</title>" in svg


def test_same_report_same_bytes_whatever_the_matplotlib_settings():
    import matplotlib

    report = make_report()
    page = render_html(report)
    assert render_html(copy.deepcopy(report)) == page
    hostile_rc = {"svg.hashsalt": None, "svg.fonttype": "path", "font.size": 20.0}
    with matplotlib.rc_context(hostile_rc):
        assert render_html(report) == page
        assert matplotlib.rcParams["font.size"] == 20.0  # the user's settings, left as they were
    # another process, another hash seed: the same bytes
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from test_report_html import make_report\n"
        "from revise.validate.report_html import render_html\n"
        "sys.stdout.write(render_html(make_report()))\n"
    )
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONIOENCODING": "utf-8"}
    run = subprocess.run(
        [sys.executable, "-c", code, str(here), str(here.parent)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == page


def test_the_report_module_does_not_import_matplotlib():
    """The CLI imports the validation code on every command; matplotlib only when it draws."""
    code = (
        "import sys, revise.cli.validate, revise.validate.report_html, revise.validate.figures\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


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
