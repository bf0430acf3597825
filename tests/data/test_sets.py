"""Decoded sets: images, labels and manifest rows kept image for image."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from revise.data.loaders import IndexFailure
from revise.data.sets import UNLABELLED, DecodedSet, DecodedSets, labels_of


def test_a_set_refuses_images_labels_and_rows_that_do_not_line_up():
    x = torch.zeros(3, 1, 2, 2)
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        DecodedSet(x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="3 images but 4 manifest rows"):
        DecodedSet(x, torch.zeros(3, dtype=torch.long), pd.DataFrame({"sample_key": list("abcd")}))


def test_keys_come_from_the_rows_and_a_bare_set_has_none():
    rows = pd.DataFrame({"sample_key": ["s1", 2, "s3"]})
    decoded = DecodedSet(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 0]), rows)
    assert len(decoded) == 3 and decoded.keys == ["s1", "2", "s3"]
    with pytest.raises(ValueError, match="no manifest rows"):
        DecodedSet(decoded.x, decoded.y).keys  # noqa: B018


def test_to_moves_the_tensors_and_keeps_rows_and_failures():
    rows = pd.DataFrame({"sample_key": ["a", "b"]})
    failed = [IndexFailure("c.dcm", "c (frame 0): cannot decode")]
    decoded = DecodedSet(torch.rand(2, 1, 2, 2), torch.tensor([1, 0]), rows, failed)
    moved = decoded.to(torch.device("cpu"))
    assert torch.equal(moved.x, decoded.x) and torch.equal(moved.y, decoded.y)
    assert moved.rows is rows and moved.failures == failed


def test_labels_of_marks_rows_without_an_integer_label_unlabelled():
    rows = pd.DataFrame({"label": pd.array([0, None, 2], dtype="Int64")})
    assert labels_of(rows).tolist() == [0, UNLABELLED, 2]
    assert labels_of(pd.DataFrame({"label": ["1", "x", 1.5]})).tolist() == [1, -1, -1]
    assert labels_of(pd.DataFrame({"path": ["a", "b"]})).tolist() == [UNLABELLED] * 2
    assert labels_of(pd.DataFrame({"label": []})).dtype == torch.long


def test_the_sets_of_a_run_count_and_record_what_decoding_left_out():
    one = DecodedSet(torch.zeros(1, 1, 2, 2), torch.tensor([0]))
    data = DecodedSets(
        "label == 0",
        {"forget": one, "retain": DecodedSet(torch.zeros(0, 1, 2, 2), torch.zeros(0).long())},
        {},
        left_out={"forget": [f"k{i}" for i in range(25)], "retain": []},
    )
    assert data.counts() == {"forget": 1, "retain": 0}
    first = ["k0", "k1", "k2"]
    assert data.left_out_record(listed=3) == {"forget": {"n": 25, "sample_keys": first}}
