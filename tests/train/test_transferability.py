"""LogME and k-NN accuracy: the evidence formula against a direct computation, and the orderings the
advisor relies on (features that carry the labels score higher than features that do not)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from transferline.model.transferability import knn_accuracy, logme


def direct_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, I/beta + F F^T/alpha) / n: the marginal likelihood written out, no eigen tricks."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return float(-0.5 * (logdet + y @ np.linalg.solve(cov, y) + n * math.log(2 * math.pi)) / n)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    centres = rng.normal(0, 2, (3, 8))
    return centres[labels] + rng.normal(0, 1, (90, 8)), labels


@pytest.mark.parametrize("dims", [8, 200])  # both Gram sides: d <= n and d > n
def test_logme_equals_the_maximised_marginal_likelihood(data, dims):
    features, labels = data
    rng = np.random.default_rng(1)
    features = features @ rng.normal(0, 1, (8, dims)) + rng.normal(0, 0.1, (90, dims))
    score = logme(features, labels)
    # the fixed point maximises the evidence over (alpha, beta): a numerical maximisation of the
    # directly computed marginal likelihood reaches the same value, and never a higher one
    per_class = []
    for c in range(3):
        y = (labels == c).astype(np.float64)
        best = minimize(
            lambda p, y=y: -direct_evidence(features, y, *np.exp(p)),
            x0=[0.0, 0.0],
            method="Nelder-Mead",
            options={"xatol": 1e-6, "fatol": 1e-10, "maxiter": 2000},
        )
        per_class.append(-best.fun)
    assert score == pytest.approx(np.mean(per_class), abs=1e-4)


def test_logme_ranks_informative_features_above_noise(data):
    features, labels = data
    noise = np.random.default_rng(2).normal(0, 1, features.shape)
    assert logme(features, labels) > logme(noise, labels)


def test_logme_rejects_mismatched_shapes(data):
    features, labels = data
    with pytest.raises(ValueError, match="one label per row"):
        logme(features, labels[:-1])


def test_knn_accuracy_is_high_on_separable_and_chance_on_noise(data):
    features, labels = data
    assert knn_accuracy(features[::2], labels[::2], features[1::2], labels[1::2], k=5) > 0.9
    noise = np.random.default_rng(3).normal(0, 1, (3000, 8))
    noise_labels = np.random.default_rng(4).integers(0, 3, 3000)
    assert abs(knn_accuracy(noise[:2000], noise_labels[:2000], noise[2000:], noise_labels[2000:]) - 1 / 3) < 0.06


def test_knn_accuracy_with_k_one_is_nearest_neighbour():
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    val = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert knn_accuracy(train, np.array([0, 1]), val, np.array([0, 1]), k=1) == 1.0
    assert knn_accuracy(train, np.array([0, 1]), val, np.array([1, 0]), k=1) == 0.0
