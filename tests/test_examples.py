"""The examples in examples/ run as a user would run them, so they stay true."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each example runs the whole path (a site, trainings, a bundle) in its own processes.
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result


# The autouse fixture in conftest.py has set the site's environment (PHI key, config) that the
# subprocesses inherit.


def test_site_walkthrough_script_ends_with_a_signed_validated_bundle(tmp_path):
    work = tmp_path / "walk"
    result = _run(["bash", str(EXAMPLES / "site_walkthrough.sh"), str(work)], tmp_path)
    assert "OK: 15 files verified" in result.stdout  # 11, attestations, change control, int8
    assert "method psg, verdict pass" in result.stdout  # the attestations' summary
    bundle = json.loads((work / "bundle" / "bundle.json").read_text())
    assert bundle["validation"]["verdict"] == "pass"
    assert (work / "bundle" / "revise.sig").is_file()


def test_python_api_example_passes_its_gates(tmp_path):
    script = EXAMPLES / "python_api.py"
    result = _run([sys.executable, str(script), str(tmp_path / "api")], tmp_path)
    gates = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert gates and all(line.startswith("PASS") for line in gates)
