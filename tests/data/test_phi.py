"""revise.phi: the site key file is made once, atomically, and a damaged one is refused."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from revise import phi
from revise.errors import RevisionError
from revise.phi import pseudonym, site_key


@pytest.fixture
def key_file(tmp_path, monkeypatch) -> Path:
    """The key comes from a file (not REVISE_PHI_KEY) that does not exist yet."""
    path = tmp_path / "home" / ".revise" / "phi.key"
    monkeypatch.delenv("REVISE_PHI_KEY", raising=False)
    monkeypatch.setenv("REVISE_PHI_KEY_FILE", str(path))
    return path


def test_first_use_creates_a_private_random_key(key_file):
    key = site_key()
    assert len(key) == 32 and key_file.read_bytes() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert site_key() == key  # read back, not made again
    assert [p.name for p in key_file.parent.iterdir()] == ["phi.key"]  # no temp file left


@pytest.mark.parametrize("content", [b"", b"short key"])
def test_an_empty_or_short_key_file_is_refused(key_file, content):
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(content)
    with pytest.raises(RevisionError) as err:
        pseudonym("MRN-4711")
    message = str(err.value)
    assert str(key_file) in message and f"holds {len(content)} bytes" in message
    assert "REVISE_PHI_KEY" in message and "MRN-4711" not in message
    assert key_file.read_bytes() == content  # left for the user to restore, not replaced


def test_a_key_made_meanwhile_by_another_process_is_kept(key_file):
    # The race's losing side: the file appeared after our exists() check. Its key wins, ours is
    # dropped without clobbering it or raising FileExistsError.
    key_file.parent.mkdir(parents=True)
    theirs = os.urandom(32)
    key_file.write_bytes(theirs)
    phi._create_key_file(key_file)
    assert key_file.read_bytes() == theirs == site_key()
    assert [p.name for p in key_file.parent.iterdir()] == ["phi.key"]


def _key_when_released(barrier, path: str, queue) -> None:
    os.environ.pop("REVISE_PHI_KEY", None)
    os.environ["REVISE_PHI_KEY_FILE"] = path
    barrier.wait()
    try:
        queue.put(site_key().hex())
    except Exception as exc:  # reported to the test, which shows it
        queue.put(f"{type(exc).__name__}: {exc}")


def test_workers_starting_together_share_one_key(tmp_path):
    # torchrun starts every worker at once; each must end up with the same, complete key.
    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):
        path = tmp_path / f"try{attempt}" / "phi.key"
        workers = 8
        barrier, queue = ctx.Barrier(workers), ctx.Queue()
        procs = [
            ctx.Process(target=_key_when_released, args=(barrier, str(path), queue))
            for _ in range(workers)
        ]
        for proc in procs:
            proc.start()
        keys = [queue.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        assert set(keys) == {path.read_bytes().hex()}, keys
        assert len(path.read_bytes()) == 32
        assert [p.name for p in path.parent.iterdir()] == ["phi.key"]
