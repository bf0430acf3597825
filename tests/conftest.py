"""Shared test set-up: a fixed PHI key and an isolated home, so no test touches ~/.revise."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from orthanc import orthanc  # noqa: F401  (the session fixture: one real PACS for the whole run)

# Under pytest-xdist (`-n 2`) the workers share the cores: torch gets its share in each, so that
# two workers do not oversubscribe the CPU (results do not depend on it: a test comparing runs
# makes both in the same process or passes its thread count on, tests/clirunner.py).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    )

# The shared sites (a DICOM demo site with its model and psg run; real export bundles) are
# session fixtures every test folder can use, tests/adversarial included.
pytest_plugins = ["cli_site", "export_site"]


@contextlib.contextmanager
def _site_env(mp: pytest.MonkeyPatch, home: Path) -> Iterator[None]:
    from revise.data import plugins

    mp.setenv("REVISE_PHI_KEY", "test-site-key")
    mp.setenv("REVISE_CONFIG", str(home / "config.yaml"))
    mp.setenv("REVISE_PHI_KEY_FILE", str(home / "phi.key"))
    mp.delenv("REVISE_PLUGINS", raising=False)
    plugins.reset()
    try:
        yield
    finally:
        plugins.reset()


@pytest.fixture(autouse=True)
def _isolated_site(tmp_path_factory, monkeypatch):
    with _site_env(monkeypatch, tmp_path_factory.mktemp("revise-home")):
        yield


@pytest.fixture(scope="session")
def isolated_env(tmp_path_factory) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """For session fixtures (which run outside any test): ``with isolated_env(): ...`` gives
    their set-up the same environment as a test, and leaves torch's global random state as
    found."""

    @contextlib.contextmanager
    def enter() -> Iterator[None]:
        import torch

        home = tmp_path_factory.mktemp("revise-home")
        with (
            pytest.MonkeyPatch.context() as mp,
            torch.random.fork_rng(devices=[]),
            _site_env(mp, home),
        ):
            yield

    return enter


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``CI=true`` a skipped test fails: CI must not pass by silently skipping what it
    could not set up (a PACS that did not start, a test file that is not installed)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (skips are failures in CI): {reason}"
