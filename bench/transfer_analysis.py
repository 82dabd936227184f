"""The transfer study's analysis: pure functions from run records to cells, rankings and verdicts.

A run record is one training: data set, size, backbone, recipe, seed, test accuracy, test images,
wall seconds (and the signals of its cell). Cells group the runs of one (data set, size, backbone).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from scipy.stats import kendalltau

from transferline.model.advisor import SIGNALS, Cell, Signals, fit_rule, walk


def cell_id(record: dict[str, Any]) -> tuple[str, int | str, str]:
    return record["dataset"], record["size"], record["backbone"]


def build_cells(
    records: list[dict[str, Any]], signals: dict[str, dict[str, float]], required: set[str] | None = None
) -> list[Cell]:
    """One Cell per (data set, size, backbone) with signals: mean test accuracy and seconds per recipe.
    With `required`, a cell still missing one of those recipes (a study stopped mid-cell) is left out:
    judging a policy on it would compare against a best that was never run."""
    grouped: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        grouped[cell_id(record)][record["recipe"]].append(record)
    cells = []
    for key, by_recipe in sorted(grouped.items(), key=lambda item: str(item[0])):
        name = cell_name(key)
        if name not in signals or (required and not required <= set(by_recipe)):
            continue
        cells.append(
            Cell(
                dataset=key[0],
                signals=Signals(**{k: signals[name][k] for k in SIGNALS}),
                accuracy={r: statistics.fmean(x["test_accuracy"] for x in runs) for r, runs in by_recipe.items()},
                seconds={r: statistics.fmean(x["cpu_seconds"] for x in runs) for r, runs in by_recipe.items()},
                name=name,
            )
        )
    return cells


def cell_name(key: tuple) -> str:
    dataset, size, backbone = key
    return f"{dataset}/{size}/{backbone}"


def standard_error(records: list[dict[str, Any]], key: tuple, recipe: str) -> float:
    """One standard error of a recipe's mean test accuracy in a cell: the binomial error of the test split,
    or the seeds' spread when that is larger (seeds vary the split's sampling noise and the training)."""
    runs = [r for r in records if cell_id(r) == key and r["recipe"] == recipe]
    accuracy = statistics.fmean(r["test_accuracy"] for r in runs)
    n = runs[0]["test_images"]
    p = min(max(accuracy, 0.5 / n), 1 - 0.5 / n)  # a perfect score on n images is not certainty
    binomial = math.sqrt(p * (1 - p) / n)
    seeds = statistics.stdev(r["test_accuracy"] for r in runs) / math.sqrt(len(runs)) if len(runs) > 1 else 0.0
    return max(binomial, seeds)


def kendall_taus(cells: list[Cell], target_recipes: list[str]) -> dict[str, dict[str, float | None]]:
    """Kendall tau of each signal against the best fine-tuned accuracy of the cell, pooled over cells and
    per data set (None where a data set has too few cells or no variation)."""

    def tau(xs: list[float], ys: list[float]) -> float | None:
        if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
            return None
        value = kendalltau(xs, ys).statistic
        return None if math.isnan(value) else float(value)

    fine_tuned = [max(c.accuracy[r] for r in target_recipes if r in c.accuracy) for c in cells]
    result: dict[str, dict[str, float | None]] = {}
    for signal in SIGNALS:
        values = [c.signals.value(signal) for c in cells]
        row: dict[str, float | None] = {"all": tau(values, fine_tuned)}
        for dataset in sorted({c.dataset for c in cells}):
            pairs = [(v, a) for v, a, c in zip(values, fine_tuned, cells, strict=True) if c.dataset == dataset]
            row[dataset] = tau([p[0] for p in pairs], [p[1] for p in pairs])
        result[signal] = row
    return result


def judge_policy(
    cells: list[Cell],
    pick: dict[str, str],
    errors: dict[str, float],
    signal_seconds: dict[str, float],
) -> dict[str, Any]:
    """How a policy's picks compare with each cell's best: share within one standard error, mean regret,
    and its CPU time as a share of running the whole grid of that cell."""
    within, regrets, spent, grid = [], [], [], []
    for cell in cells:
        name = cell.name
        chosen = pick[name]
        best = max(cell.accuracy.values())
        within.append(best - cell.accuracy[chosen] <= errors[name] + 1e-12)
        regrets.append(best - cell.accuracy[chosen])
        spent.append(cell.seconds[chosen] + signal_seconds.get(name, 0.0))
        grid.append(sum(cell.seconds.values()))
    return {
        "cells": len(cells),
        "within_one_se": sum(within) / len(within) if within else None,
        "mean_regret": statistics.fmean(regrets) if regrets else None,
        "max_regret": max(regrets) if regrets else None,
        "cpu_share_of_grid": sum(spent) / sum(grid) if grid and sum(grid) > 0 else None,
    }


def cheapest_within_one_se(cells: list[Cell], errors: dict[str, float]) -> dict[str, str]:
    """Per cell, the cheapest recipe within one standard error of its best, picked knowing the results:
    the least CPU any policy can spend and still be within one SE in every cell (a bound, not a policy)."""
    picks = {}
    for cell in cells:
        best = max(cell.accuracy.values())
        near = [r for r, a in cell.accuracy.items() if best - a <= errors[cell.name] + 1e-12]
        picks[cell.name] = min(near, key=cell.seconds.__getitem__)
    return picks


def leave_one_dataset_out(
    cells: list[Cell], recipes: dict[str, dict[str, Any]]
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """For each data set: the rule fitted on the others, and its pick for each of this data set's cells."""
    picks: dict[str, str] = {}
    rules: dict[str, dict[str, Any]] = {}
    for dataset in sorted({c.dataset for c in cells}):
        train_cells = [c for c in cells if c.dataset != dataset]
        if not train_cells:
            continue
        rule = fit_rule(train_cells, recipes)
        rules[dataset] = rule
        for cell in cells:
            if cell.dataset == dataset:
                picks[cell.name] = walk(rule["tree"], cell.signals)[0]["recipe"]
    return picks, rules
