import hashlib
from collections import Counter

import pytest

from transferline.data.splits import assign_splits, split_counts


def items(per_label: dict[str, int]) -> list[tuple[str, str]]:
    return [
        (hashlib.sha256(f"{label}-{i}".encode()).hexdigest(), label) for label, n in per_label.items() for i in range(n)
    ]


def test_split_is_deterministic_and_independent_of_order():
    data = items({"a": 50, "b": 30})
    first = assign_splits(data, 0.2, 0.1, seed=7)
    second = assign_splits(list(reversed(data)), 0.2, 0.1, seed=7)
    assert first == second
    assert assign_splits(data, 0.2, 0.1, seed=8) != first


def test_split_is_stratified_per_class():
    data = items({"a": 100, "b": 40, "c": 10})
    splits = assign_splits(data, 0.2, 0.1, seed=0)
    counts = Counter((label, splits[sha]) for sha, label in data)
    assert counts[("a", "train")] == 70 and counts[("a", "val")] == 20 and counts[("a", "test")] == 10
    assert counts[("b", "train")] == 28 and counts[("b", "val")] == 8 and counts[("b", "test")] == 4
    assert counts[("c", "val")] == 2 and counts[("c", "test")] == 1


def test_adding_images_moves_few_existing_ones():
    data = items({"a": 200})
    before = assign_splits(data, 0.15, 0.15, seed=0)
    after = assign_splits(data + items({"a": 210})[200:], 0.15, 0.15, seed=0)
    moved = sum(before[sha] != after[sha] for sha, _ in data)
    assert moved <= 4


def test_every_split_gets_an_image_and_too_few_is_an_error():
    assert split_counts(3, 0.15, 0.15) == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(ValueError, match="cannot fill"):
        split_counts(2, 0.15, 0.15)
