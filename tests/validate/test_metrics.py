"""Accuracy intervals, paired changes, groups, confusion matrices and the reference distances
against hand-computed answers and against the index-resampling bootstrap they replace."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from revise.validate import metrics as m


def index_bootstrap(values: np.ndarray, draws: int = 20000) -> tuple[float, float]:
    """The textbook bootstrap: resample indices with replacement, take the mean."""
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(values), size=(draws, len(values)))
    return tuple(np.percentile(values[idx].mean(axis=1), [2.5, 97.5]))


def test_proportion_value_and_interval_match_the_index_bootstrap():
    hits = np.array([1] * 70 + [0] * 30, dtype=bool)
    est = m.proportion(hits)
    assert est.n == 100 and est.value == pytest.approx(0.7)
    low, high = index_bootstrap(hits.astype(float))
    assert est.ci95[0] == pytest.approx(low, abs=0.015)
    assert est.ci95[1] == pytest.approx(high, abs=0.015)
    assert est.ci95[0] < 0.7 < est.ci95[1]


def test_proportion_edge_cases():
    assert m.proportion(np.ones(5, dtype=bool)).ci95 == (1.0, 1.0)
    empty = m.proportion(np.array([], dtype=bool))
    assert empty.n == 0 and math.isnan(empty.value) and empty.ci95 is None
    assert m.proportion(np.array([True, False])).as_dict() == {
        "n": 2,
        "value": 0.5,
        "ci95": [0.0, 1.0],
    }


def test_paired_change_matches_a_paired_index_bootstrap():
    rng = np.random.default_rng(3)
    before = rng.random(300) < 0.9
    after = before.copy()
    after[:30] = False  # 30 images lost (some were already wrong)
    after[200:205] = True
    est = m.paired_change(after, before)
    assert est.value == pytest.approx(after.mean() - before.mean())
    low, high = index_bootstrap(after.astype(float) - before.astype(float))
    assert est.ci95[0] == pytest.approx(low, abs=0.01)
    assert est.ci95[1] == pytest.approx(high, abs=0.01)
    # pairing makes the interval tighter than combining two independent intervals would
    widths = [e.ci95[1] - e.ci95[0] for e in (m.proportion(after), m.proportion(before))]
    assert est.ci95[1] - est.ci95[0] < 0.8 * math.hypot(*widths)


def test_by_group_names_labels_and_orders_numerically():
    rows = pd.DataFrame({"label": [10, 9, 9, 2, 2, 2], "device": ["B", "A", "A", "B", "A", "B"]})
    hits = np.array([1, 1, 0, 1, 1, 1], dtype=bool)
    names = [f"c{i}" for i in range(11)]
    by_label = m.by_group(hits, rows, "label", names)
    assert list(by_label) == ["c2", "c9", "c10"]
    assert by_label["c9"].value == 0.5 and by_label["c9"].n == 2
    by_device = m.by_group(hits, rows, "device")
    assert {k: (v.n, round(v.value, 3)) for k, v in by_device.items()} == {
        "A": (3, 0.667),
        "B": (3, 1.0),
    }


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    matrix = m.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_distance_and_avg_gap_against_published_numbers():
    assert m.distance_to_reference(0.9, 0.1, 1.0, 0.0) == pytest.approx(math.sqrt(0.02))
    # SalUn Table 1, FT vs Retrain (percent): UA 0.63/5.24, RA 99.88/100, TA 94.06/94.26,
    # MIA-Efficacy 2.70/12.88 -> Avg. Gap 3.78
    ft = {"ua": 0.0063, "ra": 0.9988, "ta": 0.9406, "mia_efficacy": 0.0270}
    retrain = {"ua": 0.0524, "ra": 1.0, "ta": 0.9426, "mia_efficacy": 0.1288}
    assert m.average_gap(ft, retrain) == pytest.approx(3.78, abs=0.005)
