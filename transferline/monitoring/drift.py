"""Drift tests between a reference window (the champion's validation predictions) and a recent window of
logged predictions, each with a calibrated p-value.

- `mmd_test`: maximum mean discrepancy between the two sets of embeddings, with a Gaussian kernel whose
  bandwidth is the median pairwise distance, and a permutation test for the p-value. Two-sample tests
  on a model's representations were the most reliable detectors in "Failing Loudly" (Rabanser et al.,
  NeurIPS 2019); the permutation p-value is exact under "no drift" whatever the embedding's distribution.
- `class_mix_test`: chi-square test of homogeneity of the predicted class counts, window against reference
  (a change of class priors moves the mix before it moves the embeddings much).
- `ood_rate_test`: Fisher's exact test, one-sided, of the window's flagged share against the reference's.

`drift_report` runs the three and calls drift when any p-value falls below alpha / 3 (Bonferroni), so the
false-alarm rate over clean windows stays at most alpha.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import chi2_contingency, fisher_exact

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


def class_mix_test(reference_counts: np.ndarray, recent_counts: np.ndarray) -> TestResult:
    """Chi-square test of homogeneity between the reference's and the window's predicted-class counts.

    Both samples are finite (the reference is the validation split, not the true class mix), so the
    test compares two samples rather than the window against fixed shares, which would alarm on the
    reference's own sampling noise.
    """
    reference = np.asarray(reference_counts, dtype=np.float64)
    recent = np.asarray(recent_counts, dtype=np.float64)
    used = (reference + recent) > 0
    shares = reference / max(reference.sum(), 1)
    moved = recent / max(recent.sum(), 1) - shares
    detail = {"largest_changes": {int(i): float(moved[i]) for i in np.argsort(-np.abs(moved))[:3]}}
    if used.sum() < 2:
        return TestResult("class_mix", 0.0, 1.0, detail)
    result = chi2_contingency(np.stack([reference[used], recent[used]]))
    return TestResult("class_mix", float(result.statistic), float(result.pvalue), detail)


def ood_rate_test(reference_flagged: int, reference_total: int, flagged: int, total: int) -> TestResult:
    """Is the window's out-of-distribution share higher than the reference's? Fisher's exact test, one-sided:
    the threshold was set on the reference, so its own flagged share is the baseline, with its noise."""
    table = [[flagged, total - flagged], [reference_flagged, reference_total - reference_flagged]]
    result = fisher_exact(table, alternative="greater")
    return TestResult(
        "ood_rate",
        flagged / total if total else 0.0,
        float(result.pvalue),
        {"reference_rate": reference_flagged / reference_total if reference_total else 0.0},
    )


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
    reference_classes: np.ndarray,
    reference_ood: np.ndarray,
    recent_embeddings: np.ndarray,
    recent_classes: np.ndarray,
    recent_ood: np.ndarray,
    num_classes: int,
    alpha: float = 0.05,
    seed: int = 0,
) -> DriftReport:
    """The three tests on one window against the reference; drift when any is significant at alpha / 3."""

    def counts(classes: np.ndarray) -> np.ndarray:
        return np.bincount(np.asarray(classes, dtype=np.int64), minlength=num_classes)

    tests = [
        mmd_test(reference_embeddings, recent_embeddings, seed=seed),
        class_mix_test(counts(reference_classes), counts(recent_classes)),
        ood_rate_test(int(np.sum(reference_ood)), len(reference_ood), int(np.sum(recent_ood)), len(recent_ood)),
    ]
    report = DriftReport(False, alpha, tests, len(recent_classes))
    report.drift = bool(report.moved)
    return report
