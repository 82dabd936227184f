"""Classification metrics from predicted probabilities, as plain JSON-ready numbers.

Pure functions: the evaluate stage, the gate's champion check and the benchmarks all score
models through `classification_report`, so the numbers are comparable by construction.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """Per non-empty equal-width confidence bin: mean confidence, accuracy and count."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        if members.any():
            rows.append(
                {
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                    "count": int(members.sum()),
                }
            )
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Gap between confidence and accuracy, weighted by how many predictions fall in each bin."""
    rows = reliability_bins(probs, labels, bins)
    total = sum(row["count"] for row in rows)
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows))


def classification_report(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], top_k: int = 3, calibration_bins: int = 15
) -> dict:
    """Every metric the evaluate stage records, for probabilities (N, C) and integer labels (N,)."""
    n_classes = len(classes)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probabilities shaped {probs.shape} do not match {n_classes} classes")
    finite = np.isfinite(probs).all(axis=1)
    if not finite.all():  # a diverged model: score its non-finite rows as uniform guesses, and say so
        probs = np.where(finite[:, None], probs, 1.0 / n_classes)
    predicted = probs.argmax(axis=1)
    everyone = np.arange(n_classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=everyone, zero_division=0
    )
    present = np.unique(labels)
    roc_auc = None
    if present.size == n_classes and n_classes > 1:
        if n_classes == 2:
            roc_auc = float(roc_auc_score(labels, probs[:, 1]))
        else:
            roc_auc = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=everyone))
    accuracy = float((predicted == labels).mean())
    k = min(top_k, n_classes - 1)
    topk = float(top_k_accuracy_score(labels, probs, k=k, labels=everyone)) if n_classes > 2 else accuracy
    clipped = np.clip(probs, 1e-12, 1.0)
    return {
        "n": int(labels.size),
        "non_finite_outputs": int((~finite).sum()),
        "accuracy": accuracy,
        "top_k": k,
        "top_k_accuracy": topk,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "min_class_recall": float(recall.min()),
        "roc_auc_ovr": roc_auc,
        "log_loss": float(log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=everyone)),
        "ece": expected_calibration_error(probs, labels, calibration_bins),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
    }


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    return confusion_matrix(labels, predicted, labels=np.arange(n_classes))
