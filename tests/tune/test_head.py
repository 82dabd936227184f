"""The logistic head: the optimum it reaches, the exact fold back to raw features, and fits that depend on their
params alone (what makes a head-only trial reproducible and cheap)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from transferline.model import head


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """3 overlapping classes in 20 correlated dimensions of different scales, offset from zero."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.5, (3, 20))
    labels = np.repeat(np.arange(3), 40)
    mixing = rng.normal(0, 1, (20, 20))
    features = (centres[labels] + rng.normal(0, 1, (120, 20))) @ mixing * rng.uniform(0.1, 1, 20) + 5
    return features.astype(np.float32), labels


def split(blobs):
    x, y = blobs
    return x[::2], y[::2], x[1::2], y[1::2]


@pytest.mark.parametrize("standardize", [True, False])
def test_the_head_reaches_the_logistic_regression_optimum(blobs, standardize):
    train_x, train_y, val_x, val_y = split(blobs)
    l2 = 0.05
    probe = head.fit_probe(train_x, train_y, val_x, val_y, 3, (l2,), standardize=standardize)
    # the same objective in scikit-learn: sum of losses * C + ||W||^2 / 2 with C = 1 / (l2 * n)
    mean = train_x.mean(0, dtype=np.float64)
    scale = train_x.std(0, dtype=np.float64) + head.STD_EPS if standardize else np.ones(train_x.shape[1])
    reference = LogisticRegression(C=1.0 / (l2 * len(train_x)), tol=1e-10, max_iter=10_000)
    reference.fit((train_x - mean) / scale, train_y)
    expected = reference.predict_proba((val_x - mean) / scale)
    logits = val_x.astype(np.float64) @ probe.weight.T + probe.bias  # the folded weights, on raw features
    got = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_allclose(got, expected, atol=0.01)
    assert probe.val_accuracy == pytest.approx((logits.argmax(1) == val_y).mean())


def test_preconditioning_changes_the_path_not_the_optimum(blobs, monkeypatch):
    features = head.prepare_head_features(*split(blobs))
    weight, bias, evaluations = head.fit_head(features, 3, 0.01)
    monkeypatch.setattr(head, "preconditioner", lambda f, k, l2: torch.ones(f.x.shape[1]))
    plain_weight, plain_bias, plain_evaluations = head.fit_head(features, 3, 0.01)
    assert evaluations != plain_evaluations  # it really was a different optimisation
    torch.testing.assert_close(weight, plain_weight, atol=0.02, rtol=0.02)
    torch.testing.assert_close(bias, plain_bias, atol=0.02, rtol=0.02)


def test_a_fit_depends_only_on_its_params_not_on_earlier_fits(blobs):
    features = head.prepare_head_features(*split(blobs))
    first = head.fit_prepared(features, 3, (0.3,), 0.1)
    head.fit_prepared(features, 3, (0.001,), 0.0)  # another trial in between
    again = head.fit_prepared(features, 3, (0.3,), 0.1)
    assert np.array_equal(first.weight, again.weight) and np.array_equal(first.bias, again.bias)
    # a grid entry is the same fit as that value alone, so a tuning trial replays in the train stage
    grid = head.fit_prepared(features, 3, (1.0, 0.3), 0.1)
    assert [t["l2"] for t in grid.trials] == [1.0, 0.3]
    assert grid.trials[1]["val_loss"] == first.val_loss and grid.trials[1]["evaluations"] == first.evaluations


def test_label_smoothing_and_standardisation_change_the_head(blobs):
    train_x, train_y, val_x, val_y = split(blobs)
    plain = head.fit_probe(train_x, train_y, val_x, val_y, 3, (0.01,))
    smoothed = head.fit_probe(train_x, train_y, val_x, val_y, 3, (0.01,), label_smoothing=0.3)
    centred = head.fit_probe(train_x, train_y, val_x, val_y, 3, (0.01,), standardize=False)

    def confidence(probe: head.ProbeResult) -> float:
        logits = torch.from_numpy(train_x @ probe.weight.T + probe.bias)
        return torch.softmax(logits, 1).max(1).values.mean().item()

    assert confidence(smoothed) < confidence(plain) - 0.02  # smoothing caps how sure the head gets
    assert not np.allclose(centred.weight, plain.weight, atol=1e-3)  # another penalty, another head


def test_the_fit_runs_on_one_thread_and_gives_the_threads_back(blobs, monkeypatch):
    seen = []
    loss_and_grad = head.loss_and_grad

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return loss_and_grad(*args, **kwargs)

    monkeypatch.setattr(head, "loss_and_grad", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        head.fit_probe(*split(blobs), 3, (0.1,))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
