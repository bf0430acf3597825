"""Full and read-only file systems, and what interrupted writers leave behind (issue 13,
classes 8 and 10). The file systems are real: small tmpfs mounts (the tests run as root).

Probes kept here (what happened -> what revise must do):

* `select -o FULL/sel.parquet` on a file system with no space left -> exit 1, one line
  `error: cannot write FULL/sel.parquet: no space left ...` with the fix; nothing but the
  filler left on the file system.
* `unlearn -o FULL/run` (the safetensors writer hides the errno) -> exit 1, one line; no run
  folder, no run.partial, no .part file left.
* `select -o RO/sel.csv` and `-o RO/new/sel.csv` on a read-only file system -> exit 1, one line
  naming the file, "read-only"; library callers of atomic_dir get the same RevisionError.
* A writer killed with SIGKILL mid-write leaves its hidden .part: the next write of the same
  output removes it; the .part of a writer that is still running is never touched.
* `evaluate --model .bundle.<pid>.<x>.part` (a leftover bundle folder: it holds a loadable
  model) and `select .m.parquet.<x>.part` -> exit 2, "unfinished", nothing loaded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from revise._io.atomic import atomic_dir, atomic_path
from revise.errors import RevisionError


@contextlib.contextmanager
def tmpfs(folder: Path, *options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``folder`` (created), unmounted afterwards whatever happens."""
    folder.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", ",".join(["size=256k", *options]), "tmpfs", folder]
    done = subprocess.run([str(a) for a in mount], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def full_fs(tmp_path) -> Iterator[Path]:
    """A file system with no space left: a small tmpfs filled by one file, ``filler``."""
    with tmpfs(tmp_path / "full") as folder:
        with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        yield folder


@pytest.fixture
def read_only_fs(tmp_path) -> Iterator[Path]:
    with tmpfs(tmp_path / "ro", "ro") as folder:
        yield folder


def one_line(cli, result, *phrases: str) -> str:
    line = cli.one_line_error(result)
    assert "internal error" not in line, line
    for phrase in phrases:
        assert phrase in line, line
    return line


# --- a full or read-only file system -------------------------------------------------------------


def test_no_space_left_is_one_line_naming_the_file_and_nothing_is_left(cli, demo_site, full_fs):
    out = full_fs / "sel.parquet"
    result = cli("-q", "select", demo_site.manifest, cli.forget, "-o", out)
    assert result.exit_code == 1, cli.describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: "), cli.describe(result)
    assert f"cannot write {out}: no space left" in lines[0], lines[0]
    assert "free space" in lines[0] and "internal error" not in lines[0]
    assert os.listdir(full_fs) == ["filler"]


def test_unlearn_on_a_full_disk_leaves_no_run_and_no_partial(cli, demo_site, full_fs):
    out = full_fs / "run"
    result = cli("-q", *cli.unlearn_args(demo_site, out), code=1)
    one_line(cli, result, "cannot write", "no space left", "free space")
    assert os.listdir(full_fs) == ["filler"]


@pytest.mark.parametrize("name", ["sel.csv", "new/sel.csv"])
def test_read_only_output_is_one_line_naming_the_file(cli, demo_site, read_only_fs, name):
    out = read_only_fs / name
    result = cli("-q", "select", demo_site.manifest, cli.forget, "-o", out)
    assert result.exit_code == 1, cli.describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, cli.describe(result)
    assert f"error: cannot write {out}: its file system is read-only" in lines[0], lines[0]
    assert "internal error" not in lines[0]
    assert os.listdir(read_only_fs) == []


def test_atomic_dir_on_a_read_only_file_system_raises_a_revision_error(read_only_fs):
    with (
        pytest.raises(RevisionError, match="read-only") as caught,
        atomic_dir(read_only_fs / "report") as tmp,
    ):
        (tmp / "a.txt").write_text("a")
    assert caught.value.exit_code == 1


# --- leftovers of interrupted writers ----------------------------------------------------------

WRITER = """
import os, signal, sys
from pathlib import Path
from revise._io.atomic import atomic_dir, atomic_path
kind, target, end = sys.argv[1:]
with (atomic_dir(target, overwrite=True) if kind == "dir" else atomic_path(target)) as tmp:
    (Path(tmp) / "half").write_text("half") if kind == "dir" else Path(tmp).write_text("half")
    print("writing", flush=True)
    if end == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()  # a live writer: it finishes when told
"""


def start_writer(kind: str, target: Path, end: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, kind, str(target), end],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "writing"
    return proc


def temporaries(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.endswith(".part"))


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_killed_writers_leftover_is_removed_and_a_live_writers_is_kept(tmp_path, kind):
    target = tmp_path / ("bundle" if kind == "dir" else "m.parquet")
    killed = start_writer(kind, target, "die")
    killed.wait(timeout=60)
    assert killed.returncode == -9
    stale = temporaries(target)
    assert len(stale) == 1, stale
    live = start_writer(kind, target, "wait")
    try:
        running = [name for name in temporaries(target) if name not in stale]
        assert len(running) == 1
        writer = atomic_dir(target, overwrite=True) if kind == "dir" else atomic_path(target)
        with writer as tmp:
            (tmp / "done").write_text("done") if kind == "dir" else tmp.write_text("done")
        assert temporaries(target) == running  # the killed one's is gone, the live one's kept
    finally:
        live.communicate("go\n", timeout=60)
    assert live.returncode == 0
    assert temporaries(target) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_leftover_part_folder_is_never_loaded_as_a_model(cli, demo_site, tmp_path):
    leftover = tmp_path / f".bundle.{os.getpid() + 1_000_000}.ab12cd34.part"
    shutil.copytree(demo_site.model, leftover)  # loadable: weights and card
    args = ["evaluate", "--model", leftover, "--data", demo_site.manifest, "--device", "cpu"]
    result = cli(*args, code=2)
    one_line(cli, result, f"model {leftover}", "unfinished")


def test_a_leftover_part_file_is_never_read_as_a_manifest(cli, demo_site, tmp_path):
    leftover = tmp_path / ".m.parquet.x1y2z3w4.part"
    shutil.copyfile(demo_site.manifest, leftover)
    result = cli("select", leftover, cli.forget, code=2)
    one_line(cli, result, str(leftover), "unfinished")


def test_enospc_is_what_the_filler_met(full_fs):
    """The fixture's file system is really full (so the tests above test what they claim)."""
    with pytest.raises(OSError) as caught, open(full_fs / "more", "wb", buffering=0) as f:
        f.write(b"\0" * 8192)
    assert caught.value.errno == errno.ENOSPC


# --- permission denied ---------------------------------------------------------------------------


def test_permission_denied_is_one_line_naming_the_file_not_an_internal_error(
    cli, demo_site, tmp_path, monkeypatch
):
    """Tests run as root, whom permissions do not stop: the OS's own PermissionError is raised
    where revise creates its output's temporary file, as it is for a user who may not write
    in the folder."""
    import errno
    import tempfile

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    out = tmp_path / "sel.csv"
    result = cli("-q", "select", demo_site.manifest, cli.forget, "-o", out)
    assert result.exit_code == 1, cli.describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: permission denied: "), lines
    assert str(out) in lines[0] and "owner, mode" in lines[0] and "internal" not in lines[0]
    assert not out.exists()
