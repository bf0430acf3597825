"""Shared test set-up: a fixed PHI key and an isolated home, so no test touches ~/.revise."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_site(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("revise-home")
    monkeypatch.setenv("REVISE_PHI_KEY", "test-site-key")
    monkeypatch.setenv("REVISE_CONFIG", str(home / "config.yaml"))
    monkeypatch.setenv("REVISE_PHI_KEY_FILE", str(home / "phi.key"))
    monkeypatch.delenv("REVISE_PLUGINS", raising=False)
    from revise import plugins

    plugins.reset()
    yield
    plugins.reset()
