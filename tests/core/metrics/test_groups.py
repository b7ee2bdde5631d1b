"""Group encoding and intersectional labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verticals.core.metrics import decode_group_matrix, encode_groups, intersect


def test_intersect_labels_every_sample_with_attributes_in_order():
    labels = intersect({"sex": ["F", "M"], "age": np.array(["60+", "<40"])})
    assert labels.tolist() == ["sex=F & age=60+", "sex=M & age=<40"]
    with pytest.raises(ValueError, match="lengths"):
        intersect({"sex": ["F"], "age": ["60+", "<40"]})


def test_encode_groups_keeps_given_order_and_rejects_unknown_values():
    codes, names = encode_groups(["M", "F", "M"], ["M", "F", "X"])
    assert codes.tolist() == [0, 1, 0] and names == ["M", "F", "X"]
    codes, names = encode_groups(torch.tensor([2, 0]), ["a", "b", "c"])
    assert codes.tolist() == [2, 0]
    with pytest.raises(ValueError, match="not among"):
        encode_groups(["Q"], ["M", "F"])
    with pytest.raises(ValueError, match="outside 0..1"):
        encode_groups([3], ["M", "F"])


def test_decode_group_matrix_names_codes_per_attribute():
    decoded = decode_group_matrix(
        torch.tensor([[0, 2], [1, 0]]), ["sex", "age"], {"sex": ["F", "M"], "age": ["<40", "40-60", "60+"]}
    )
    assert decoded["sex"].tolist() == ["F", "M"] and decoded["age"].tolist() == ["60+", "<40"]
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        decode_group_matrix(torch.zeros(2, 3), ["sex", "age"])
