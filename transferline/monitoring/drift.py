"""Drift tests between a reference window (the champion's validation predictions) and a recent window of
logged predictions, each with a calibrated p-value.

- `mmd_test`: maximum mean discrepancy between the two sets of embeddings, with a Gaussian kernel whose
  bandwidth is the median pairwise distance, and a permutation test for the p-value. Two-sample tests
  on a model's representations were the most reliable detectors in "Failing Loudly" (Rabanser et al.,
  NeurIPS 2019); the permutation p-value is exact under "no drift" whatever the embedding's distribution.
- `class_mix_test`: chi-square goodness of fit of the predicted class counts against the reference's
  class shares (a change of class priors moves the mix before it moves the embeddings much).
- `ood_rate_test`: one-sided binomial test of the flagged share against the detector's calibrated rate.

`drift_report` runs the three and calls drift when any p-value falls below alpha / 3 (Bonferroni), so the
false-alarm rate over clean windows stays at most alpha.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import binomtest, chisquare

PERMUTATIONS = 500


@dataclass(frozen=True)
class TestResult:
    name: str
    statistic: float
    p_value: float
    detail: dict = field(default_factory=dict)


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T, 0.0)


def _mmd2(kernel: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each column of `first` (N x P booleans: True marks the first sample), from the pooled
    kernel matrix, as quadratic forms: no sub-matrix copies, every permutation in one matrix product."""
    a = first.astype(np.float64)
    b = 1.0 - a
    n, m = a[:, 0].sum(), b[:, 0].sum()
    diagonal = np.diag(kernel)
    ka = kernel @ a
    kb = kernel @ b
    within_a = (a * ka).sum(0) - diagonal @ a
    within_b = (b * kb).sum(0) - diagonal @ b
    between = (a * kb).sum(0)
    return within_a / (n * (n - 1)) + within_b / (m * (m - 1)) - 2 * between / (n * m)


def mmd_test(reference: np.ndarray, recent: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> TestResult:
    """MMD^2 with a median-heuristic Gaussian kernel; p = (1 + #permuted >= observed) / (1 + permutations)."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(recent, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("the MMD test needs at least two embeddings on each side")
    pooled = np.concatenate([x, y])
    distances = _squared_distances(pooled, pooled)
    off_diagonal = distances[~np.eye(len(pooled), dtype=bool)]
    bandwidth = float(np.median(off_diagonal)) or 1.0
    kernel = np.exp(-distances / bandwidth)
    members = np.r_[np.ones(len(x), bool), np.zeros(len(y), bool)]
    observed = float(_mmd2(kernel, members[:, None])[0])
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(members) for _ in range(permutations)], axis=1)
    exceed = int(np.sum(_mmd2(kernel, shuffled) >= observed - 1e-12))
    return TestResult(
        "embedding_mmd",
        observed,
        (1 + exceed) / (1 + permutations),
        {"reference": len(x), "recent": len(y), "bandwidth": bandwidth},
    )


def class_mix_test(reference_shares: np.ndarray, recent_counts: np.ndarray) -> TestResult:
    """Chi-square test of the recent predicted-class counts against the reference shares (smoothed so a
    class the reference never predicted does not make the statistic infinite)."""
    counts = np.asarray(recent_counts, dtype=np.float64)
    shares = np.asarray(reference_shares, dtype=np.float64) + 1e-3
    shares /= shares.sum()
    expected = shares * counts.sum()
    result = chisquare(counts, expected)
    moved = counts / max(counts.sum(), 1) - shares
    return TestResult(
        "class_mix",
        float(result.statistic),
        float(result.pvalue),
        {"largest_changes": {int(i): float(moved[i]) for i in np.argsort(-np.abs(moved))[:3]}},
    )


def ood_rate_test(flagged: int, total: int, expected_rate: float) -> TestResult:
    """Is the out-of-distribution share higher than the rate the detector was calibrated to flag?"""
    result = binomtest(flagged, total, expected_rate, alternative="greater")
    return TestResult("ood_rate", flagged / total if total else 0.0, float(result.pvalue), {"expected": expected_rate})


@dataclass
class DriftReport:
    drift: bool
    alpha: float
    tests: list[TestResult]
    window: int

    @property
    def moved(self) -> list[str]:
        return [t.name for t in self.tests if t.p_value < self.alpha / len(self.tests)]

    def to_dict(self) -> dict:
        return {**asdict(self), "moved": self.moved}


def drift_report(
    reference_embeddings: np.ndarray,
    reference_class_shares: np.ndarray,
    expected_ood_rate: float,
    recent_embeddings: np.ndarray,
    recent_classes: np.ndarray,
    recent_ood: np.ndarray,
    alpha: float = 0.05,
    seed: int = 0,
) -> DriftReport:
    """The three tests on one window; drift when any is significant at alpha / 3."""
    num_classes = len(reference_class_shares)
    counts = np.bincount(np.asarray(recent_classes, dtype=np.int64), minlength=num_classes)
    tests = [
        mmd_test(reference_embeddings, recent_embeddings, seed=seed),
        class_mix_test(reference_class_shares, counts),
        ood_rate_test(int(np.sum(recent_ood)), len(recent_ood), expected_ood_rate),
    ]
    report = DriftReport(False, alpha, tests, len(recent_classes))
    report.drift = bool(report.moved)
    return report
