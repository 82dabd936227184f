"""What a model bundle carries for monitoring, built from the model's outputs at export time (pure numpy).

- the OOD detector calibrated on the validation split (transferline/monitoring/ood.py);
- the drift reference: the validation logits (the model's own compact representation of an image: as
  many numbers as classes, and the representation "Failing Loudly" found most telling) and the share of
  each predicted class;
- the detector's AUROC against the shifted and foreign images the pipeline has at hand, so the gate can
  check the detector works before the model is deployed.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Any

import numpy as np

from transferline.monitoring.ood import OodDetector, auroc, calibrate

SIGNIFICANT = 7  # figures kept in the stored threshold: float noise between CPUs stays out of the bundle's hash


def predicted_class_shares(logits: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.argmax(logits, axis=1), minlength=num_classes) / max(len(logits), 1)


def round_up(value: float, significant: int = SIGNIFICANT) -> float:
    """`value` rounded toward +inf to `significant` figures: a stored threshold never drops below the
    calibration score it came from, which would flag that image too (rounding to nearest did)."""
    exact = Decimal(repr(value))
    if exact == 0:
        return 0.0
    step = Decimal(1).scaleb(exact.adjusted() - (significant - 1))
    return float(exact.quantize(step, rounding=ROUND_CEILING))


def build_detector(
    val_logits: np.ndarray, rejection_rate: float, method: str = "energy", val_distances: np.ndarray | None = None
) -> OodDetector:
    detector = calibrate(val_logits, rejection_rate, method, val_distances=val_distances)
    threshold = round_up(detector.threshold)
    return OodDetector(
        method=detector.method,
        temperature=detector.temperature,
        threshold=threshold,
        rejection_rate=rejection_rate,
        calibration_images=detector.calibration_images,
        measured_rejection_rate=float(np.mean(detector.scores(val_logits, val_distances) > threshold)),
    )


Outputs = tuple[np.ndarray, np.ndarray | None]  # a batch's logits and feature distances (None: not exported)


def detector_aurocs(
    detector: OodDetector,
    in_distribution: Outputs,
    near: dict[str, Outputs],
    far: dict[str, Outputs],
) -> dict[str, Any]:
    """AUROC of the detector's score, in-distribution test images against each shifted or foreign set, and
    pooled per kind; with the share of each set that the calibrated threshold flags."""
    inside = detector.scores(*in_distribution)

    def judge(sets: dict[str, Outputs]) -> dict[str, Any]:
        per_set = {}
        for name, outputs in sets.items():
            scores = detector.scores(*outputs)
            per_set[name] = {
                "images": len(scores),
                "auroc": round(auroc(inside, scores), 6),
                "flagged": round(float(np.mean(scores > detector.threshold)), 6),
            }
        pooled = np.concatenate([detector.scores(*x) for x in sets.values()]) if sets else np.empty(0)
        return {
            "auroc": round(auroc(inside, pooled), 6) if len(pooled) else None,
            "sets": per_set,
        }

    return {
        "in_distribution_images": len(inside),
        "in_distribution_flagged": round(float(np.mean(inside > detector.threshold)), 6),
        "near": judge(near),
        "far": judge(far),
    }
