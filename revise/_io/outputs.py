"""What revise wrote, and the rules every command that writes follows, checked by
:func:`check_output` before any work:

* an output never replaces one of the command's inputs: not the same file, not a folder that
  holds one (paths compared as given and with symlinks resolved, and by inode);
* an existing output, file or folder alike, is replaced only with ``--overwrite``;
* ``--overwrite`` replaces only what revise wrote (:func:`written_by_revise`): an empty folder,
  a folder holding one of the files revise writes in each kind of output folder it makes
  (:data:`MARKERS`: run.json, bundle.json, ...), or a file whose content is in a format revise
  writes (a manifest, an index failure list, a metrics JSON). No marker file is added, so a
  signed bundle's file set stays exactly what bundle.json lists and the signature covers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from revise.errors import OptionError, UsageError

# A file that each kind of output folder revise makes holds (the folders are written atomically,
# but for the demo's and the recipe's, which hold theirs once the first run got that far).
RUN_RECORD = "run.json"  # a run folder: revise unlearn, revise merge (and a bundle)
BUNDLE_MANIFEST = "bundle.json"  # revise export
REPORT_JSON = "revision_report.json"  # revise validate (attached to a bundle)
REPORT_HTML = "report.html"  # revise validate, beside REPORT_JSON
CHANGE_CONTROL = "change_control.json"  # revise validate, beside REPORT_JSON
SWEEP_RECORD = "sweep.json"  # revise sweep
DEMO_REPORT = "demo_report.json"  # revise demo
RESOLVED_RECIPE = "recipe.resolved.yaml"  # the workdir of revise run (before any stage)
MARKERS = (RUN_RECORD, BUNDLE_MANIFEST, REPORT_JSON, SWEEP_RECORD, DEMO_REPORT, RESOLVED_RECIPE)
MANIFEST_HEAD = ("sample_key", "path")  # a manifest's first columns (revise.data.manifest)
FAILURES_HEAD = ("path", "reason")  # `revise index --failures`
MAX_RECOGNISED_BYTES = 64 << 20  # a larger JSON is no metrics file of revise's


def _csv_head(path: Path) -> bool:
    with open(path, "rb") as f:
        header = f.readline(4096).decode("utf-8").lstrip("\ufeff").strip()
    columns = tuple(header.split(","))
    return columns[:2] == MANIFEST_HEAD or columns == FAILURES_HEAD


def _parquet_head(path: Path) -> bool:
    import pyarrow.parquet as pq

    return tuple(pq.read_schema(path).names[:2]) == MANIFEST_HEAD


def _metrics_json(path: Path) -> bool:
    """`revise evaluate --json`: {set: {n, accuracy, by}} (evaluate.evaluate's result)."""
    if path.stat().st_size > MAX_RECOGNISED_BYTES:
        return False
    doc = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(doc, dict) and all(
        isinstance(stats, dict) and {"n", "accuracy"} <= stats.keys() for stats in doc.values()
    )


_FILE_FORMATS: dict[str, Callable[[Path], bool]] = {
    ".csv": _csv_head,
    ".parquet": _parquet_head,
    ".json": _metrics_json,
}


def written_by_revise(path: str | os.PathLike) -> bool:
    """Whether ``--overwrite`` may replace ``path``: an empty folder, a folder holding one of
    :data:`MARKERS`, or a file in a format revise writes (recognised by its content)."""
    path = Path(path)
    try:
        if path.is_dir():
            empty = next(path.iterdir(), None) is None
            return empty or any((path / name).is_file() for name in MARKERS)
        recognise = _FILE_FORMATS.get(path.suffix.lower())
        return recognise is not None and recognise(path)
    except (OSError, ValueError):  # unreadable, or not the format: not something revise wrote
        return False


def _replaces(target: Path, source: Path) -> bool:
    """Whether writing ``target`` would replace ``source``: the same path or a folder above it,
    as given or with symlinks resolved, or the same file under another name (a hard link)."""
    pairs = ((Path(os.path.abspath(target)), Path(os.path.abspath(source))),)
    pairs += ((target.resolve(), source.resolve()),)
    if any(t == s or t in s.parents for t, s in pairs):
        return True
    try:
        return os.path.samefile(target, source)
    except OSError:  # one of them does not exist
        return False


def check_output(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    option: str | None = None,
) -> None:
    """Refuse, before any work, an output that would destroy an input or a file revise did not
    write (the rules are in this module's docstring). ``inputs`` are the paths the command
    reads (None for options not given); ``option`` is the library's name of the output option
    (``out``), which each shell says its own way (``-o``)."""
    target = Path(path)

    def refuse(rest: str, hint: str) -> UsageError:
        if option is None:
            return UsageError(f"output {target} {rest}", hint=hint, options=("overwrite",))
        return OptionError(option, f"{target} {rest}", hint=hint, options=("overwrite",))

    elsewhere = f"choose another {{{option}}}" if option else "write it elsewhere"
    for source in inputs:
        if source is not None and _replaces(target, Path(source)):
            raise refuse(f"would replace the input {source}", elsewhere)
    if not (target.exists() or target.is_symlink()):
        return
    if not overwrite:
        raise refuse("already exists", f"{elsewhere} or pass {{overwrite}}")
    if not written_by_revise(target):
        raise refuse(
            "does not look like revise's output: revise replaces only its own outputs",
            f"{elsewhere}, or move {target} away yourself",
        )
