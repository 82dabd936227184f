"""Seeded, nested per-class subsets: the `ingest.per_class` rule shared by every source.

Each item's place in its class comes from hash(seed, its stable name), the same idea as the
train/val/test split (transferline/data/splits.py). So for one seed a smaller subset is always
contained in a larger one (learning curves compare like with like), and adding files to a class
only inserts them into the order instead of reshuffling the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _rank_key(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def seeded_order(names: Sequence[str], seed: int) -> list[int]:
    """Indices of `names` in the seeded order every subset is a prefix of."""
    return sorted(range(len(names)), key=lambda i: _rank_key(seed, names[i]))


def choose(names: Sequence[str], per_class: int | None, seed: int) -> list[int]:
    """Indices (ascending) of the first `per_class` of `names` in the seeded order; all when None
    or when the class has no more. `names` must be unique within the class."""
    if per_class is None or per_class >= len(names):
        return list(range(len(names)))
    return sorted(seeded_order(names, seed)[:per_class])


def shortfalls(counts: dict[str, int], per_class: int | None) -> dict[str, int]:
    """Classes that hold fewer images than `per_class` asked for (all of them were taken)."""
    if per_class is None:
        return {}
    return {name: n for name, n in sorted(counts.items()) if n < per_class}
