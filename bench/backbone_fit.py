"""`train.backbone: auto` judged on the study, and the figure it compares backbones on chosen by leaving
data sets out (transferline/model/backbone_comparison.py).

Per data set and size run with several backbones, a comparison picks one backbone, which is trained with
its auto recipe, and is judged against the best (backbone, recipe) of that data set and size. The rule's
comparison is the one that picks within one SE for the most of its cells' pairs, each pair's data set left
out of the rule that scores it, then the lower mean regret, then COMPARISONS' order. Judged leaving one
data set out, that choice is nested: each fold's rule chooses its comparison on its own data sets.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bench.transfer_analysis import at_rules_margin, backbone_of, leave_one_dataset_out
from transferline.model.advisor import Cell, expected_range, propose
from transferline.model.backbone_comparison import COMPARISONS, EXPECTED_ACCURACY, compared_value, comparison_of

AUTO_BACKBONE = "auto: the figure its rule compares"
BACKBONE_HINDSIGHT = "hindsight: the backbone whose auto outcome was better"
COMPARISON_POLICIES = {  # how the study's tables name each comparison as a policy
    "probe_accuracy": "the better linear probe",
    EXPECTED_ACCURACY: "the higher expected accuracy",
    "knn_accuracy": "the better k-NN accuracy",
    "logme": "the higher LogME",
}

Fit = Callable[[list[Cell]], dict[str, Any]]


def backbone_groups(cells: list[Cell]) -> list[list[Cell]]:
    """The cells of each data set and size that ran with more than one backbone."""
    groups: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[(cell.dataset, cell.name.split("/")[1])].append(cell)
    return [members for members in groups.values() if len(members) > 1]


def comparison_score(comparison: str, rules: dict[str, dict[str, Any]]) -> Callable[[Cell], float]:
    """A cell's figure under `comparison`, the expected accuracy from its data set's rule in `rules`."""

    def score(cell: Cell) -> float:
        expected = None
        if comparison == EXPECTED_ACCURACY:
            expected = expected_range(
                cell.signals.probe_accuracy, propose(rules[cell.dataset], cell.signals).gain_over_probe
            )
        return compared_value(comparison, cell.signals, expected)

    return score


def judge_backbone_policy(
    groups: list[list[Cell]],
    score: Callable[[Cell], float],
    picks: dict[str, str],
    errors: dict[str, float],
    checked: bool = True,
) -> dict[str, Any]:
    """Per group, the member `score` ranks highest, trained with its pick, against the group's best
    (backbone, recipe): how many are within one SE, and the regrets."""
    within, regrets = [], []
    for members in groups:
        best_cell = max(members, key=lambda c: max(c.accuracy.values()))
        chosen = max(members, key=score)
        regrets.append(max(best_cell.accuracy.values()) - chosen.outcome(picks[chosen.name], checked))
        within.append(regrets[-1] <= errors[best_cell.name] + 1e-12)
    return {
        "groups": len(within),
        "within_one_se": sum(within) / len(within) if within else None,
        "mean_regret": statistics.fmean(regrets) if regrets else None,
        "max_regret": max(regrets) if regrets else None,
    }


def choose_comparison(
    cells: list[Cell], picks: dict[str, str], rules: dict[str, dict[str, Any]], errors: dict[str, float]
) -> dict[str, Any]:
    """The comparison that picks within one SE for the most pairs of `cells`, each judged under its data
    set's rule in `rules` (fitted without it), then the lower mean regret, then COMPARISONS' order; the
    probe where no pair ran several backbones. With every comparison's score."""
    groups = backbone_groups([c for c in cells if c.name in picks])
    scores = {name: judge_backbone_policy(groups, comparison_score(name, rules), picks, errors) for name in COMPARISONS}
    order = list(COMPARISONS)
    chosen = (
        min(order, key=lambda n: (-scores[n]["within_one_se"], scores[n]["mean_regret"], order.index(n)))
        if groups
        else order[0]
    )
    return {"compared_on": chosen, "pairs": len(groups), "scores": scores}


def with_backbone_comparison(fit: Fit, recipes: dict[str, dict[str, Any]], errors: dict[str, float]) -> Fit:
    """`fit`, its rule also naming the backbone comparison chosen on the same cells by leaving their data
    sets out in turn (each scored under `fit` on the others), so the held-out data set takes no part."""

    def fitted(cells: list[Cell]) -> dict[str, Any]:
        rule = fit(cells)
        picks, rules = leave_one_dataset_out(cells, recipes, fit)
        judged = at_rules_margin([c for c in cells if c.name in picks], rules)
        return {**rule, "backbone_comparison": choose_comparison(judged, picks, rules, errors)}

    return fitted


def pick_backbones(
    cells: list[Cell],
    picks: dict[str, str],
    rules: dict[str, dict[str, Any]],
    errors: dict[str, float],
    checked: bool = False,
) -> dict[str, Any]:
    """`train.backbone: auto` judged on the study: per data set and size, the backbone the figure its
    data set's rule names ranks highest (as transferline/model/backbone_choice.py compares them), against
    the best (backbone, recipe) of all. Beside it, each comparison it may name, each single backbone with
    its auto recipe, and the hindsight bound: the backbone whose auto outcome was better."""
    groups = backbone_groups([c for c in cells if c.name in picks])

    def auto(cell: Cell) -> float:
        return comparison_score(comparison_of(rules[cell.dataset]), rules)(cell)

    policies: dict[str, Callable[[Cell], float]] = {
        AUTO_BACKBONE: auto,
        **{COMPARISON_POLICIES[name]: comparison_score(name, rules) for name in COMPARISONS},
        **{f"always {b}": (lambda c, b=b: float(backbone_of(c) == b)) for b in sorted({backbone_of(c) for c in cells})},
        # a bound, not a policy: the backbone whose auto outcome turned out better
        BACKBONE_HINDSIGHT: lambda c: c.outcome(picks[c.name], checked),
    }
    return {label: judge_backbone_policy(groups, score, picks, errors, checked) for label, score in policies.items()}
