"""How much of the data a selection takes: "selects 435 of 1,363 training rows (and 110 of 434
held-out rows)", so a selection of everything reads differently from a slice."""

from __future__ import annotations

import pandas as pd
import pytest
from clirunner import describe, invoke

from revise.data.manifest import normalize
from revise.data.split import partition, share, share_of_sets
from revise.errors import SelectionError


def test_share_names_both_sides_with_thousands_separators():
    assert share(435, 1363, 110, 434) == (
        "435 of 1,363 training rows (and 110 of 434 held-out rows)"
    )
    assert share(12, 12, 0, 0) == "12 of 12 training rows (no row is held out)"
    counts = {"forget": 435, "retain": 928, "heldout_forget": 110, "heldout_retain": 324}
    assert share_of_sets(counts) == share(435, 1363, 110, 434)


@pytest.fixture
def manifest() -> pd.DataFrame:
    """Two held-out rows (devices A, B), three training rows (A, A, B), one unlabelled A row."""
    return normalize(
        pd.DataFrame(
            {
                "sample_key": [f"s-{i}" for i in range(6)],
                "path": [f"/site/{i}.dcm" for i in range(6)],
                "device": ["A", "B", "A", "A", "B", "A"],
                "label": [0, 1, 0, 1, 0, None],
                "split": ["heldout", "heldout", "", "train", "train", ""],
            }
        )
    )


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (
            'split == "heldout" and device == "A"',
            "matches no labelled training row: it selects 0 of 3 training rows "
            "(and 1 of 2 held-out rows)",
        ),
        (
            'device in ["A", "B"]',
            "leaves nothing to retain: it selects 3 of 3 training rows (and 2 of 2 held-out rows)",
        ),
    ],
)
def test_partition_errors_say_how_much_the_selection_takes(manifest, selection, expected):
    with pytest.raises(SelectionError) as info:
        partition(manifest, selection)
    assert expected in str(info.value)


def test_select_command_counts_training_held_out_and_unlabelled_rows(manifest, tmp_path):
    path = tmp_path / "m.csv"
    manifest.to_csv(path, index=False)
    result = invoke("select", path, 'device == "A"', code=0)
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        'device == "A" selects 2 of 3 training rows (and 1 of 2 held-out rows)',
        "  and 1 of 1 unlabelled rows (revisions leave unlabelled rows out)",
    ], describe(result)
    everything = invoke("select", path, "label is not empty", code=0)
    assert everything.stdout.splitlines()[0] == (
        "label is not empty selects 3 of 3 training rows (and 2 of 2 held-out rows)"
    )
    assert "unlabelled" in everything.stdout.splitlines()[1]  # 0 of 1: said all the same


def test_select_command_on_a_manifest_without_labels(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame({"sample_key": ["a", "b", "c"], "path": ["1", "2", "3"]}).to_csv(path)
    result = invoke("select", path, 'sample_key != "b"', code=0)
    assert result.stdout.splitlines()[0] == (
        'sample_key != "b" selects 2 of 3 rows (no row has a label yet)'
    ), describe(result)
