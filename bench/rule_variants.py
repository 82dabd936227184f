"""Other ways to fit a tree for `strategy: auto`, judged as the tree method is: leave one data set out.

The tree method (auto's rule before the nearest cells) minimises the regret beyond each cell's one SE after
the validation check plus a CPU penalty, with the check's margin, the tree's depth and its smallest leaf
chosen by leaving data sets out, then the penalty's aim (the share of the training data sets' grid it may
spend there) chosen the same way, the signals' CPU counted (bench/transfer_analysis.py `fit_tree_rule`). The
study's targets count cells within one standard error of the best, and CPU time. This compares it with the
same method aimed at the CPU target itself (as it was before its aim was chosen), minimising the whole regret
(the one before that), choosing between those two losses as it chooses its margin, depth and leaf, and with
fixed fitting methods, every one under the validation check (with no margin): the loss (regret, misses beyond
one SE, regret beyond one SE), the CPU penalty (aimed at the target) or none, the tree's depth and its
smallest leaf. It trains nothing: it reads bench/results/transfer_study.json.

Picking the best row after seeing this table is itself a fit to these cells, so its figures are
optimistic. The tree method is nested (the held-out data set takes part in none of its choices),
but adding the margin, the penalty, the loss beyond one SE and the aim's choice to it came after reading
this study's misses and this table.

About 35 minutes on 2 cores, most of it the aims' inner leave-one-out and the depth-3 trees under the
penalty (a 2 s fit per bisection step).
Writes bench/results/transfer_rule_variants.{md,json}. Usage: python -m bench.rule_variants
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

from bench.common import results_dir, write_results
from bench.transfer_analysis import (
    AUTO_LOSS,
    CPU_AIMS,
    MISSES_BEYOND_ONE_SE,
    REGRET,
    REGRET_BEYOND_ONE_SE,
    TARGET_CPU,
    TARGET_SHARE,
    accuracy_loss,
    at_rules_margin,
    auto_signal_seconds,
    choose_fit_method,
    fit_tree_rule,
    fit_within_cpu,
    judge_policy,
    leave_one_dataset_out,
    meets_targets,
    usable_cores,
)
from bench.transfer_design import RECIPES
from bench.transfer_study import study_cells
from transferline.model.advisor import Cell, fit_rule

LOSSES = (REGRET, MISSES_BEYOND_ONE_SE, REGRET_BEYOND_ONE_SE)
DEPTHS = (1, 2, 3)
MIN_LEAVES = (2, 3)
CHOSEN = "chosen"  # a choice made by leaving data sets out within the training data sets
# fit_tree_rule: the regret beyond one SE under the CPU penalty, margin, depth and leaf chosen leaving data
# sets out, then the penalty's aim
AIM_CHOSEN = "budget, aim chosen"
COMMITTED = (AUTO_LOSS, AIM_CHOSEN, CHOSEN, CHOSEN)
# the tree method before: the same with the penalty aimed at the CPU target itself
FIXED_AIM = (AUTO_LOSS, "budget", CHOSEN, CHOSEN)
# the same method minimising the whole regret (the tree method before that), and choosing between the
# two losses the way it chooses its margin, depth and leaf
CHOSEN_METHODS = ((REGRET, AIM_CHOSEN, CHOSEN, CHOSEN), (CHOSEN, AIM_CHOSEN, CHOSEN, CHOSEN))
CHOSEN_LOSSES = (REGRET, REGRET_BEYOND_ONE_SE)


def fit_choosing_loss(
    train_cells: list[Cell], errors: dict[str, float], signals: dict[str, dict[str, Any]] | None
) -> dict[str, Any]:
    """The tree method with its loss chosen too: among CHOSEN_LOSSES, the one whose chosen margin,
    depth and leaf score best leaving data sets out within `train_cells` (within one SE, then mean
    regret; a tie keeps the first), then fitted on them all, its aim chosen as the tree method's."""
    scores = {}
    for loss in CHOSEN_LOSSES:
        (margin, depth, leaf), verdicts = choose_fit_method(train_cells, RECIPES, errors, loss=loss)
        best = verdicts.get(f"{margin}/{depth}/{leaf}")
        scores[loss] = (-best["within_one_se"], best["mean_regret"]) if best else (0.0, 0.0)
    chosen = min(CHOSEN_LOSSES, key=lambda loss: scores[loss])
    return fit_tree_rule(train_cells, RECIPES, errors, loss=chosen, signals=signals)


def fitter(
    kind: str,
    penalty: str,
    depth: int | str,
    min_leaf: int | str,
    errors: dict[str, float],
    cpu_target: float = TARGET_CPU,
    signals: dict[str, dict[str, Any]] | None = None,
):
    """A fit for leave_one_dataset_out. With the budget penalty, the CPU weight is the smallest (by
    bisection) whose rule spends at most `cpu_target` of the training cells' grid; on those cells only.
    Depth and leaf "chosen" is `fit_tree_rule` with the loss named, or with the loss chosen as well; under
    the penalty AIM_CHOSEN it chooses the penalty's aim too (which reads the cells' `signals`)."""
    if depth == CHOSEN:
        aims = CPU_AIMS if penalty == AIM_CHOSEN else None
        if kind == CHOSEN:
            return lambda train_cells: fit_choosing_loss(train_cells, errors, signals)
        return lambda train_cells: fit_tree_rule(
            train_cells, RECIPES, errors, cpu_target=cpu_target, loss=kind, signals=signals, aims=aims
        )

    def fit(train_cells: list[Cell]) -> dict[str, Any]:
        loss = accuracy_loss(kind, errors)
        if penalty == "none":
            return fit_rule(train_cells, RECIPES, int(depth), int(min_leaf), loss, checked=True)
        return fit_within_cpu(train_cells, RECIPES, int(depth), int(min_leaf), loss, cpu_target)[0]

    return fit


def compare(cells: list[Cell], errors: dict[str, float], signals: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every fitting method's leave-one-data-set-out verdict, best share within one SE first. Each method's
    rules decide which signals auto pays for (`auto_signal_seconds`)."""
    rows = []
    methods = [
        COMMITTED,
        FIXED_AIM,
        *CHOSEN_METHODS,
        *itertools.product(LOSSES, ("none",), DEPTHS, MIN_LEAVES),
        *itertools.product(LOSSES, ("budget",), DEPTHS, MIN_LEAVES),
    ]
    for method in methods:
        kind, penalty, depth, min_leaf = method
        picks, rules = leave_one_dataset_out(cells, RECIPES, fitter(*method, errors, signals=signals), usable_cores())
        judged = at_rules_margin(cells, rules)
        verdict = judge_policy(judged, picks, errors, auto_signal_seconds(signals, judged, rules), checked=True)
        row = {
            "loss": kind,
            "cpu_penalty": penalty,
            "fit_cpu_target": TARGET_CPU if penalty == "budget" else None,  # AIM_CHOSEN: per fold, below
            "depth": depth,
            "min_leaf": min_leaf,
            "committed": method == COMMITTED,
            **verdict,
        }
        if kind == CHOSEN:  # which loss each held-out data set's fold chose
            row["losses_chosen"] = {dataset: rule["fit"]["loss"] for dataset, rule in rules.items()}
        if penalty == AIM_CHOSEN:  # which CPU aim each held-out data set's fold chose
            row["aims_chosen"] = {dataset: rule["fit"]["cpu_target"] for dataset, rule in rules.items()}
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["within_one_se"], r["cpu_share_of_grid"]))


def markdown(rows: list[dict[str, Any]], cells: int, machine: str) -> str:
    lines = [
        "# Fitting the auto rule: methods compared",
        "",
        f"The transfer study's {cells} cells (bench/results/transfer_study.json, {machine}); every method judged "
        "leave-one-data-set-out under auto's validation check, as the study judges the committed rule; the "
        "fixed methods check with no margin. CPU "
        "penalty `budget`: its weight set on the training data sets alone so that the rule spends at most "
        "the fit's CPU target of their grid (15%). Depth and leaf `chosen`: the validation margin, depth and "
        "leaf chosen by leaving data sets out within the training data sets (the tree method, with the "
        "loss named); loss `chosen`: the loss too, between the regret and the regret beyond one SE.",
        "",
        f"Targets: within one SE in >= {TARGET_SHARE:.0%} of cells, at <= {TARGET_CPU:.0%} of the grid's CPU. "
        "Choosing the best row after seeing this table fits these cells again, so its figures are optimistic.",
        "",
        "| loss | CPU penalty (fit's target) | depth | min leaf | within one SE | mean regret | CPU share "
        "| meets both |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        meets = meets_targets(r)
        name = f"**{r['loss']}** (committed)" if r["committed"] else r["loss"]
        target = r.get("fit_cpu_target")
        penalty = f"{r['cpu_penalty']} ({target:.0%})" if target is not None else r["cpu_penalty"]
        lines.append(
            f"| {name} | {penalty} | {r['depth']} | {r['min_leaf']} | {r['within_one_se']:.0%} | "
            f"{r['mean_regret']:.4f} | {r['cpu_share_of_grid']:.1%} | {'yes' if meets else 'no'} |"
        )
    for r in rows:
        if r.get("aims_chosen") and r["committed"]:
            chosen = r["aims_chosen"]
            lines += [
                "",
                f"CPU penalty `{AIM_CHOSEN}`: the fit's CPU aim chosen among "
                + ", ".join(f"{a:.0%}" for a in CPU_AIMS)
                + " by leaving data sets out within the training data sets, the signals' CPU counted (the "
                f"best share within one SE at most {TARGET_CPU:.0%} of their grid). Per held-out data set's fold: "
                + ", ".join(f"{dataset} {aim:.0%}" for dataset, aim in sorted(chosen.items()))
                + ".",
            ]
        if r.get("losses_chosen"):
            chosen = r["losses_chosen"]
            counts = {loss: sum(v == loss for v in chosen.values()) for loss in CHOSEN_LOSSES}
            lines += [
                "",
                "Loss `chosen`, per held-out data set's fold: "
                + ", ".join(f"the {loss} in {n} of {len(chosen)}" for loss, n in counts.items())
                + ".",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    study = json.loads((results_dir() / "transfer_study.json").read_text())
    cells, errors = study_cells(study)
    rows = compare(cells, errors, study["signals"])
    write_results("transfer_rule_variants", {"methods": rows}, markdown(rows, len(cells), study["measured_on"]))


if __name__ == "__main__":
    main()
