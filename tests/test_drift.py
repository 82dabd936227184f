"""Drift tests: calibrated false alarms on clean windows, power on shifted ones, and each test's own job."""

from __future__ import annotations

import numpy as np
import pytest

from transferline.monitoring.drift import class_mix_test, drift_report, mmd_test, ood_rate_test


def gaussian(rng, n, shift=0.0, dims=8):
    return rng.normal(0, 1, (n, dims)) + shift


def test_mmd_p_values_are_calibrated_on_clean_windows():
    rng = np.random.default_rng(0)
    reference = gaussian(rng, 300)
    p_values = [mmd_test(reference, gaussian(rng, 100), permutations=200, seed=i).p_value for i in range(60)]
    assert np.mean(np.array(p_values) < 0.05) <= 0.12  # 5% expected; 60 windows leave room for chance
    assert 0.3 < np.median(p_values) < 0.7  # uniform under no drift


def test_mmd_detects_a_small_mean_shift():
    rng = np.random.default_rng(1)
    reference = gaussian(rng, 300)
    detected = [
        mmd_test(reference, gaussian(rng, 100, shift=0.35), permutations=200, seed=i).p_value < 0.05 for i in range(20)
    ]
    assert np.mean(detected) >= 0.9


def test_mmd_matches_the_direct_unbiased_estimate():
    rng = np.random.default_rng(2)
    x, y = gaussian(rng, 20, dims=3), gaussian(rng, 15, 0.5, dims=3)
    result = mmd_test(x, y, permutations=10)
    h = result.detail["bandwidth"]

    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / h)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = (kxx.sum() - np.trace(kxx)) / (20 * 19) + (kyy.sum() - np.trace(kyy)) / (15 * 14) - 2 * kxy.mean()
    assert result.statistic == pytest.approx(expected, rel=1e-9)


def test_class_mix_flags_a_prior_change_and_names_the_class():
    reference = np.array([60] * 10)
    clean = class_mix_test(reference, np.array([20] * 10))
    assert clean.p_value > 0.5
    shifted = class_mix_test(reference, np.array([80, 10, 10, 10, 10, 10, 10, 20, 20, 20]))
    assert shifted.p_value < 1e-6
    assert next(iter(shifted.detail["largest_changes"])) == 0
    assert class_mix_test(np.array([5, 0]), np.array([7, 0])).p_value == 1.0  # one class only: nothing to test


def test_ood_rate_compares_with_the_reference_share_one_sided():
    assert ood_rate_test(30, 600, 10, 200).p_value > 0.4
    assert ood_rate_test(30, 600, 40, 200).p_value < 1e-6
    assert ood_rate_test(30, 600, 0, 200).p_value == pytest.approx(1.0)


def test_clean_windows_raise_few_false_alarms_even_with_a_noisy_reference():
    """The reference is a finite sample too (its own flagged share is noisy): over 100 clean windows the
    report alarms at most at its level."""
    rng = np.random.default_rng(4)
    centres = np.eye(4) * 4

    def sample(n):
        classes = rng.integers(0, 4, n)
        embeddings = centres[classes] + rng.normal(0, 1, (n, 4))
        return embeddings, embeddings.argmax(1), rng.random(n) < 0.05

    reference = sample(600)
    alarms = sum(drift_report(*reference, *sample(200), num_classes=4, seed=i).drift for i in range(100))
    assert alarms <= 8  # 5% expected; 100 windows leave room for chance


def test_the_report_calls_drift_when_any_test_moves_and_says_which():
    rng = np.random.default_rng(3)
    reference = gaussian(rng, 300)
    classes = rng.integers(0, 4, 300)
    ood = rng.random(300) < 0.05
    recent_classes = rng.integers(0, 4, 200)
    clean = drift_report(reference, classes, ood, gaussian(rng, 200), recent_classes, rng.random(200) < 0.05, 4)
    assert not clean.drift and clean.moved == []
    moved = drift_report(reference, classes, ood, gaussian(rng, 200), recent_classes, rng.random(200) < 0.3, 4)
    assert moved.drift and moved.moved == ["ood_rate"]
    assert moved.to_dict()["window"] == 200
