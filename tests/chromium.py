"""A real headless browser (Debian ``chromium``) for the tests of the HTML report.

Test modules import what they need (tests/ is on sys.path): ``from chromium import chromium,
figures_rendered``. Without chromium the tests skip, except under ``CI=true``, where they fail so
that CI cannot silently skip them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSER_TIMEOUT_S = 40


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required on CI for the report rendering test")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return exe


def browse(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        exe,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",  # as root (containers) chromium refuses to start with its sandbox
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",  # let the load handler run before the dump/screenshot
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)


def figures_rendered(page: Path, profile: Path) -> tuple[int, int]:
    """(figures that rendered with a non-zero box, figures on the page), as the page's onload
    script counted them in a real browser."""
    dom = browse(chromium(), profile, "--dump-dom", page.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    rendered = re.search(r'data-figures-rendered="(\d+)"', body.group(1))
    total = re.search(r'data-figures-total="(\d+)"', body.group(1))
    assert rendered and total, f"the onload script did not run: {body.group(0)}"
    return int(rendered.group(1)), int(total.group(1))
