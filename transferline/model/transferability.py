"""Cheap transferability signals on frozen features: what the advisor measures before any fine-tuning.

Each signal takes the backbone's cached features and the labels and costs seconds, so a choice between
strategies (and backbones) can be made before spending minutes on fine-tuning:

- `logme`: the log marginal likelihood (evidence) of a Bayesian linear model from features to one-hot
  labels, per example and averaged over classes (LogME, You et al., ICML 2021). Higher means the frozen
  features already carry the labels linearly, without the overfitting risk of a fitted probe's score.
- `knn_accuracy`: validation accuracy of a cosine k-nearest-neighbour vote on the train features, a
  non-parametric check that does not depend on a head's regularisation.

Both are pure numpy in float64 and deterministic.
"""

from __future__ import annotations

import math

import numpy as np

EVIDENCE_ITERATIONS = 2000  # (alpha, beta) updates at most: ill-conditioned features take hundreds
EVIDENCE_RTOL = 1e-4  # stop once alpha / beta moves by less than this fraction
EPS = 1e-12


def logme(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """Mean over classes of the per-example log evidence of y_c ~ N(F w, 1/beta), w ~ N(0, 1/alpha).

    alpha and beta maximise the evidence by MacKay's fixed-point updates. The eigendecomposition of the
    smaller Gram matrix (F^T F or F F^T, whichever side is smaller) is computed once and serves every
    class: only the projection of the labels changes.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(y):
        raise ValueError(f"features must be (n, d) with one label per row; got {f.shape} and {y.shape}")
    n, d = f.shape
    classes = num_classes if num_classes is not None else int(y.max()) + 1
    # eigenvalues sigma_i of F^T F (the non-zero ones are shared with F F^T), and each label column's
    # squared projection onto the matching eigenvectors: all the fixed point needs.
    if d <= n:
        sigma, vectors = np.linalg.eigh(f.T @ f)
        projections = (f @ vectors).T  # (d, n): rows are F v_i, with |F v_i|^2 = sigma_i
    else:
        sigma, vectors = np.linalg.eigh(f @ f.T)
        projections = vectors.T * np.sqrt(np.clip(sigma, 0, None))[:, None]  # (n, n): rows are F v_i
    sigma = np.clip(sigma, 0.0, None)
    evidences = [_class_evidence((y == c).astype(np.float64), projections, sigma, n, d) for c in range(classes)]
    return float(np.mean(evidences))


def _class_evidence(target: np.ndarray, projections: np.ndarray, sigma: np.ndarray, n: int, d: int) -> float:
    """Per-example log evidence for one 0/1 label column, at the evidence-maximising alpha and beta."""
    # u_i = (F v_i)^T y: the label's coordinate along each eigen-direction of the weights
    u = projections @ target
    total = float(target @ target)
    alpha, beta = 1.0, 1.0
    for _ in range(EVIDENCE_ITERATIONS):
        weights_sq, residual = _posterior_fit(u, sigma, total, alpha, beta)
        gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))  # well-determined directions
        new_alpha = gamma / max(weights_sq, EPS)
        new_beta = max(n - gamma, EPS) / residual
        converged = abs(new_alpha / new_beta - alpha / beta) <= EVIDENCE_RTOL * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    weights_sq, residual = _posterior_fit(u, sigma, total, alpha, beta)
    # log |alpha I + beta F^T F| over all d directions: those beyond the Gram's rank have sigma = 0
    log_det = float(np.sum(np.log(alpha + beta * sigma))) + (d - len(sigma)) * math.log(alpha)
    evidence = (
        0.5 * d * math.log(alpha)
        + 0.5 * n * math.log(beta)
        - 0.5 * log_det
        - 0.5 * beta * residual
        - 0.5 * alpha * weights_sq
        - 0.5 * n * math.log(2 * math.pi)
    )
    return evidence / n


def _posterior_fit(u: np.ndarray, sigma: np.ndarray, total: float, alpha: float, beta: float) -> tuple[float, float]:
    """||m||^2 and ||y - F m||^2 for the posterior mean m = beta (alpha I + beta F^T F)^-1 F^T y.

    In the eigenbasis m_i = s_i u_i with s_i = beta / (alpha + beta sigma_i), and the residual expands to
    ||y||^2 - 2 m^T F^T y + m^T F^T F m = ||y||^2 - sum u_i^2 s_i (2 - sigma_i s_i).
    """
    shrink = beta / (alpha + beta * sigma)
    weights_sq = float(np.sum((shrink * u) ** 2))
    residual = total - float(np.sum(u * u * shrink * (2.0 - sigma * shrink)))
    return weights_sq, max(residual, EPS)


def knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    k: int = 10,
    chunk: int = 1024,
) -> float:
    """Accuracy of a cosine k-NN majority vote (ties to the nearest neighbour's class) on val."""
    train = _unit_rows(train_features)
    val = _unit_rows(val_features)
    train_labels = np.asarray(train_labels)
    k = max(1, min(k, len(train)))
    num_classes = int(max(train_labels.max(), np.max(val_labels))) + 1
    correct = 0
    for start in range(0, len(val), chunk):
        similarity = val[start : start + chunk] @ train.T
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        votes = np.zeros((len(nearest), num_classes))
        # weights fall with rank, so a tie between classes goes to the one with the nearer neighbours
        np.add.at(votes, (np.arange(len(nearest))[:, None], train_labels[nearest]), 1.0 + 1e-6 / (1 + np.arange(k)))
        correct += int(np.sum(votes.argmax(1) == np.asarray(val_labels)[start : start + chunk]))
    return correct / len(val)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)
