"""Policy families beside the tree auto followed before, judged as the study judges auto: leave one data set out.

- Nearest cells: the k training cells nearest the new one in the signals' space (standardised on the training
  cells; images a class and classes on a log scale) pool their losses, and the recipe with the least regret
  beyond one SE plus a CPU penalty over them is proposed. Meta-learning by similarity, as a portfolio
  warm-start picks the configurations that did best on the most similar data sets. On images a class and the
  probe, this row is the committed rule's method (bench/nearest_fit.py), which it became after this bench.
- Per-recipe ridge regression: for each recipe, a ridge regression on the signals predicts its regret beyond
  one SE plus the CPU penalty; the recipe with the least prediction is proposed. Algorithm selection by
  regression.
- auto's tree, one per backbone: the tree method (bench/transfer_analysis.py `fit_tree_rule`) fitted on
  each backbone's cells apart, as if the backbone were the rule's first split. It has no settings beyond the
  tree method's own, so no hindsight bound.
- auto's tree racing two fine-tunes: the tree method, its leaves free to name a pair of fine-tunes as
  well as one recipe. Both are trained, the one better on validation (the check's figure) is kept, and the
  check then weighs it against the probe; the pair pays for both. Selection by validation among a few
  candidates, as AutoML systems race configurations. No settings beyond the tree method's either.

Each family runs under auto's validation check and is charged as auto is (the proposal's CPU, the probe's
for a fine-tune, and the signals it reads: the random-init pass only where the pretrained gain is among them).
Its settings (k or the ridge's strength, the CPU weight, the check's margin) are chosen as auto's are, by
leaving data sets out within the training data sets: the most inner cells within one SE among the settings
that spend at most 15% of the inner grid (the cheapest setting if none does), then the lower mean regret.
The held-out data set takes no part in that choice. Each row also gives the family's best fixed setting in
hindsight, chosen on the held-out results themselves: a bound on the family, not a policy.

It trains nothing: it reads bench/results/transfer_study.json; about 4 minutes on 2 cores (the trees; the
other families take seconds).
Writes bench/results/transfer_auto_families.{md,json}. Usage: python -m bench.auto_families
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from bench.common import results_dir, write_results
from bench.nearest_fit import (
    CPU_WEIGHTS,
    NEIGHBOUR_COUNTS,
    SIZE_AND_PROBE,
    Picker,
    Setting,
    Table,
    choose_setting,
    make_table,
    nearest_picks,
    scored_settings,
    settings,
)
from bench.transfer_analysis import (
    FIT_CHOICES,
    TARGET_CPU,
    TARGET_SHARE,
    VALIDATION_MARGINS,
    at_rules_margin,
    auto_signal_seconds,
    backbone_of,
    check_figure_of,
    fine_tune_kept,
    fit_tree_rule,
    held_out_verdict,
    leave_one_dataset_out,
    runs_by_cell_and_recipe,
    usable_cores,
)
from bench.transfer_design import CHECK_FIGURE, RECIPES, TREE_RULE
from bench.transfer_report import verdict_columns
from bench.transfer_study import records_of, study_cells
from transferline.model.advisor import FEATURE_EXTRACTION, SIGNALS, Cell
from transferline.model.nearest_cells import TIE, standardised

NEIGHBOURS, RIDGE = "nearest cells", "per-recipe ridge regression"
FAMILY_PARAMETERS: dict[str, tuple[float, ...]] = {
    NEIGHBOURS: NEIGHBOUR_COUNTS,  # k
    RIDGE: (0.1, 1.0, 10.0, 100.0),  # the ridge's strength on the standardised signals
}
FEATURE_SETS: dict[str, tuple[str, ...]] = {"all six signals": SIGNALS, "images a class and the probe": SIZE_AND_PROBE}


def ridge_picks(table: Table, train: np.ndarray, targets: np.ndarray, alpha: float, weight: float) -> np.ndarray:
    """Recipe index per target: the least predicted loss plus `weight` x CPU share, each recipe's predicted
    by a ridge regression on the standardised signals (the intercept not shrunk)."""
    z = standardised(table.features, train)
    design = np.hstack([np.ones((len(z), 1)), z])
    shrink = alpha * np.eye(design.shape[1])
    shrink[0, 0] = 0.0
    x = design[train]
    target = table.loss + weight * table.cpu + TIE * table.cpu
    coefficients = np.linalg.solve(x.T @ x + shrink, x.T @ target[train])
    return (design[targets] @ coefficients).argmin(1)


PICKERS: dict[str, Picker] = {NEIGHBOURS: nearest_picks, RIDGE: ridge_picks}


def family_settings(family: str, margins: Sequence[float] = VALIDATION_MARGINS) -> list[Setting]:
    return settings(margins, FAMILY_PARAMETERS[family], CPU_WEIGHTS)


def family_verdict(
    family: str,
    cells: list[Cell],
    errors: dict[str, float],
    measured: dict[str, dict[str, Any]],
    signals: Sequence[str],
    margins: Sequence[float] = VALIDATION_MARGINS,
) -> dict[str, Any]:
    """The family with its settings chosen within each fold's training data sets, judged on the held-out one
    as the study judges auto (judge_policy); and its best fixed setting in hindsight."""
    tables = {m: make_table(cells, errors, measured, signals, m, tuple(RECIPES)) for m in margins}
    everyone = np.arange(len(cells))
    datasets = tables[margins[0]].datasets
    picks: dict[str, str] = {}
    margin_of: dict[str, float] = {}
    chosen: dict[str, dict[str, float]] = {}
    for dataset in sorted(set(datasets)):
        train, held = everyone[datasets != dataset], everyone[datasets == dataset]
        setting, _ = choose_setting(PICKERS[family], tables, train, family_settings(family, margins))
        chosen[str(dataset)] = {
            "margin_se": setting.margin,
            "parameter": setting.parameter,
            "cpu_weight": setting.weight,
        }
        table = tables[setting.margin]
        for row, pick in zip(held, PICKERS[family](table, train, held, setting.parameter, setting.weight), strict=True):
            picks[cells[row].name] = table.recipes[pick]
            margin_of[cells[row].name] = setting.margin
    judged = [c.at_margin(margin_of[c.name]) for c in cells]
    paid = {c.name: float(s) for c, s in zip(cells, tables[margins[0]].signal_seconds, strict=True)}
    return {
        **held_out_verdict(judged, picks, errors, paid),
        "folds": chosen,
        "hindsight": hindsight(family, tables, margins),
    }


PER_BACKBONE = "auto's tree, one per backbone"


def per_backbone_verdict(
    cells: list[Cell], errors: dict[str, float], measured: dict[str, dict[str, Any]], processes: int = 1
) -> dict[str, Any]:
    """The tree method fitted and judged leaving one data set out on each backbone's cells apart, and
    the picks judged together as the study judges auto."""
    picks: dict[str, str] = {}
    judged: list[Cell] = []
    paid: dict[str, float] = {}
    folds: dict[str, dict[str, Any]] = {}
    for backbone in sorted({backbone_of(c) for c in cells}):
        own = [c for c in cells if backbone_of(c) == backbone]
        own_picks, rules = leave_one_dataset_out(
            own, RECIPES, lambda train: fit_tree_rule(train, RECIPES, errors, signals=measured), processes
        )
        own_judged = at_rules_margin([c for c in own if c.name in own_picks], rules)
        picks.update(own_picks)
        judged += own_judged
        paid.update(auto_signal_seconds(measured, own_judged, rules))
        for dataset, rule in sorted(rules.items()):
            folds[f"{dataset}/{backbone}"] = {k: rule["fit"][k] for k in FIT_CHOICES}
    return {
        **held_out_verdict(judged, picks, errors, paid),
        "folds": folds,
        "hindsight": None,
    }


RACE = "auto's tree racing two fine-tunes"
RACE_JOIN = " + "  # a race's name: its two fine-tunes, in the recipes' order


def raced_cells(
    cells: list[Cell], records: list[dict[str, Any]], figure: str = CHECK_FIGURE
) -> tuple[list[Cell], dict[str, dict[str, Any]]]:
    """The cells with every pair of fine-tunes as one more choice, and the recipes with those pairs.

    A race's checked outcome, per seed: of its two fine-tunes, the one with the higher validation `figure`
    (the first listed on a tie), then kept only where it beats the same seed's probe by the check's margin,
    at each margin the cells record. Its CPU is both fine-tunes'. Its plain accuracy is never read under the
    check; it is set to the lower of its two fine-tunes', so it can never raise a cell's best."""
    runs = runs_by_cell_and_recipe(records)
    fine_tunes = [r for r in RECIPES if r != FEATURE_EXTRACTION]
    pairs = list(itertools.combinations(fine_tunes, 2))
    raced = []
    for cell in cells:
        probes = {r["seed"]: r for r in runs[cell.name, FEATURE_EXTRACTION]}
        accuracy, seconds = dict(cell.accuracy), dict(cell.seconds)
        checked_at = {margin: dict(checked) for margin, checked in cell.checked_at.items()}
        for first, second in pairs:
            name = f"{first}{RACE_JOIN}{second}"
            accuracy[name] = min(accuracy[first], accuracy[second])
            seconds[name] = seconds[first] + seconds[second]
            others = {r["seed"]: r for r in runs[cell.name, second]}
            for margin, checked in checked_at.items():
                outcomes = []
                for run in runs[cell.name, first]:
                    rival, probe = others[run["seed"]], probes[run["seed"]]
                    kept = run if check_figure_of(run, figure) >= check_figure_of(rival, figure) else rival
                    outcomes.append(
                        kept["test_accuracy"] if fine_tune_kept(kept, probe, margin, figure) else probe["test_accuracy"]
                    )
                checked[name] = sum(outcomes) / len(outcomes)
        raced.append(replace(cell, accuracy=accuracy, seconds=seconds, checked_at=checked_at, checked=checked_at[0.0]))
    recipes = {
        **RECIPES,
        **{f"{a}{RACE_JOIN}{b}": {**RECIPES[a], "race": [a, b]} for a, b in pairs},
    }
    return raced, recipes


def race_verdict(
    cells: list[Cell],
    records: list[dict[str, Any]],
    errors: dict[str, float],
    measured: dict[str, dict[str, Any]],
    processes: int = 1,
) -> dict[str, Any]:
    """The tree method free to propose a race of two fine-tunes, fitted and judged leaving one data set
    out as the study judges auto."""
    raced, recipes = raced_cells(cells, records)
    picks, rules = leave_one_dataset_out(
        raced, recipes, lambda train: fit_tree_rule(train, recipes, errors, signals=measured), processes
    )
    judged = at_rules_margin([c for c in raced if c.name in picks], rules)
    races = sorted({p for p in picks.values() if RACE_JOIN in p})
    return {
        **held_out_verdict(judged, picks, errors, auto_signal_seconds(measured, judged, rules)),
        "folds": {dataset: {k: rule["fit"][k] for k in FIT_CHOICES} for dataset, rule in sorted(rules.items())},
        "races_proposed": {race: sum(p == race for p in picks.values()) for race in races},
        "hindsight": None,
    }


def hindsight(family: str, tables: dict[float, Table], margins: Sequence[float]) -> dict[str, Any]:
    """The family's fixed settings judged leaving one data set out, the best chosen knowing the results:
    the most cells within one SE at all, and within the CPU target."""
    everyone = np.arange(len(tables[margins[0]].datasets))
    scored = scored_settings(PICKERS[family], tables, everyone, family_settings(family, margins))

    def best(candidates: list) -> dict[str, Any] | None:
        if not candidates:
            return None
        setting, (hits, regret, cpu) = min(candidates, key=lambda sv: (-sv[1][0], sv[1][1]))
        return {
            "margin_se": setting.margin,
            "parameter": setting.parameter,
            "cpu_weight": setting.weight,
            "cells_within_one_se": hits,
            "within_one_se": hits / len(everyone),
            "mean_regret": regret,
            "cpu_share_of_grid": cpu,
        }

    return {"any_cpu": best(scored), "within_cpu_target": best([sv for sv in scored if sv[1][2] <= TARGET_CPU])}


def markdown(study: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    committed = study["verdicts"][TREE_RULE]
    lines = [
        "# auto's tree against two other policy families",
        "",
        f"The transfer study's {committed['cells']} cells (bench/results/transfer_study.json, {study['measured_on']}), "
        "every family judged leaving one data set out under auto's validation check, charged as auto is (the "
        "signals it reads included). Settings chosen within each fold's training data sets as auto's are "
        "(bench/auto_families.py). The hindsight columns take the family's best fixed setting knowing the "
        "held-out results: a bound on the family, not a policy.",
        "",
        f"Targets: within one SE in >= {TARGET_SHARE:.0%} of cells, at <= {TARGET_CPU:.0%} of the grid's CPU.",
        "",
        "| family | signals | within one SE | cells | mean regret | CPU share | meets both | hindsight, any CPU | "
        f"hindsight, at most {TARGET_CPU:.0%} |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| auto's tree (its rule before nearest cells) | all six | {verdict_columns(committed)} | | |",
    ]
    for row in rows:
        hind = row["hindsight"] or {}
        bounds = [hind.get("any_cpu"), hind.get("within_cpu_target")]
        shown = [f"{b['cells_within_one_se']} cells at {b['cpu_share_of_grid']:.1%}" if b else "" for b in bounds]
        lines.append(f"| {row['family']} | {row['signals']} | {verdict_columns(row)} | {shown[0]} | {shown[1]} |")
    lines += ["", "Settings each held-out data set's fold chose (margin in SE / k or ridge strength / CPU weight):", ""]
    for row in rows:
        if row["family"] in (PER_BACKBONE, RACE):
            chosen = "; ".join(
                f"{d} {f['margin_se']:g}/{f['depth']}/{f['min_leaf']}/{f['cpu_target']:.0%}/{f['cpu_weight']:.2f}"
                for d, f in row["folds"].items()
            )
            lines.append(f"- {row['family']} (margin in SE / depth / smallest leaf / CPU aim / CPU weight): {chosen}")
            continue
        chosen = "; ".join(
            f"{d} {f['margin_se']:g}/{f['parameter']:g}/{f['cpu_weight']:g}" for d, f in row["folds"].items()
        )
        lines.append(f"- {row['family']}, {row['signals']}: {chosen}")
    for row in rows:
        if row["family"] == RACE:
            proposed = ", ".join(f"{race} in {count}" for race, count in row["races_proposed"].items()) or "none"
            lines += ["", f"Races the held-out cells were proposed (cells): {proposed}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    study = json.loads((results_dir() / "transfer_study.json").read_text())
    cells, errors = study_cells(study)
    rows = [
        {"family": family, "signals": label, **family_verdict(family, cells, errors, study["signals"], signals)}
        for family in PICKERS
        for label, signals in FEATURE_SETS.items()
    ]
    rows.append(
        {
            "family": PER_BACKBONE,
            "signals": "all six signals",
            **per_backbone_verdict(cells, errors, study["signals"], usable_cores()),
        }
    )
    rows.append(
        {
            "family": RACE,
            "signals": "all six signals",
            **race_verdict(cells, records_of(study), errors, study["signals"], usable_cores()),
        }
    )
    write_results("transfer_auto_families", {"rows": rows}, markdown(study, rows))


if __name__ == "__main__":
    main()
