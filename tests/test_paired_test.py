"""McNemar's exact test: known values, symmetry, and the degenerate cases."""

from math import comb

import numpy as np
import pytest

from transferline.evaluation.paired_test import compare_paired, mcnemar_exact_p


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), from the definition."""
    return sum(comb(n, i) for i in range(k, n + 1)) / 2**n


@pytest.mark.parametrize(
    ("candidate_only", "champion_only", "two_sided", "candidate_worse"),
    [
        (1, 9, 22 / 1024, 11 / 1024),  # 2 * P(X <= 1 | 10) and P(X >= 9 | 10)
        (9, 1, 22 / 1024, 1023 / 1024),  # P(X >= 1 | 10)
        (0, 5, 2 / 32, 1 / 32),
        (5, 5, 1.0, 638 / 1024),  # P(X >= 5 | 10) = 638/1024
        (0, 1, 1.0, 0.5),
    ],
)
def test_known_values(candidate_only, champion_only, two_sided, candidate_worse):
    assert mcnemar_exact_p(candidate_only, champion_only) == pytest.approx(two_sided, rel=1e-12)
    assert mcnemar_exact_p(candidate_only, champion_only, "candidate_worse") == pytest.approx(
        candidate_worse, rel=1e-12
    )


@pytest.mark.parametrize(("b", "c"), [(3, 17), (40, 61), (0, 12), (7, 8)])
def test_two_sided_is_symmetric_and_one_sided_is_the_binomial_tail(b, c):
    assert mcnemar_exact_p(b, c) == pytest.approx(mcnemar_exact_p(c, b), rel=1e-12)
    assert mcnemar_exact_p(b, c, "candidate_worse") == pytest.approx(binomial_tail(c, b + c), rel=1e-9)


def test_no_discordant_image_is_no_evidence():
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(0, 0, "candidate_worse") == 1.0


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="discordant counts must be >= 0"):
        mcnemar_exact_p(-1, 3)


def test_compare_paired_counts_only_the_discordant_images():
    candidate = np.array([1, 1, 1, 0, 0, 1, 0, 0], bool)
    champion = np.array([1, 1, 0, 1, 1, 1, 1, 0], bool)
    result = compare_paired(candidate, champion)
    assert (result.candidate_only_correct, result.champion_only_correct) == (1, 3)
    assert result.n_images == 8 and result.candidate_accuracy == 0.5 and result.champion_accuracy == 0.75
    assert result.p_value == pytest.approx(binomial_tail(3, 4))


def test_models_that_always_agree_cannot_differ():
    same = np.array([True, False, True, True])
    result = compare_paired(same, same)
    assert (result.candidate_only_correct, result.champion_only_correct, result.p_value) == (0, 0, 1.0)


def test_compare_paired_needs_one_flag_per_image_for_both():
    with pytest.raises(ValueError, match="one correctness flag per image"):
        compare_paired(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="no images"):
        compare_paired(np.ones(0, bool), np.ones(0, bool))
