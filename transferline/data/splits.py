"""Deterministic, stratified train/val/test assignment keyed by content hash.

Each image's place in its class's ordering comes from hash(seed, sha256), so the split
depends only on the content and the seed: never on file names, listing order or the
machine. Adding images moves only a few boundary items.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

SPLITS = ("train", "val", "test")


def split_counts(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many of `n` images of one class go to each split; val and test get at least one each."""
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    n_train = n - n_test - n_val
    if n_train < 1:
        raise ValueError(f"{n} images cannot fill train, val and test")
    return {"train": n_train, "val": n_val, "test": n_test}


def _rank_key(seed: int, sha256: str) -> str:
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


def assign_splits(
    items: Sequence[tuple[str, str]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Map each (sha256, label) item's sha256 to a split, stratified per label. sha256s must be unique."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for sha, label in items:
        by_label[label].append(sha)
    assignment: dict[str, str] = {}
    for label in sorted(by_label):
        ordered = sorted(by_label[label], key=lambda sha: _rank_key(seed, sha))
        counts = split_counts(len(ordered), val_fraction, test_fraction)
        start = 0
        for split in ("test", "val", "train"):
            for sha in ordered[start : start + counts[split]]:
                assignment[sha] = split
            start += counts[split]
    return assignment
