"""The deployment gate: every check in one pure function, and a decision that always says why.

A check is `pass`, `fail` or `n/a` (not applicable, e.g. no champion yet). The candidate passes
only if no check fails. Against the serving champion two checks apply: `class_set` (the same classes,
unless `gate.allow_class_change`) and `no_regression_vs_champion_accuracy`, McNemar's exact test on the
images where the two disagree (transferline/evaluation/paired_test.py), which rejects only a candidate
that is worse beyond chance at `gate.regression_alpha`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from transferline.config import GateParams
from transferline.evaluation.paired_test import PairedComparison

Verdict = Literal["pass", "fail", "n/a"]


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float | None
    comparison: Literal[">=", "<=", "=="]
    verdict: Verdict
    detail: str


def threshold_check(name: str, value: float, threshold: float, comparison: str, what: str) -> Check:
    ok = value >= threshold if comparison == ">=" else value <= threshold
    verdict: Verdict = "pass" if ok else "fail"
    return Check(name, value, threshold, comparison, verdict, f"{what} {value:.6g} {comparison} {threshold:.6g}")


@dataclass(frozen=True)
class ChampionScore:
    """The champion and the candidate scored on the same test images in the same run, and the paired test."""

    tag: str
    metric: str
    champion_value: float
    candidate_value: float
    n_images: int
    candidate_only_correct: int  # discordant images: candidate right, champion wrong
    champion_only_correct: int  # discordant images: champion right, candidate wrong
    p_value: float  # exact McNemar, one-sided: the candidate is worse
    test: str

    @classmethod
    def from_comparison(cls, tag: str, comparison: PairedComparison) -> ChampionScore:
        return cls(
            tag=tag,
            metric="accuracy",
            champion_value=comparison.champion_accuracy,
            candidate_value=comparison.candidate_accuracy,
            n_images=comparison.n_images,
            candidate_only_correct=comparison.candidate_only_correct,
            champion_only_correct=comparison.champion_only_correct,
            p_value=comparison.p_value,
            test=comparison.test,
        )


@dataclass(frozen=True)
class ClassChange:
    """How the candidate's classes differ from the champion's (both empty: the same set)."""

    champion_tag: str
    added: tuple[str, ...]  # the candidate predicts them, the champion does not
    removed: tuple[str, ...]  # the champion predicts them, the candidate does not

    @classmethod
    def between(cls, champion_tag: str, champion_classes: list[str], candidate_classes: list[str]) -> ClassChange:
        added = tuple(sorted(set(candidate_classes) - set(champion_classes)))
        removed = tuple(sorted(set(champion_classes) - set(candidate_classes)))
        return cls(champion_tag, added, removed)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def class_set_check(change: ClassChange | None, params: GateParams) -> Check:
    """A candidate that predicts other classes than the champion is a product change, not a retrain:
    it is rejected unless `gate.allow_class_change` says the change is intended."""
    if change is None:
        return Check("class_set", None, None, "==", "n/a", "no champion is deployed yet: no class set to keep")
    if not change.changed:
        return Check("class_set", None, None, "==", "pass", f"same classes as champion {change.champion_tag}")
    moves = (("added", change.added), ("removed", change.removed))
    parts = [f"{verb} {', '.join(names)}" for verb, names in moves if names]
    what = f"classes differ from champion {change.champion_tag}: {'; '.join(parts)}"
    if params.allow_class_change:
        return Check("class_set", None, None, "==", "pass", f"{what} (allowed by gate.allow_class_change)")
    return Check("class_set", None, None, "==", "fail", f"{what} (set gate.allow_class_change: true if intended)")


def class_set_record(change: ClassChange | None, params: GateParams) -> dict | None:
    """The class comparison as JSON-ready data, recorded whether or not it changed or was allowed."""
    if change is None:
        return None
    return {
        "champion_tag": change.champion_tag,
        "added": list(change.added),
        "removed": list(change.removed),
        "allowed": params.allow_class_change,
    }


def champion_check(score: ChampionScore | None, params: GateParams, reason_if_none: str) -> Check:
    """Reject only a candidate that is significantly worse than the champion on the same images."""
    name = f"no_regression_vs_champion_{params.champion_metric}"
    if score is None:
        return Check(name, None, None, ">=", "n/a", reason_if_none)
    what = (
        f"candidate {score.metric} {score.candidate_value:.4g} vs champion {score.tag} {score.champion_value:.4g} "
        f"on the same {score.n_images} test images, {score.candidate_only_correct} right only by the candidate, "
        f"{score.champion_only_correct} only by the champion: {score.test} p-value"
    )
    return threshold_check(name, score.p_value, params.regression_alpha, ">=", what)


def evaluate_gate(
    metrics: dict,
    export_report: dict,
    params: GateParams,
    champion: ChampionScore | None,
    champion_note: str = "no champion is deployed yet",
    class_change: ClassChange | None = None,
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
        class_set_check(class_change, params),
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
        ood_check(export_report.get("ood"), params),
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
        "champion": {**asdict(champion), "alpha": params.regression_alpha} if champion else None,
        "class_set": class_set_record(class_change, params),
    }


def ood_check(ood: dict | None, params: GateParams) -> Check:
    """The out-of-distribution flag must separate the far sets named in `gate.ood_check_sets` from test images
    (its AUROC on the worst of them). The export scores other sets too; they are reported, not gated."""
    by_set = (ood or {}).get("far_auroc_by_set") or {}
    checked = {name: by_set[name] for name in params.ood_check_sets if name in by_set}
    if not checked:
        return Check("ood_auroc", None, params.min_ood_auroc, ">=", "n/a", "no checked OOD set in the export report")
    worst = min(checked, key=checked.get)
    return threshold_check(
        "ood_auroc", checked[worst], params.min_ood_auroc, ">=", f"OOD flag AUROC, test images vs {worst}"
    )


def worst_class(metrics: dict) -> str:
    per_class = metrics.get("per_class", {})
    if not per_class:
        return "n/a"
    name = min(per_class, key=lambda c: per_class[c]["recall"])
    return f"class {name!r}"
