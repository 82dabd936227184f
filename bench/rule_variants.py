"""Other ways to fit `strategy: auto`'s rule, judged as the committed one is: leave one data set out.

The committed rule minimises the regret after the validation check plus a CPU penalty whose weight is set
on the training data sets alone to meet the CPU target there, with the check's margin, the tree's depth
and its smallest leaf chosen by leaving data sets out (bench/transfer_analysis.py `fit_auto_rule`). The
study's targets count cells within one standard error of the best, and CPU time. This compares fixed
fitting methods, on the committed study's cells, every one under the validation check (with no margin):
the loss (regret, misses beyond one SE, regret beyond one SE), the CPU penalty or none, the tree's depth
and its smallest leaf; and the committed method fitted to tighter CPU targets than the one judged, since a
held-out data set's CPU share is a prediction and a fit with headroom might meet the target out of sample.
It trains nothing: it reads bench/results/transfer_study.json.

Picking the best row after seeing this table is itself a fit to these cells, so its figures are
optimistic. The committed method is nested (the held-out data set takes part in none of its choices),
but adding the margin and the penalty to it came after reading this study's misses and this table.

Writes bench/results/transfer_rule_variants.{md,json}. Usage: python -m bench.rule_variants
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

from bench.common import results_dir, write_results
from bench.transfer_analysis import (
    TARGET_CPU,
    TARGET_SHARE,
    at_rules_margin,
    auto_signal_seconds,
    fit_auto_rule,
    fit_within_cpu,
    judge_policy,
    leave_one_dataset_out,
    meets_targets,
    usable_cores,
)
from bench.transfer_design import RECIPES
from bench.transfer_study import study_cells
from transferline.model.advisor import Cell, Loss, fit_rule

LOSSES = ("regret", "misses beyond one SE", "regret beyond one SE")
DEPTHS = (1, 2, 3)
BUDGET_DEPTHS = (1, 2)  # depth 3 under the penalty, a fit per bisection step, would take an hour
MIN_LEAVES = (2, 3)
# fit_auto_rule: the regret under the CPU penalty, margin, depth and leaf chosen leaving data sets out
COMMITTED = ("regret", "budget", "chosen", "chosen")
# the committed method with headroom: fitted to spend at most these shares of the training data sets' grid
HEADROOM_TARGETS = (0.14, 0.13, 0.12, 0.10)


def accuracy_loss(kind: str, errors: dict[str, float]) -> Loss:
    """A recipe's accuracy loss in a cell after the validation check, of the kind named."""

    def loss(cell: Cell, recipe: str) -> float:
        regret = cell.checked_regret(recipe)
        beyond = regret - errors[cell.name]
        if kind == "regret":
            return regret
        if kind == "misses beyond one SE":
            return float(beyond > 1e-12) + 0.01 * regret  # the regret only breaks ties
        return max(0.0, beyond)

    return loss


def fitter(
    kind: str,
    penalty: str,
    depth: int | str,
    min_leaf: int | str,
    errors: dict[str, float],
    cpu_target: float = TARGET_CPU,
):
    """A fit for leave_one_dataset_out. With the budget penalty, the CPU weight is the smallest (by
    bisection) whose rule spends at most `cpu_target` of the training cells' grid; on those cells only.
    The committed method (depth and leaf "chosen") is `fit_auto_rule`."""
    if (kind, penalty, depth, min_leaf) == COMMITTED:
        return lambda train_cells: fit_auto_rule(train_cells, RECIPES, errors, cpu_target=cpu_target)

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
        (COMMITTED, TARGET_CPU),
        *((COMMITTED, target) for target in HEADROOM_TARGETS),
        *((method, TARGET_CPU) for method in itertools.product(LOSSES, ("none",), DEPTHS, MIN_LEAVES)),
        *((method, TARGET_CPU) for method in itertools.product(LOSSES, ("budget",), BUDGET_DEPTHS, MIN_LEAVES)),
    ]
    for method, target in methods:
        kind, penalty, depth, min_leaf = method
        picks, rules = leave_one_dataset_out(cells, RECIPES, fitter(*method, errors, cpu_target=target), usable_cores())
        judged = at_rules_margin(cells, rules)
        verdict = judge_policy(judged, picks, errors, auto_signal_seconds(signals, judged, rules), checked=True)
        rows.append(
            {
                "loss": kind,
                "cpu_penalty": penalty,
                "fit_cpu_target": target if penalty == "budget" else None,
                "depth": depth,
                "min_leaf": min_leaf,
                "committed": method == COMMITTED and target == TARGET_CPU,
                **verdict,
            }
        )
    return sorted(rows, key=lambda r: (-r["within_one_se"], r["cpu_share_of_grid"]))


def markdown(rows: list[dict[str, Any]], cells: int, machine: str) -> str:
    lines = [
        "# Fitting the auto rule: methods compared",
        "",
        f"The transfer study's {cells} cells (bench/results/transfer_study.json, {machine}); every method judged "
        "leave-one-data-set-out under auto's validation check, as the study judges the committed rule; the "
        "fixed methods check with no margin. CPU "
        "penalty `budget`: its weight set on the training data sets alone so that the rule spends at most "
        "the fit's CPU target of their grid (15%, or less to leave headroom for the held-out data set). Depth "
        "and leaf `chosen`: the validation margin, depth and leaf chosen by leaving data sets out within the "
        "training data sets (the committed method).",
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    study = json.loads((results_dir() / "transfer_study.json").read_text())
    cells, errors = study_cells(study)
    rows = compare(cells, errors, study["signals"])
    write_results("transfer_rule_variants", {"methods": rows}, markdown(rows, len(cells), study["measured_on"]))


if __name__ == "__main__":
    main()
