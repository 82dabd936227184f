"""The deployment gate: every check in one pure function, and a decision that always says why.

A check is `pass`, `fail` or `n/a` (not applicable, e.g. no champion yet). The candidate passes
only if no check fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from transferline.config import GateParams

Verdict = Literal["pass", "fail", "n/a"]


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float | None
    comparison: Literal[">=", "<="]
    verdict: Verdict
    detail: str


def threshold_check(name: str, value: float, threshold: float, comparison: str, what: str) -> Check:
    ok = value >= threshold if comparison == ">=" else value <= threshold
    verdict: Verdict = "pass" if ok else "fail"
    return Check(name, value, threshold, comparison, verdict, f"{what} {value:.6g} {comparison} {threshold:.6g}")


@dataclass(frozen=True)
class ChampionScore:
    """The champion and the candidate scored on the same test images in the same run."""

    tag: str
    champion_value: float
    candidate_value: float
    n_images: int


def champion_check(score: ChampionScore | None, params: GateParams, reason_if_none: str) -> Check:
    name = f"no_regression_vs_champion_{params.champion_metric}"
    if score is None:
        return Check(name, None, None, ">=", "n/a", reason_if_none)
    threshold = score.champion_value - params.champion_tolerance
    what = (
        f"candidate {params.champion_metric} vs champion {score.tag} ({score.champion_value:.6g} "
        f"- tolerance {params.champion_tolerance:g}) on the same {score.n_images} test images:"
    )
    return threshold_check(name, score.candidate_value, threshold, ">=", what)


def evaluate_gate(
    metrics: dict,
    export_report: dict,
    params: GateParams,
    champion: ChampionScore | None,
    champion_note: str = "no champion is deployed yet",
) -> dict:
    """Apply every threshold; return the decision as JSON-ready data."""
    parity = export_report["parity"]
    worst_diff = max(p["max_abs_diff"] for p in parity)
    worst_agreement = min(p["top1_agreement"] for p in parity)
    batches = ", ".join(str(p["batch_size"]) for p in parity)
    checks = [
        threshold_check(
            "finite_outputs", metrics.get("non_finite_outputs", 0), 0, "<=", "test images with NaN/inf outputs:"
        ),
        threshold_check("accuracy", metrics["accuracy"], params.min_accuracy, ">=", "test accuracy"),
        threshold_check("macro_f1", metrics["macro_f1"], params.min_macro_f1, ">=", "test macro-F1"),
        threshold_check(
            "min_class_recall",
            metrics["min_class_recall"],
            params.min_class_recall,
            ">=",
            f"lowest class recall ({worst_class(metrics)})",
        ),
        champion_check(champion, params, champion_note),
        threshold_check(
            "onnx_max_logit_diff",
            worst_diff,
            params.max_logit_diff,
            "<=",
            f"ONNX vs PyTorch max |logit difference| (batch sizes {batches})",
        ),
        threshold_check(
            "onnx_top1_agreement",
            worst_agreement,
            params.min_top1_agreement,
            ">=",
            "ONNX vs PyTorch top-1 agreement",
        ),
        threshold_check(
            "latency_p95_ms",
            export_report["latency"]["p95_ms"],
            params.max_latency_ms,
            "<=",
            "ONNX Runtime CPU latency p95 at batch 1 (ms)",
        ),
        threshold_check(
            "model_size_mb",
            export_report["model_bytes"] / 1e6,
            params.max_model_mb,
            "<=",
            "ONNX model size (MB)",
        ),
    ]
    failed = [c for c in checks if c.verdict == "fail"]
    passed = not failed
    if passed:
        reason = "passed: " + "; ".join(c.detail for c in checks if c.verdict == "pass")
    else:
        reason = "rejected: " + "; ".join(f"{c.name} failed ({c.detail})" for c in failed)
    return {
        "passed": passed,
        "reason": reason,
        "checks": [asdict(c) for c in checks],
        "champion": asdict(champion) if champion else None,
    }


def worst_class(metrics: dict) -> str:
    per_class = metrics.get("per_class", {})
    if not per_class:
        return "n/a"
    name = min(per_class, key=lambda c: per_class[c]["recall"])
    return f"class {name!r}"
