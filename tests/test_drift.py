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
    shares = np.full(10, 0.1)
    clean = class_mix_test(shares, np.array([20] * 10))
    assert clean.p_value > 0.5
    shifted = class_mix_test(shares, np.array([80, 10, 10, 10, 10, 10, 10, 20, 20, 20]))
    assert shifted.p_value < 1e-6
    assert next(iter(shifted.detail["largest_changes"])) == 0


def test_ood_rate_is_one_sided():
    assert ood_rate_test(10, 200, 0.05).p_value > 0.4
    assert ood_rate_test(40, 200, 0.05).p_value < 1e-6
    assert ood_rate_test(0, 200, 0.05).p_value == pytest.approx(1.0)


def test_the_report_calls_drift_when_any_test_moves_and_says_which():
    rng = np.random.default_rng(3)
    reference = gaussian(rng, 300)
    shares = np.full(4, 0.25)
    classes = rng.integers(0, 4, 200)
    clean = drift_report(reference, shares, 0.05, gaussian(rng, 200), classes, rng.random(200) < 0.05)
    assert not clean.drift and clean.moved == []
    ood = rng.random(200) < 0.3
    moved = drift_report(reference, shares, 0.05, gaussian(rng, 200), classes, ood)
    assert moved.drift and moved.moved == ["ood_rate"]
    assert moved.to_dict()["window"] == 200
