"""Out-of-distribution scores, a threshold calibrated on in-distribution data, and AUROC.

A classifier answers every image with one of its classes, however foreign the image. The score says how
unlike the training distribution an input looks; the threshold is set on the validation split so that
a stated share of in-distribution images (`rejection_rate`, e.g. 5%) is flagged, which is the one error
rate that can be promised without having seen the out-of-distribution images.

Scores (higher = more out of distribution):
- `energy` (Liu et al., NeurIPS 2020): -T logsumexp(logits / T). Needs only the logits the model already
  returns, and separates far-OOD inputs better than the softmax maximum because it keeps the logits'
  magnitude, which softmax normalises away.
- `msp` (Hendrycks and Gimpel, ICLR 2017): -max softmax probability; the classic baseline.
- `mahalanobis` (Lee et al., NeurIPS 2018): the squared Mahalanobis distance of pooled features to the
  nearest class mean, at several depths of the backbone (export.ood_layers), each standardised on
  validation images and added up; the exported model computes it itself (its `feature_distance` output;
  transferline/monitoring/feature_gaussian.py, transferline/model/feature_taps.py). It sees what the
  logits lose: on the default model it separates photos and solar-cell images from Fashion-MNIST where
  the logit scores do not (bench/results/monitoring.md).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("transferline.monitoring.ood")

LOGIT_METHODS = ("energy", "msp")
METHODS = (*LOGIT_METHODS, "mahalanobis")


def logsumexp(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    top = np.max(logits, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(logits - top), axis=axis))


def ood_scores(logits: np.ndarray, method: str = "energy", temperature: float = 1.0) -> np.ndarray:
    """Per-row score, higher for inputs less like the training data."""
    logits = np.asarray(logits, dtype=np.float64)
    if method == "energy":
        return -temperature * logsumexp(logits / temperature)
    if method == "msp":
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return -np.max(shifted / shifted.sum(axis=1, keepdims=True), axis=1)
    raise ValueError(f"unknown OOD method {method!r}; known: {', '.join(METHODS)}")


def method_scores(
    method: str, logits: np.ndarray, distances: np.ndarray | None = None, temperature: float = 1.0
) -> np.ndarray:
    """Per image, by `method`; `distances` is the model's feature_distance output, which `mahalanobis` scores."""
    if method in LOGIT_METHODS:
        return ood_scores(logits, method, temperature)
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r}; known: {', '.join(METHODS)}")
    if distances is None:
        raise ValueError(f"the {method} score needs the model's feature distances, and none were given")
    return np.asarray(distances, dtype=np.float64).reshape(-1)


@dataclass(frozen=True)
class OodDetector:
    """What the model bundle carries: the score, its threshold and how the threshold was set."""

    method: str
    temperature: float
    threshold: float
    rejection_rate: float  # the share of in-distribution validation images at or above the threshold (target)
    calibration_images: int
    measured_rejection_rate: float  # the share actually flagged on those images

    @property
    def needs_distance(self) -> bool:
        return self.method not in LOGIT_METHODS

    def scores(self, logits: np.ndarray, distances: np.ndarray | None = None) -> np.ndarray:
        return method_scores(self.method, logits, distances, self.temperature)

    def flags(self, logits: np.ndarray, distances: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, out_of_distribution booleans) for a batch."""
        scores = self.scores(logits, distances)
        return scores, scores > self.threshold

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """JSON-safe description for /metadata (an uncalibrated detector says so instead of an infinite threshold)."""
        if math.isinf(self.threshold):
            return {"method": self.method, "calibrated": False}
        return {"calibrated": True, **self.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> OodDetector:
        return cls(**values)


def calibrate(
    val_logits: np.ndarray,
    rejection_rate: float = 0.05,
    method: str = "energy",
    temperature: float = 1.0,
    val_distances: np.ndarray | None = None,
) -> OodDetector:
    """The threshold that flags `rejection_rate` of the in-distribution validation images.

    Scores strictly above the threshold are flagged; the threshold is the (1 - rate) empirical quantile
    ('higher' interpolation: a real score), so at most that share of validation images is flagged.
    """
    if not 0 < rejection_rate < 1:
        raise ValueError(f"rejection_rate must be between 0 and 1, got {rejection_rate}")
    scores = method_scores(method, val_logits, val_distances, temperature)
    if len(scores) == 0:
        raise ValueError("calibration needs at least one validation image")
    threshold = float(np.quantile(scores, 1 - rejection_rate, method="higher"))
    return OodDetector(
        method=method,
        temperature=temperature,
        threshold=threshold,
        rejection_rate=rejection_rate,
        calibration_images=len(scores),
        measured_rejection_rate=float(np.mean(scores > threshold)),
    )


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Probability that an out-of-distribution input scores above an in-distribution one (ties count half):
    the Mann-Whitney statistic, exact, from average ranks."""
    in_scores = np.asarray(in_scores, dtype=np.float64)
    out_scores = np.asarray(out_scores, dtype=np.float64)
    if len(in_scores) == 0 or len(out_scores) == 0:
        raise ValueError("AUROC needs scores on both sides")
    pooled = np.concatenate([in_scores, out_scores])
    order = np.argsort(pooled, kind="mergesort")
    ranks = np.empty(len(pooled))
    sorted_values = pooled[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(pooled)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    out_rank_sum = ranks[len(in_scores) :].sum()
    n_out, n_in = len(out_scores), len(in_scores)
    return float((out_rank_sum - n_out * (n_out + 1) / 2) / (n_out * n_in))


MONITORING_FILE = "monitoring.json"


def load_detector(bundle_dir: Path) -> OodDetector:
    """The detector a model bundle carries (monitoring.json, written by the export stage). A bundle exported
    before the flag existed has none: its answers still carry the score, and the flag stays false."""
    path = Path(bundle_dir) / MONITORING_FILE
    if not path.is_file():
        log.warning("%s has no %s: out_of_distribution is never set for this model", bundle_dir, MONITORING_FILE)
        return OodDetector("energy", 1.0, math.inf, 0.0, 0, 0.0)
    return OodDetector.from_dict(json.loads(path.read_text())["detector"])
