"""Writing and rewriting bundles: what `revise export` says it checked parity on, and a bundle
rewritten in place (a report attached) that survives a failed swap."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from revise import _io
from revise._io import atomic
from revise._io.atomic import atomic_dir
from revise.export.bundle import attach_validation


def _parity_line(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith("model.onnx: parity")]
    return line


def test_export_says_which_images_the_parity_check_used(export_site, other_export):
    with_heldout = _parity_line(export_site.export_result.stdout)
    assert with_heldout.startswith("model.onnx: parity on 100 held-out images:")
    result, _ = other_export  # its manifest has no held-out rows: the first 256 rows are used
    line = _parity_line(result.stdout)
    assert line.startswith("model.onnx: parity on 256 training images ("), line
    assert f"{export_site.training_only} has no held-out rows" in line
    assert "held-out images" not in line


def _fail_swap_in(monkeypatch, target: Path) -> list[tuple[str, str]]:
    """os.replace fails when it would move the new ``.part`` folder onto ``target``: an OS
    failure at the worst moment. Returns the calls made."""
    real = os.replace
    calls: list[tuple[str, str]] = []

    def replace(src, dst):
        calls.append((str(src), str(dst)))
        name = Path(src).name
        if Path(dst) == target and name.startswith(f".{target.name}.") and name.endswith(".part"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    return calls


def test_atomic_dir_keeps_the_old_folder_when_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    calls = _fail_swap_in(monkeypatch, target)
    with pytest.raises(OSError, match="No space left"), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it
    assert len(calls) == 3  # aside, (failed) in, back
    monkeypatch.undo()
    with atomic_dir(target, overwrite=True) as tmp:  # and a swap that works replaces it
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_attaching_a_report_that_fails_half_way_leaves_the_bundle_as_it_was(
    bundle_copy, export_site, monkeypatch
):
    bundle = bundle_copy(None)
    before = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    report = export_site.root / "val-pass"
    _fail_swap_in(monkeypatch, bundle)
    with pytest.raises(OSError, match="No space left"):
        attach_validation(bundle, report)
    after = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert after == before
    assert json.loads((bundle / "bundle.json").read_text())["validation"] is None
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]
    monkeypatch.undo()
    attach_validation(bundle, report)
    assert json.loads((bundle / "bundle.json").read_text())["validation"]["verdict"] == "pass"


def test_atomic_outputs_get_the_modes_of_a_plain_write(tmp_path):
    """tempfile's private 0600/0700 must not stick to reports and run folders: outputs get what
    open()/mkdir() give under the process umask (read once at import)."""
    import stat

    atomic.write_text_atomic(tmp_path / "report.json", "{}")
    with atomic_dir(tmp_path / "run") as tmp:
        (tmp / "x").write_text("x")
    (tmp_path / "plain").write_text("x")
    (tmp_path / "plain-dir").mkdir()
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "report.json") == mode(tmp_path / "plain") == _io.FILE_MODE
    assert mode(tmp_path / "run") == mode(tmp_path / "plain-dir") == _io.DIR_MODE


def test_export_opset_option_sets_the_graphs_opset(export_site, tmp_path):
    import onnx
    from clirunner import invoke

    out = tmp_path / "bundle17"
    model = export_site.models[0]
    result = invoke("export", model, "-o", out, "--data", export_site.manifest, "--opset", "17")
    assert result.exit_code == 0, result.output
    proto = onnx.load(str(out / "model.onnx"))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
