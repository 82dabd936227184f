"""OOD scores, calibration to a stated in-distribution rejection rate, and AUROC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from transferline.monitoring.ood import OodDetector, auroc, calibrate, ood_scores


def test_energy_is_higher_for_flat_small_logits_than_for_a_confident_one():
    confident = np.array([[12.0, 0.0, 0.0]])
    flat = np.array([[0.1, 0.0, 0.05]])
    assert ood_scores(flat, "energy")[0] > ood_scores(confident, "energy")[0]
    assert ood_scores(flat, "msp")[0] > ood_scores(confident, "msp")[0]


def test_energy_is_minus_logsumexp_and_stable_for_large_logits():
    logits = np.array([[1000.0, 999.0], [1.0, 2.0]])
    expected_second = -np.log(np.exp(1.0) + np.exp(2.0))
    scores = ood_scores(logits, "energy")
    assert np.isfinite(scores).all()
    assert scores[1] == pytest.approx(expected_second)
    assert scores[0] == pytest.approx(-(1000 + np.log1p(np.exp(-1.0))))


def test_an_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown OOD method 'dice'"):
        ood_scores(np.zeros((1, 2)), "dice")


def test_calibration_flags_the_stated_share_of_validation_images():
    rng = np.random.default_rng(0)
    val = rng.normal(0, 1, (2000, 10)) + np.eye(10)[rng.integers(0, 10, 2000)] * 6
    detector = calibrate(val, rejection_rate=0.05)
    assert detector.measured_rejection_rate <= 0.05
    assert detector.measured_rejection_rate > 0.045
    fresh = rng.normal(0, 1, (4000, 10)) + np.eye(10)[rng.integers(0, 10, 4000)] * 6
    _, flags = detector.flags(fresh)
    assert abs(flags.mean() - 0.05) < 0.015  # held-out in-distribution data: about the same share
    assert OodDetector.from_dict(detector.to_dict()) == detector


def test_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(1)
    inside = rng.integers(0, 20, 300).astype(float)
    outside = rng.integers(5, 25, 200).astype(float)
    expected = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[inside, outside])
    assert auroc(inside, outside) == pytest.approx(expected)
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0]), np.array([2.0])) == 0.5


def test_the_stored_threshold_never_rounds_below_its_calibration_score():
    from transferline.monitoring.reference import build_detector, round_up

    # energy of a one-class logit is minus the logit: the 11th of 12 scores sits where rounding to nearest
    # 7 figures would go down (1.234567), flagging it beside the 12th
    scores = [0.1 * i for i in range(10)] + [1.23456749, 5.0]
    detector = build_detector(-np.array(scores)[:, None], rejection_rate=0.1)
    assert detector.threshold >= 1.23456749 and detector.measured_rejection_rate == pytest.approx(1 / 12)
    assert round_up(1.23456749) == 1.234568 and round_up(-1.23456749) == -1.234567 and round_up(2.5) == 2.5
