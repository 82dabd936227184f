"""Other ways to fit `strategy: auto`'s rule, judged as the committed one is: leave one data set out.

The committed rule minimises the regret beyond each cell's one SE after the validation check plus a CPU
penalty whose weight is set on the training data sets alone to meet the CPU target there, with the check's
margin, the tree's depth and its smallest leaf chosen by leaving data sets out (bench/transfer_analysis.py
`fit_auto_rule`). The study's targets count cells within one standard error of the best, and CPU time.
This compares it with the same method minimising the whole regret (the committed method before), with the
method choosing between those two losses as it chooses its margin, depth and leaf, with the method choosing
its CPU penalty's aim the same way (`fit_choosing_aim`), and with fixed fitting
methods, every one under the validation check (with no margin): the loss (regret, misses beyond one SE,
regret beyond one SE), the CPU penalty or none, the tree's depth and its smallest leaf. It trains nothing:
it reads bench/results/transfer_study.json.

Picking the best row after seeing this table is itself a fit to these cells, so its figures are
optimistic. The committed method is nested (the held-out data set takes part in none of its choices),
but adding the margin, the penalty and the loss beyond one SE to it came after reading this study's misses
and this table.

About 25 minutes on 2 cores, most of it the depth-3 trees under the penalty (a 2 s fit per bisection step)
and the aim's inner leave-one-out.
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
    MISSES_BEYOND_ONE_SE,
    REGRET,
    REGRET_BEYOND_ONE_SE,
    TARGET_CPU,
    TARGET_SHARE,
    accuracy_loss,
    at_rules_margin,
    auto_signal_seconds,
    choose_fit_method,
    fit_auto_rule,
    fit_checked_rule,
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
# fit_auto_rule: the regret beyond one SE under the CPU penalty, margin, depth and leaf chosen leaving data
# sets out
COMMITTED = (AUTO_LOSS, "budget", CHOSEN, CHOSEN)
# the same method minimising the whole regret (the committed method before), and choosing between the two
# losses the way it chooses its margin, depth and leaf
CHOSEN_METHODS = ((REGRET, "budget", CHOSEN, CHOSEN), (CHOSEN, "budget", CHOSEN, CHOSEN))
CHOSEN_LOSSES = (REGRET, REGRET_BEYOND_ONE_SE)
# The committed method with the CPU penalty's aim chosen too: the fit meets its CPU target on the cells it is
# fitted on, and a held-out data set then costs more than those did. Among these aims, the one whose rules,
# fitted leaving one training data set out at a time, score best there within the CPU target, the signals'
# CPU counted (else the lowest aim).
AIMS = (0.12, 0.13, 0.14, 0.15, 0.16, 0.17)
AIM_CHOSEN = "budget, aim chosen"
AIM_METHOD = (AUTO_LOSS, AIM_CHOSEN, CHOSEN, CHOSEN)


def fit_choosing_loss(train_cells: list[Cell], errors: dict[str, float]) -> dict[str, Any]:
    """The committed method with its loss chosen too: among CHOSEN_LOSSES, the one whose chosen margin,
    depth and leaf score best leaving data sets out within `train_cells` (within one SE, then mean
    regret; a tie keeps the first), then fitted on them all."""
    scores = {}
    for loss in CHOSEN_LOSSES:
        (margin, depth, leaf), verdicts = choose_fit_method(train_cells, RECIPES, errors, loss=loss)
        best = verdicts.get(f"{margin}/{depth}/{leaf}")
        scores[loss] = (-best["within_one_se"], best["mean_regret"]) if best else (0.0, 0.0)
    chosen = min(CHOSEN_LOSSES, key=lambda loss: scores[loss])
    return fit_auto_rule(train_cells, RECIPES, errors, loss=chosen)


def fit_choosing_aim(
    train_cells: list[Cell], errors: dict[str, float], signals: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The committed method with its CPU aim chosen among AIMS: its margin, depth and leaf chosen as
    `fit_auto_rule` chooses them; then per aim, the rules fitted leaving one of `train_cells`' data sets out
    at a time judged on it as auto is judged (its check, the signals it pays for); the aim with the most
    cells within one SE (then the lower regret, then the lower aim) among those within the CPU target, else
    the lowest; then fitted on them all. The held-out data set takes part in none of it."""
    (margin, depth, min_leaf), _ = choose_fit_method(train_cells, RECIPES, errors)
    verdicts = {}
    for aim in AIMS:
        picks, rules = leave_one_dataset_out(
            train_cells,
            RECIPES,
            lambda cells, a=aim: fit_checked_rule(cells, RECIPES, depth, min_leaf, errors, margin, a),
        )
        judged = at_rules_margin([c for c in train_cells if c.name in picks], rules)
        verdicts[aim] = judge_policy(judged, picks, errors, auto_signal_seconds(signals, judged, rules), checked=True)
    within = [aim for aim in AIMS if verdicts[aim]["cpu_share_of_grid"] <= TARGET_CPU]
    aim = (
        min(within, key=lambda a: (-verdicts[a]["within_one_se"], verdicts[a]["mean_regret"], a)) if within else AIMS[0]
    )
    rule = fit_checked_rule(train_cells, RECIPES, depth, min_leaf, errors, margin, aim)
    rule["fit"]["aims"] = {
        str(a): {k: v[k] for k in ("within_one_se", "mean_regret", "cpu_share_of_grid")} for a, v in verdicts.items()
    }
    return rule


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
    Depth and leaf "chosen" is `fit_auto_rule` with the loss named, or with the loss chosen as well; the
    penalty AIM_CHOSEN chooses its aim too (`fit_choosing_aim`, which reads the cells' `signals`)."""
    if penalty == AIM_CHOSEN:
        if signals is None:
            raise ValueError("choosing the CPU aim needs the cells' signals: what auto pays for them counts")
        return lambda train_cells: fit_choosing_aim(train_cells, errors, signals)
    if depth == CHOSEN:
        if kind == CHOSEN:
            return lambda train_cells: fit_choosing_loss(train_cells, errors)
        return lambda train_cells: fit_auto_rule(train_cells, RECIPES, errors, cpu_target=cpu_target, loss=kind)

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
        *CHOSEN_METHODS,
        AIM_METHOD,
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
        "leaf chosen by leaving data sets out within the training data sets (the committed method, with the "
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
        if r.get("aims_chosen"):
            chosen = r["aims_chosen"]
            lines += [
                "",
                f"CPU penalty `{AIM_CHOSEN}`: the fit's CPU aim chosen among "
                + ", ".join(f"{a:.0%}" for a in AIMS)
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
