"""What `train.backbone: auto` compares its candidates on: one named figure per candidate.

Every comparison is a figure of one candidate's own signals (and, for the expected accuracy, of the
advisor's proposal for it), so it applies to backbones the study never ran. The study chooses which one by
leaving data sets out, as it chooses the advisor's settings (bench/backbone_fit.py), and the rule file
names it under `backbone_comparison`; a fixed strategy has no rule and compares the linear probes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transferline.errors import ParamsError
from transferline.model.advisor import Signals

PROBE_ACCURACY = "probe_accuracy"
EXPECTED_ACCURACY = "expected_accuracy"
# in the order a choice prefers on a tie: the one that needs no rule first
COMPARISONS: dict[str, str] = {
    PROBE_ACCURACY: "the linear probe's validation accuracy",
    EXPECTED_ACCURACY: "the advisor's expected test accuracy",
    "knn_accuracy": "the k-NN validation accuracy",
    "logme": "LogME",
}
# what a rule that names no comparison was compared on, before rules named one
UNNAMED_RULE_COMPARISON = EXPECTED_ACCURACY


def comparison_of(rule: Mapping[str, Any] | None) -> str:
    """The comparison a rule names; the probe without a rule; a precise error for a name we do not know."""
    if rule is None:
        return PROBE_ACCURACY
    named = (rule.get("backbone_comparison") or {}).get("compared_on", UNNAMED_RULE_COMPARISON)
    if named not in COMPARISONS:
        raise ParamsError(
            f"advisor rule's backbone_comparison names {named!r}; it must be one of {', '.join(COMPARISONS)}"
        )
    return named


def compared_value(comparison: str, signals: Signals, expected_range: tuple[float, float] | None) -> float:
    """The figure `comparison` ranks a candidate by: the midpoint of its expected range, or one of its signals."""
    if comparison != EXPECTED_ACCURACY:
        return signals.value(comparison)
    if expected_range is None:
        raise ParamsError("comparing backbones on the expected accuracy needs the advisor's rule (strategy: auto)")
    low, high = expected_range
    return (low + high) / 2
