"""Is the candidate worse than the champion, or only different by chance? McNemar's exact test.

Both models classify the same test images, so their errors are paired: an image both get right (or both
get wrong) says nothing about which is better. Only the discordant images count: `candidate_only` (the
candidate right, the champion wrong) and `champion_only` (the reverse). If the two models were equally
accurate, each discordant image would fall either way with probability 1/2, so `champion_only` follows
Binomial(candidate_only + champion_only, 1/2); the p-value is that binomial's tail (scipy's exact test).

A plain accuracy difference with a tolerance cannot do this: on 600 test images, two trainings of the same
recipe with different seeds differ by a point or more, so a fixed tolerance flags or passes retrains by noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Alternative = Literal["two-sided", "candidate_worse"]


def mcnemar_exact_p(candidate_only: int, champion_only: int, alternative: Alternative = "two-sided") -> float:
    """Exact McNemar p-value from the two discordant counts.

    two-sided: the models differ in accuracy (symmetric in its arguments).
    candidate_worse: one-sided, the candidate is less accurate, i.e. P(X >= champion_only), X ~ Bin(n, 1/2).
    No discordant image at all: no evidence either way, p = 1.
    """
    if candidate_only < 0 or champion_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {candidate_only}, {champion_only}")
    n = candidate_only + champion_only
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    scipy_alternative = "two-sided" if alternative == "two-sided" else "greater"
    return float(binomtest(champion_only, n, 0.5, alternative=scipy_alternative).pvalue)


@dataclass(frozen=True)
class PairedComparison:
    """Two models' correctness on the same images, and the one-sided test that the candidate is worse."""

    n_images: int
    candidate_accuracy: float
    champion_accuracy: float
    candidate_only_correct: int  # discordant: candidate right, champion wrong
    champion_only_correct: int  # discordant: champion right, candidate wrong
    p_value: float  # one-sided exact McNemar, alternative "candidate worse"
    test: str = "McNemar exact (one-sided: candidate worse)"


def compare_paired(candidate_correct: np.ndarray, champion_correct: np.ndarray) -> PairedComparison:
    """McNemar's exact test on per-image correctness (boolean arrays over the same images, same order)."""
    candidate_correct = np.asarray(candidate_correct, dtype=bool)
    champion_correct = np.asarray(champion_correct, dtype=bool)
    if candidate_correct.shape != champion_correct.shape or candidate_correct.ndim != 1:
        raise ValueError(
            f"need one correctness flag per image for both models, got {candidate_correct.shape} "
            f"and {champion_correct.shape}"
        )
    if len(candidate_correct) == 0:
        raise ValueError("no images to compare")
    candidate_only = int(np.sum(candidate_correct & ~champion_correct))
    champion_only = int(np.sum(champion_correct & ~candidate_correct))
    return PairedComparison(
        n_images=len(candidate_correct),
        candidate_accuracy=float(candidate_correct.mean()),
        champion_accuracy=float(champion_correct.mean()),
        candidate_only_correct=candidate_only,
        champion_only_correct=champion_only,
        p_value=mcnemar_exact_p(candidate_only, champion_only, "candidate_worse"),
    )
