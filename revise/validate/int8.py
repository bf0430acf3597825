"""The INT8 variant judged on the held-out sets: a bundle's model.int8.onnx against its fp32
ONNX model (model.onnx), both in ONNX Runtime (CPU), on the same images - how often they
predict the same class and how the accuracy changes, overall and per group of each ``by``
column (device, class).

The measurements are the report's ``int8`` part (:class:`revise._validation_record.Int8Check`),
and the gates ``int8_label_agreement`` and ``int8_accuracy_change``
(:mod:`revise.validate.gate_metrics`) judge them like every other per-set metric: on a
held-out set, optionally narrowed by ``where`` and split by ``per``
(:class:`revise.validate.verdicts.GateContext`). The variant itself is made by
:mod:`revise.export.quantize`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from revise._validation_record import AccuracyTable, Int8Check
from revise.models.card import ModelCard
from revise.validate import metrics as m
from revise.validate.gate_metrics import HELDOUT_SETS
from revise.validate.measure import Outputs, accuracy_tables, as_proportion
from revise.validate.provenance import onnx_file

BATCH = 256


def onnx_outputs(
    path: str | Path, sets: Mapping[str, Any], card: ModelCard, names: Sequence[str]
) -> Outputs:
    """The outputs of the ONNX model at ``path`` in ONNX Runtime (CPU) on the sets ``names``
    (decoded sets, pixel space: normalised here as the card says)."""
    from revise.export.parity import require_onnxruntime
    from revise.models.pixel import normalize

    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed, fetch = session.get_inputs()[0].name, session.get_outputs()[0].name
    logits = {}
    for name in names:
        x = normalize(sets[name].x, card).to("cpu", torch.float32)
        parts = [
            np.asarray(session.run([fetch], {feed: x[i : i + BATCH].numpy()})[0])
            for i in range(0, len(x), BATCH)
        ]
        logits[name] = torch.from_numpy(np.concatenate(parts).astype(np.float32))
    return Outputs(logits, {name: sets[name].y for name in names})


def _order(values: np.ndarray) -> list[str]:
    """A column's groups as :func:`revise.validate.metrics.by_group` orders them."""
    unique = set(values)
    numeric = all(v.lstrip("-").isdigit() for v in unique)
    return sorted(unique, key=int) if numeric and unique else sorted(unique)


def grouped(
    estimate: Callable[[np.ndarray], m.Estimate],
    rows: pd.DataFrame,
    by: Sequence[str],
    class_names: Sequence[str],
) -> AccuracyTable:
    """``estimate`` (of a mask of the rows) on all rows and per group of each ``by`` column."""
    groups = {}
    for column in by:
        if column not in rows.columns:
            continue
        values = m.group_values(rows, column)
        groups[column] = {
            m.group_name(column, v, class_names): as_proportion(estimate(values == v))
            for v in _order(values)
        }
    return AccuracyTable(**estimate(np.ones(len(rows), dtype=bool)).as_dict(), by=groups)


def measure_int8(
    onnx_path: str | Path,
    int8_path: str | Path,
    sets: Mapping[str, Any],
    card: ModelCard,
    by: Sequence[str],
) -> tuple[Int8Check, tuple[Outputs, Outputs]]:
    """The report's ``int8`` part and (fp32, int8) outputs on the held-out sets of ``sets``."""
    names = [s for s in HELDOUT_SETS if s in sets and len(sets[s])]
    fp32 = onnx_outputs(onnx_path, sets, card, names)
    int8 = onnx_outputs(int8_path, sets, card, names)
    held = {s: sets[s] for s in names}
    classes = list(card.class_names)
    check = Int8Check(
        file=onnx_file(int8_path),
        accuracy={
            "fp32": accuracy_tables(fp32, held, by, classes),
            "int8": accuracy_tables(int8, held, by, classes),
        },
    )
    for s in names:
        same = fp32.predicted(s) == int8.predicted(s)
        after, before = int8.correct(s), fp32.correct(s)
        rows = sets[s].rows
        check.agreement[s] = grouped(_share(same), rows, by, classes)
        check.change[s] = grouped(_change(after, before), rows, by, classes)
    return check, (fp32, int8)


def _share(hits: np.ndarray) -> Callable[[np.ndarray], m.Estimate]:
    return lambda mask: m.proportion(hits[mask])


def _change(after: np.ndarray, before: np.ndarray) -> Callable[[np.ndarray], m.Estimate]:
    return lambda mask: m.paired_change(after[mask], before[mask])
