"""The transfer study's analysis: pure functions from run records to cells, rankings and verdicts.

A run record is one training: data set, size, backbone, recipe, seed, test accuracy, test images,
wall seconds (and the signals of its cell). Cells group the runs of one (data set, size, backbone).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from scipy.stats import kendalltau

from transferline.model.advisor import (
    BEST_EPOCH,
    FEATURE_EXTRACTION,
    SIGNALS,
    Cell,
    Loss,
    Signals,
    check_figure,
    check_margin,
    fit_rule,
    keep_fine_tuned,
    propose,
    reads_gain,
    validation_figure_of,
    walk,
)


def cell_id(record: dict[str, Any]) -> tuple[str, int | str, str]:
    return record["dataset"], record["size"], record["backbone"]


def build_cells(
    records: list[dict[str, Any]],
    signals: dict[str, dict[str, float]],
    required: set[str] | None = None,
    grid: set[str] | None = None,
    figure: str = BEST_EPOCH,
    margins: tuple[float, ...] | None = None,
) -> list[Cell]:
    """One Cell per (data set, size, backbone) with signals: mean test accuracy and seconds per recipe.
    With `required`, a cell still missing one of those recipes (a study stopped mid-cell) is left out:
    judging a policy on it would compare against a best that was never run. With `grid`, CPU shares are
    shares of those recipes' seconds (default: of every recipe's). `figure`: the fine-tune's validation
    figure the check compares (`check_figure_of`); `margins`: the check's margins each cell records its
    outcomes at (default VALIDATION_MARGINS, those a fit chooses between)."""
    grouped: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        grouped[cell_id(record)][record["recipe"]].append(record)
    cells = []
    for key, by_recipe in sorted(grouped.items(), key=lambda item: str(item[0])):
        name = cell_name(key)
        if name not in signals or (required and not required <= set(by_recipe)):
            continue
        seconds = {r: statistics.fmean(x["cpu_seconds"] for x in runs) for r, runs in by_recipe.items()}
        cells.append(
            Cell(
                dataset=key[0],
                signals=Signals(**{k: signals[name][k] for k in SIGNALS}),
                accuracy={r: statistics.fmean(x["test_accuracy"] for x in runs) for r, runs in by_recipe.items()},
                seconds=seconds,
                grid_seconds=sum(v for r, v in seconds.items() if grid is None or r in grid),
                name=name,
                checked=checked_accuracy(by_recipe, figure=figure),
                checked_at={
                    margin: checked_accuracy(by_recipe, margin, figure)
                    for margin in (VALIDATION_MARGINS if margins is None else margins)
                },
                validation_figure=figure,
            )
        )
    return cells


# how far a fine-tuned model must beat the probe on validation to be kept, in standard errors of that
# difference on the cell's validation split (check_margin); the fit chooses one
VALIDATION_MARGINS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)


def checked_accuracy(
    by_recipe: dict[str, list[dict[str, Any]]], margin_se: float = 0.0, figure: str = BEST_EPOCH
) -> dict[str, float]:
    """Per recipe, the mean test accuracy `auto` gets when it proposes that recipe: in each seed's run, the
    feature-extraction run's test accuracy where the fine-tuned model (its `figure`, `check_figure_of`) did
    not beat it on validation by more than `margin_se` standard errors (`check_margin` of the run's
    validation images; `keep_fine_tuned`), else its own. Empty without feature-extraction runs or validation records."""
    probes = {r["seed"]: r for r in by_recipe.get(FEATURE_EXTRACTION, []) if "val_accuracy" in r}
    if not probes:
        return {}
    checked = {}
    for recipe, runs in by_recipe.items():
        outcomes = []
        for run in runs:
            probe = probes.get(run.get("seed"), next(iter(probes.values())))
            fine_tuned = recipe != FEATURE_EXTRACTION and "val_accuracy" in run
            own = not fine_tuned or fine_tune_kept(run, probe, margin_se, figure)
            outcomes.append(run["test_accuracy"] if own else probe["test_accuracy"])
        checked[recipe] = statistics.fmean(outcomes)
    return checked


def hindsight_checked(records: list[dict[str, Any]], cells: list[Cell]) -> list[Cell]:
    """The cells as a perfect validation check would leave them: per seed, the better test accuracy of the
    fine-tune and the same seed's probe run. A bound, not a policy: `auto` judged on these cells shows how
    many of its misses any better check (a larger validation split, another margin) could recover."""
    runs = runs_by_cell_and_recipe(records)
    perfect = []
    for cell in cells:
        probes = {r["seed"]: r for r in runs.get((cell.name, FEATURE_EXTRACTION), [])}
        if not probes:
            perfect.append(cell)
            continue
        checked = {
            recipe: statistics.fmean(
                max(run["test_accuracy"], probes.get(run["seed"], run)["test_accuracy"])
                for run in runs[cell.name, recipe]
            )
            for recipe in cell.accuracy
        }
        perfect.append(replace(cell, checked=checked))
    return perfect


def policy_misses(cells: list[Cell], picks: dict[str, str], errors: dict[str, float]) -> list[dict[str, Any]]:
    """The cells where a checked policy's outcome is more than one SE below the best: what it proposed, what
    that gave after the check, and the recipe that did best (the report's list of where `auto` misses)."""
    missed = []
    for cell in cells:
        proposed = picks[cell.name]
        outcome = cell.outcome(proposed, checked=True)
        best = max(cell.accuracy, key=cell.accuracy.get)
        if cell.accuracy[best] - outcome > errors[cell.name] + 1e-12:
            missed.append(
                {
                    "cell": cell.name,
                    "proposed": proposed,
                    "outcome": outcome,
                    "best": best,
                    "best_accuracy": cell.accuracy[best],
                    "standard_error": errors[cell.name],
                }
            )
    return missed


def fine_tune_kept(run: dict[str, Any], probe: dict[str, Any], margin_se: float, figure: str = BEST_EPOCH) -> bool:
    """The validation check's verdict on one seed's fine-tune against the same seed's probe run."""
    margin = check_margin(margin_se, run.get("val_images", 0))
    return keep_fine_tuned(check_figure_of(run, figure), probe["val_accuracy"], margin)


def check_figure_of(run: dict[str, Any], figure: str) -> float:
    """A run's validation accuracy as a check comparing `figure` reads it: the best epoch's (`val_accuracy`,
    the epoch restored), or the last epoch's from its per-epoch record. A run that recorded only its best
    epoch gives that: the study's half-frozen 10-epoch runs, the recipe auto proposes, record every epoch;
    the other fine-tunes do not (a best epoch that was also the last reads the same either way)."""
    return check_figure(figure, run["val_accuracy"], (run.get("val_history") or [run["val_accuracy"]])[-1])


def cell_name(key: tuple) -> str:
    dataset, size, backbone = key
    return f"{dataset}/{size}/{backbone}"


def standard_error(records: list[dict[str, Any]], key: tuple, recipe: str) -> float:
    """One standard error of a recipe's mean test accuracy in a cell: the binomial error of the test split,
    or the seeds' spread when that is larger (seeds vary the split's sampling noise and the training)."""
    runs = [r for r in records if cell_id(r) == key and r["recipe"] == recipe]
    binomial = binomial_error(statistics.fmean(r["test_accuracy"] for r in runs), runs[0]["test_images"])
    seeds = statistics.stdev(r["test_accuracy"] for r in runs) / math.sqrt(len(runs)) if len(runs) > 1 else 0.0
    return max(binomial, seeds)


def binomial_error(accuracy: float, n: int) -> float:
    """One standard error of an accuracy measured on `n` test images (a perfect score is not certainty)."""
    p = min(max(accuracy, 0.5 / n), 1 - 0.5 / n)
    return math.sqrt(p * (1 - p) / n)


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
    checked: bool = False,
) -> dict[str, Any]:
    """How a policy's picks compare with each cell's best: share within one standard error, mean regret,
    and its CPU time as a share of running the whole grid of that cell. `checked`: the picks are proposals
    under `auto`'s validation check (its outcome's accuracy; the probe's run paid for too)."""
    judged = [_judge_cell(cell, pick[cell.name], errors, signal_seconds, checked) for cell in cells]
    within = [j["within"] for j in judged]
    regrets = [j["regret"] for j in judged]
    grid = sum(j["grid"] for j in judged)
    return {
        "cells": len(cells),
        "within_one_se": sum(within) / len(within) if within else None,
        "mean_regret": statistics.fmean(regrets) if regrets else None,
        "max_regret": max(regrets) if regrets else None,
        "cpu_share_of_grid": sum(j["spent"] for j in judged) / grid if judged and grid > 0 else None,
    }


def _judge_cell(
    cell: Cell, chosen: str, errors: dict[str, float], signal_seconds: dict[str, float], checked: bool
) -> dict[str, Any]:
    regret = max(cell.accuracy.values()) - cell.outcome(chosen, checked)
    cost = cell.checked_seconds(chosen) if checked else cell.seconds[chosen]
    return {
        "within": regret <= errors[cell.name] + 1e-12,
        "regret": regret,
        "spent": cost + signal_seconds.get(cell.name, 0.0),
        "grid": cell.grid_cost(),
    }


def dataset_bootstrap(
    cells: list[Cell],
    pick: dict[str, str],
    errors: dict[str, float],
    signal_seconds: dict[str, float],
    checked: bool = False,
    draws: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """How precisely the grid pins a policy's two figures: the data sets drawn again with replacement,
    each bringing all its cells (cells of one data set are not independent trials), and the 95% interval of
    the share within one SE and of the CPU share over the draws; with the share of draws meeting both targets."""
    import numpy as np

    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        by_dataset[cell.dataset].append(_judge_cell(cell, pick[cell.name], errors, signal_seconds, checked))
    if len(by_dataset) < 2:
        return {}
    sums = np.array(
        [
            [sum(j["within"] for j in js), len(js), sum(j["spent"] for j in js), sum(j["grid"] for j in js)]
            for js in by_dataset.values()
        ],
        dtype=float,
    )
    drawn = sums[np.random.default_rng(seed).integers(0, len(sums), size=(draws, len(sums)))].sum(axis=1)
    share, cpu = drawn[:, 0] / drawn[:, 1], drawn[:, 2] / drawn[:, 3]
    per_dataset = {
        name: {"cells": int(row[1]), "within_one_se": row[0] / row[1], "cpu_share_of_grid": row[2] / row[3]}
        for name, row in zip(by_dataset, sums, strict=True)
    }
    return {
        "per_dataset": dict(sorted(per_dataset.items())),
        "datasets": len(sums),
        "draws": draws,
        "within_one_se": [float(np.percentile(share, 2.5)), float(np.percentile(share, 97.5))],
        "cpu_share_of_grid": [float(np.percentile(cpu, 2.5)), float(np.percentile(cpu, 97.5))],
        "both_targets_met": float(np.mean((share >= TARGET_SHARE - 1e-12) & (cpu <= TARGET_CPU + 1e-12))),
    }


def compare_recipes(
    cells: list[Cell], errors: dict[str, float], recipe: str, reference: str, picks: dict[str, str]
) -> dict[str, Any]:
    """`recipe` against `reference` cell by cell: the mean test accuracy difference (and its range), the cells
    where it is within one standard error of the reference, where it is the cell's best recipe, where the
    policy `picks` proposed it, and its CPU time as a share of the reference's."""
    pairs = [c for c in cells if recipe in c.accuracy and reference in c.accuracy]
    if not pairs:
        return {"cells": 0}
    differences = [c.accuracy[recipe] - c.accuracy[reference] for c in pairs]
    return {
        "recipe": recipe,
        "reference": reference,
        "cells": len(pairs),
        "mean_difference": statistics.fmean(differences),
        "min_difference": min(differences),
        "max_difference": max(differences),
        "within_one_se": sum(-d <= errors[c.name] + 1e-12 for c, d in zip(pairs, differences, strict=True)),
        "best": sum(max(c.accuracy, key=c.accuracy.get) == recipe for c in pairs),
        "picked": sum(picks.get(c.name) == recipe for c in pairs),
        "cpu_ratio": sum(c.seconds[recipe] for c in pairs) / sum(c.seconds[reference] for c in pairs),
    }


REFERENCES = ("partial_half", "feature_extraction")  # what an experimental recipe is compared with


def compare_experiment(cells: list[Cell], errors: dict[str, float], recipe: str, grid: set[str]) -> dict[str, Any]:
    """A recipe run beside the grid, in the cells where it ran: against half frozen and against feature
    extraction (compare_recipes, no picks), and how often it is within one SE of, or above, the best of the
    `grid` recipes."""
    ran = [c for c in cells if recipe in c.accuracy]
    if not ran:
        return {"recipe": recipe, "cells": 0}
    best = {c.name: max(v for k, v in c.accuracy.items() if k in grid) for c in ran}
    return {
        "recipe": recipe,
        "cells": len(ran),
        "against": {ref: compare_recipes(ran, errors, recipe, ref, {}) for ref in REFERENCES},
        "within_one_se_of_best": sum(c.accuracy[recipe] >= best[c.name] - errors[c.name] - 1e-12 for c in ran),
        "above_best": sum(c.accuracy[recipe] > best[c.name] for c in ran),
    }


def cpu_per_wall(records: list[dict[str, Any]]) -> dict[str, float]:
    """Per recipe, the median of its runs' CPU seconds over wall seconds: how busy the run's threads were.
    Recipes run in different sittings may differ here; CPU shares compare recipes' CPU seconds as measured."""
    ratios: dict[str, list[float]] = defaultdict(list)
    for run in records:
        if run["wall_seconds"] > 0:
            ratios[run["recipe"]].append(run["cpu_seconds"] / run["wall_seconds"])
    return {recipe: statistics.median(values) for recipe, values in sorted(ratios.items())}


def cpu_of(run: dict[str, Any]) -> str:
    """The kind of CPU a run recorded (runs from before the study recorded it: one unnamed kind)."""
    return str(run.get("cpu", ""))


def grid_cpu(records: list[dict[str, Any]]) -> str:
    """The kind of CPU that measured most of the runs: the one every CPU share is counted on."""
    counts: dict[str, int] = defaultdict(int)
    for run in records:
        counts[cpu_of(run)] += 1
    return max(sorted(counts), key=counts.get)


def whole_seeds(records: list[dict[str, Any]], required: set[str]) -> list[dict[str, Any]]:
    """The runs of the seeds that every `required` recipe of their cell ran: a cell whose extra seeds
    stopped part way is judged on its whole seeds only, never on means over different seeds per recipe."""
    seeds: dict[tuple, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for run in records:
        seeds[cell_id(run)][run["recipe"]].add(run["seed"])
    whole = {
        cell: set.intersection(*(ran for recipe, ran in by_recipe.items() if recipe in required))
        for cell, by_recipe in seeds.items()
        if required & set(by_recipe)
    }
    return [run for run in records if cell_id(run) not in whole or run["seed"] in whole[cell_id(run)]]


def costed_on(records: list[dict[str, Any]], cpu: str) -> list[dict[str, Any]]:
    """The runs with every CPU cost as `cpu` measured it. CPU seconds differ between kinds of CPU by more
    than the shares the study compares, so they are never mixed: a run from another kind keeps its accuracy
    and is costed at its cell and recipe's mean CPU seconds per epoch on `cpu`, times the epochs it ran (its
    own figure kept as `measured_cpu_seconds`). A run that replaced its recipe's runs (`reference_run`: the
    recipe it replaced, run beside it on its own machine) is costed at that recipe's mean on `cpu`, scaled by
    the ratio of the two runs' CPU seconds measured together. A run in a cell that `cpu` never ran is costed
    at its own seconds times `machine_ratios`."""
    if all(cpu_of(run) == cpu for run in records):
        return records
    per_epoch: dict[tuple, list[float]] = defaultdict(list)
    for run in records:
        if cpu_of(run) == cpu:
            per_epoch[cell_id(run), run["recipe"]].append(run["cpu_seconds"] / max(1, run["epochs_run"]))
    on_cpu = cells_ran_on(records, cpu)
    ratios = machine_ratios(records, cpu)
    costed = []
    for run in records:
        if cpu_of(run) != cpu:
            pair = run.get("reference_run") or {"recipe": run["recipe"], "epochs_run": run["epochs_run"]}
            reference = per_epoch.get((cell_id(run), pair["recipe"]))
            ratio = ratios.get((cpu_of(run), run["backbone"]))
            if reference:
                ratio = run["cpu_seconds"] / pair["cpu_seconds"] if "cpu_seconds" in pair else 1.0
                cost = statistics.fmean(reference) * max(1, pair["epochs_run"]) * ratio
            elif cell_id(run) not in on_cpu and ratio is not None:  # a cell only another kind of CPU ran
                cost = run["cpu_seconds"] * ratio
            else:
                raise ValueError(
                    f"{cell_name(cell_id(run))} {pair['recipe']}: no run on {cpu} to cost {run['recipe']} by"
                )
            run = {**run, "cpu_seconds": cost, "measured_cpu_seconds": run["cpu_seconds"]}
        costed.append(run)
    return costed


def cells_ran_on(records: list[dict[str, Any]], cpu: str) -> set[tuple]:
    """The cells with at least one run on the kind of CPU `cpu`."""
    return {cell_id(run) for run in records if cpu_of(run) == cpu}


def machine_ratios(records: list[dict[str, Any]], cpu: str) -> dict[tuple[str, str], float]:
    """Per (other kind of CPU, backbone), what one of its CPU seconds costs on `cpu`: the median, over the
    cells and recipes both kinds ran, of the ratio of their mean seconds per epoch. It costs the cells that
    only another kind ran (a data set that joined from another machine) as a whole, so every share inside
    such a cell stays as measured. Runs that read cached features or ran beside another are left out: their
    seconds measure another amount of work."""
    per_epoch: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in records:
        if not run.get("features_from_cache") and "reference_run" not in run:
            per_epoch[cell_id(run), run["recipe"]][cpu_of(run)].append(run["cpu_seconds"] / max(1, run["epochs_run"]))
    ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (cell, _), by_cpu in per_epoch.items():
        for other, seconds in by_cpu.items():
            if cpu in by_cpu and other != cpu:
                ratios[other, cell[2]].append(statistics.fmean(by_cpu[cpu]) / statistics.fmean(seconds))
    return {key: statistics.median(values) for key, values in ratios.items()}


def signals_costed_on(
    signals: dict[str, dict[str, Any]], records: list[dict[str, Any]], cpu: str
) -> dict[str, dict[str, Any]]:
    """The cells' signals with their CPU seconds as `cpu` would have measured them: a cell measured on
    another kind of CPU (its signals record which) is costed by `machine_ratios`, its own figure kept as
    `measured_seconds`. Idempotent: the costed figure is always made from the measured one."""
    ratios: dict[tuple[str, str], float] | None = None
    costed = {}
    for name, measured in signals.items():
        if measured.get("cpu", cpu) != cpu:
            ratios = machine_ratios(records, cpu) if ratios is None else ratios
            key = (measured["cpu"], name.rsplit("/", 1)[-1])
            if key not in ratios:
                raise ValueError(f"{name}: its signals were measured on {key[0]}, and no cell both kinds ran costs it")
            own = measured.get("measured_seconds", measured["seconds"])
            measured = {**measured, "seconds": own * ratios[key], "measured_seconds": own}
        costed[name] = measured
    return costed


def runs_by_cell_and_recipe(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        runs[cell_name(cell_id(record)), record["recipe"]].append(record)
    return runs


def random_pass_cpu(measured: dict[str, Any]) -> float:
    """CPU seconds of a cell's random-init forward pass: its share of the signals' wall time, applied to
    their CPU time (the measurement records CPU only as a whole). Where a cheaper stand-in replaced the pass
    (bench/signal_variants.py), its own measured CPU."""
    if "gain_cpu_seconds" in measured:
        return measured["gain_cpu_seconds"]
    wall = measured.get("wall_seconds") or 0.0
    random_wall = measured.get("timings", {}).get("random_features", 0.0)
    return measured.get("seconds", 0.0) * random_wall / wall if wall else 0.0


def auto_signal_seconds(
    signals: dict[str, dict[str, Any]], cells: list[Cell], rules: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """Per cell, the CPU `auto` spends measuring signals under its data set's rule: everything the study
    measured, less the random-init pass where that rule's path for the cell does not split on
    `pretrained_gain` (auto then skips the pass: transferline/model/advice_signals.py). A cell without a
    rule pays for everything."""
    seconds = {}
    for cell in cells:
        measured = signals.get(cell.name, {})
        rule = rules.get(cell.dataset)
        skipped = rule is not None and not reads_gain(rule, cell.signals)
        seconds[cell.name] = measured.get("seconds", 0.0) - (random_pass_cpu(measured) if skipped else 0.0)
    return seconds


def auto_cpu_parts(
    records: list[dict[str, Any]],
    signals: dict[str, dict[str, Any]],
    cells: list[Cell],
    picks: dict[str, str],
    rules: dict[str, dict[str, Any]],
) -> dict[str, float]:
    """Where `auto`'s CPU goes on `cells` (seconds, per-cell means over seeds as its CPU share counts them),
    beside the grid's: measuring the signals, of which the random-init forward pass that the pretrained gain
    needs (its share of the measurement's wall time; paid only where the rule reads that signal, the rest
    counted as skipped), and the fine-tunes the validation check then threw away. Each paid part is the
    most that a cheaper version of it could save."""
    runs = runs_by_cell_and_recipe(records)
    charged = auto_signal_seconds(signals, cells, rules)
    parts = {
        "grid": 0.0,
        "spent": 0.0,
        "signals": 0.0,
        "random_features": 0.0,
        "random_features_skipped": 0.0,
        "rejected_fine_tunes": 0.0,
    }
    for cell in cells:
        measured = signals.get(cell.name, {})
        random_pass = random_pass_cpu(measured)
        skipped = measured.get("seconds", 0.0) - charged[cell.name]
        parts["grid"] += cell.grid_cost()
        parts["signals"] += charged[cell.name]
        parts["random_features"] += random_pass - skipped
        parts["random_features_skipped"] += skipped
        pick = picks[cell.name]
        parts["spent"] += cell.checked_seconds(pick) + charged[cell.name]
        if pick == FEATURE_EXTRACTION:
            continue
        margin_se = rules[cell.dataset].get("validation_margin_se", 0.0)
        figure = validation_figure_of(rules[cell.dataset])
        probes = {r["seed"]: r for r in runs[cell.name, FEATURE_EXTRACTION]}
        proposed = runs[cell.name, pick]
        for run in proposed:
            if not fine_tune_kept(run, probes[run["seed"]], margin_se, figure):
                parts["rejected_fine_tunes"] += run["cpu_seconds"] / len(proposed)
    return parts


def expected_range_coverage(
    cells: list[Cell], picks: dict[str, str], rules: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """How well the expected accuracy range that `auto`'s advice states before training holds the test
    accuracy auto then gets, on data sets its rule never saw: per cell, its held-out fold's proposal (the
    probe's accuracy plus the lowest to the highest gain over it among the fitting cells behind it, its nearest
    cells or its tree's leaf, clipped to [0, 1], as models/advice.json gives it) against its outcome after the check.
    Its width says how much a pick is worth forecasting; its coverage whether the forecast is honest."""
    inside = below = above = 0
    widths = []
    for cell in cells:
        low_gain, high_gain = propose(rules[cell.dataset], cell.signals).gain_over_probe
        probe = cell.signals.probe_accuracy
        low, high = (min(1.0, max(0.0, probe + gain)) for gain in (low_gain, high_gain))
        outcome = cell.outcome(picks[cell.name], checked=True)
        below += outcome < low - 1e-12
        above += outcome > high + 1e-12
        inside += low - 1e-12 <= outcome <= high + 1e-12
        widths.append(high - low)
    return {
        "cells": len(cells),
        "inside": inside,
        "below": below,
        "above": above,
        "median_width": statistics.median(widths) if widths else None,
        "narrowest": min(widths, default=None),
        "widest": max(widths, default=None),
    }


def early_stops(
    records: list[dict[str, Any]],
    signals: dict[str, dict[str, Any]],
    cells: list[Cell],
    picks: dict[str, str],
    rules: dict[str, dict[str, Any]],
    errors: dict[str, float],
    after_epochs: tuple[int, ...] = (3, 5, 7),
    gaps_se: tuple[float, ...] = (0.0, 1.0, 2.0),
) -> list[dict[str, Any]]:
    """`auto` had it stopped a proposed fine-tune early: from epoch `after` on, once the fine-tune's best
    validation accuracy so far trails the probe's by more than `gap_se` standard errors (`check_margin`),
    the probe's head ships and the remaining epochs are not paid for (CPU scaled from the run's per-epoch
    wall seconds). Replayed from the runs' own per-epoch records; fine-tunes without them are left as run.
    Each row: within one SE, CPU share, and how many fine-tunes the end-of-training check kept were stopped."""
    runs = runs_by_cell_and_recipe(records)
    signal_seconds = auto_signal_seconds(signals, cells, rules)
    rows = []
    for after in after_epochs:
        for gap_se in gaps_se:
            within, spent, grid, lost = [], 0.0, 0.0, 0
            for cell in cells:
                pick = picks[cell.name]
                margin_se = rules[cell.dataset].get("validation_margin_se", 0.0)
                figure = validation_figure_of(rules[cell.dataset])
                accuracy, seconds = cell.outcome(pick, checked=True), cell.checked_seconds(pick)
                if pick != FEATURE_EXTRACTION:
                    probes = {r["seed"]: r for r in runs[cell.name, FEATURE_EXTRACTION]}
                    outcomes = [
                        _stopped_outcome(run, probes[run["seed"]], after, gap_se, margin_se, figure)
                        for run in runs[cell.name, pick]
                    ]
                    accuracy = statistics.fmean(o[0] for o in outcomes)
                    seconds = statistics.fmean(o[1] for o in outcomes)
                    lost += sum(o[2] for o in outcomes)
                within.append(max(cell.accuracy.values()) - accuracy <= errors[cell.name] + 1e-12)
                spent += seconds + signal_seconds[cell.name]
                grid += cell.grid_cost()
            rows.append(
                {
                    "after_epoch": after,
                    "gap_se": gap_se,
                    "within_one_se": sum(within) / len(within) if within else None,
                    "cpu_share_of_grid": spent / grid if grid else None,
                    "kept_fine_tunes_stopped": lost,
                }
            )
    return rows


def _stopped_outcome(
    run: dict[str, Any], probe: dict[str, Any], after: int, gap_se: float, margin_se: float, figure: str
) -> tuple[float, float, bool]:
    """(test accuracy, CPU seconds, whether a fine-tune the final check kept was stopped) of one seed."""
    kept = fine_tune_kept(run, probe, margin_se, figure)
    finished = (
        run["test_accuracy"] if kept else probe["test_accuracy"],
        run["cpu_seconds"] + probe["cpu_seconds"],
        False,
    )
    history, epoch_seconds = run.get("val_history"), run.get("epoch_seconds")
    if not history or not epoch_seconds:
        return finished
    floor = probe["val_accuracy"] - check_margin(gap_se, run["val_images"])
    for epoch in range(after, len(history)):  # a stop after the last epoch saves nothing
        if max(history[:epoch]) < floor:
            share = sum(epoch_seconds[:epoch]) / sum(epoch_seconds)
            return probe["test_accuracy"], run["cpu_seconds"] * share + probe["cpu_seconds"], kept
    return finished


def cheapest_within_one_se(cells: list[Cell], errors: dict[str, float]) -> dict[str, str]:
    """Per cell, the cheapest recipe within one standard error of its best, picked knowing the results:
    the least CPU any policy can spend and still be within one SE in every cell (a bound, not a policy)."""
    picks = {}
    for cell in cells:
        best = max(cell.accuracy.values())
        near = [r for r, a in cell.accuracy.items() if best - a <= errors[cell.name] + 1e-12]
        picks[cell.name] = min(near, key=cell.seconds.__getitem__)
    return picks


def cheapest_at_share(cells: list[Cell], errors: dict[str, float], share: float) -> dict[str, str]:
    """The cheapest picks, chosen knowing the results, that are within one standard error of the best in at
    least `share` of the cells: the hindsight bound above, except that the cells whose within-SE recipe
    saves most over the cheapest recipe of all give that saving up. If this costs more than a CPU target,
    no policy meets that target at that share; if less, the target is open to a rule that finds those cells."""
    picks = cheapest_within_one_se(cells, errors)
    cheapest = {c.name: min(c.accuracy, key=c.seconds.__getitem__) for c in cells}
    savings = sorted(cells, key=lambda c: c.seconds[picks[c.name]] - c.seconds[cheapest[c.name]], reverse=True)
    allowed_misses = len(cells) - math.ceil(share * len(cells) - 1e-9)
    for cell in savings[:allowed_misses]:
        picks[cell.name] = cheapest[cell.name]
    return picks


def backbone_of(cell: Cell) -> str:
    return cell.name.rsplit("/", 1)[-1]


def leave_one_dataset_out(
    cells: list[Cell],
    recipes: dict[str, dict[str, Any]],
    fit: Callable[[list[Cell]], dict[str, Any]] | None = None,
    processes: int = 1,
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """For each data set: the rule fitted on the others (by `fit`, default a plain regret tree, `fit_rule`), and its
    pick for each of this data set's cells. `processes` > 1 fits the folds side by side (each fit is
    independent and deterministic, so the answer is the same); keep 1 inside a fit that is itself a fold."""
    fit = fit or (lambda train_cells: fit_rule(train_cells, recipes))
    held_out = [d for d in sorted({c.dataset for c in cells}) if any(c.dataset != d for c in cells)]
    folds = [[c for c in cells if c.dataset != dataset] for dataset in held_out]
    fitted = _in_processes(fit, folds, processes) if processes > 1 and len(folds) > 1 else [fit(f) for f in folds]
    picks: dict[str, str] = {}
    rules: dict[str, dict[str, Any]] = {}
    for dataset, rule in zip(held_out, fitted, strict=True):
        rules[dataset] = rule
        for cell in cells:
            if cell.dataset == dataset:
                picks[cell.name] = propose(rule, cell.signals).recipe
    return picks, rules


_FOLD_FIT: Callable[[list[Cell]], dict[str, Any]] | None = None  # the fit forked workers inherit


def usable_cores() -> int:
    """Processes for a top-level leave-one-out: one per core this process may run on."""
    import os

    return len(os.sched_getaffinity(0))


def _fit_fold(train_cells: list[Cell]) -> dict[str, Any]:
    assert _FOLD_FIT is not None
    return _FOLD_FIT(train_cells)


def _in_processes(
    fit: Callable[[list[Cell]], dict[str, Any]], folds: list[list[Cell]], processes: int
) -> list[dict[str, Any]]:
    """fit(fold) for every fold in forked processes: they inherit `fit` itself (a closure need not pickle)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _FOLD_FIT
    _FOLD_FIT = fit
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(processes, len(folds)), mp_context=context) as pool:
            return list(pool.map(_fit_fold, folds))
    finally:
        _FOLD_FIT = None


# (tree depth, smallest leaf) the auto rule's fit chooses between; simpler first, so a tie keeps the simpler
FIT_METHODS: tuple[tuple[int, int], ...] = ((1, 2), (2, 2), (2, 3), (2, 4))
TARGET_SHARE, TARGET_CPU = 0.8, 0.15  # auto's targets: within one SE in 80% of cells, at 15% of the grid's CPU
WEIGHT_RANGE = (1e-3, 1e3)  # the CPU penalty's weight is searched on a log scale between these
BISECTION_STEPS = 16  # to a ratio of about 1.0002 between the last two weights tried


def cpu_share(cells: list[Cell], rule: dict[str, Any]) -> float:
    """What a rule's proposals cost under the validation check, as a share of these cells' whole grid."""
    spent = sum(c.checked_seconds(walk(rule["tree"], c.signals)[0]["recipe"]) for c in cells)
    return spent / sum(c.grid_cost() for c in cells)


def fit_within_cpu(
    cells: list[Cell],
    recipes: dict[str, dict[str, Any]],
    depth: int,
    min_leaf: int,
    accuracy_loss: Loss,
    cpu_target: float,
) -> tuple[dict[str, Any], float]:
    """The rule minimising `accuracy_loss` plus a CPU penalty (a weight times a proposal's CPU seconds as a
    share of these cells' grid), with the smallest weight, found by bisection, whose rule spends at most
    `cpu_target` of the grid on these cells; and that weight (0 where the loss alone already does).
    Fitted on training cells only, so a held-out data set's CPU share is a prediction, not a constraint."""
    grid = sum(c.grid_cost() for c in cells)

    def fitted(weight: float) -> dict[str, Any]:
        def loss(cell: Cell, recipe: str) -> float:
            return accuracy_loss(cell, recipe) + weight * cell.checked_seconds(recipe) / grid

        return fit_rule(cells, recipes, depth, min_leaf, loss, checked=True)

    rule = fitted(0.0)
    if cpu_share(cells, rule) <= cpu_target:
        return rule, 0.0
    low, high = (math.log(w) for w in WEIGHT_RANGE)
    rule, weight = fitted(WEIGHT_RANGE[1]), WEIGHT_RANGE[1]
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        candidate = fitted(math.exp(middle))
        if cpu_share(cells, candidate) <= cpu_target:
            high, rule, weight = middle, candidate, math.exp(middle)
        else:
            low = middle
    return rule, weight


# What the tree method's leaves minimise, and the other losses bench/rule_variants.py compares: the regret
# after the validation check; only the part of it beyond the cell's one SE, the slack the study's target
# grants (a pick within one SE counts as a hit however far inside it lies, and a near miss costs less than a
# far one); or a count of the misses beyond one SE, the regret breaking ties
REGRET, REGRET_BEYOND_ONE_SE, MISSES_BEYOND_ONE_SE = "regret", "regret beyond one SE", "misses beyond one SE"
AUTO_LOSS = REGRET_BEYOND_ONE_SE


def accuracy_loss(kind: str, errors: dict[str, float]) -> Loss:
    """A recipe's accuracy loss in a cell after the validation check, of the kind named, with `errors` each
    cell's one SE."""
    if kind not in (REGRET, REGRET_BEYOND_ONE_SE, MISSES_BEYOND_ONE_SE):
        raise ValueError(f"unknown accuracy loss {kind!r}")

    def loss(cell: Cell, recipe: str) -> float:
        regret = cell.checked_regret(recipe)
        beyond = regret - errors[cell.name]
        if kind == REGRET:
            return regret
        if kind == MISSES_BEYOND_ONE_SE:
            return float(beyond > 1e-12) + 0.01 * regret
        return max(0.0, beyond)

    return loss


def fit_checked_rule(
    cells: list[Cell],
    recipes: dict[str, dict[str, Any]],
    depth: int,
    min_leaf: int,
    errors: dict[str, float],
    margin: float = 0.0,
    cpu_target: float | None = None,
    loss: str = AUTO_LOSS,
) -> dict[str, Any]:
    """A rule fitted to the accuracy `loss` after a validation check with `margin` (`errors`: each cell's
    one SE), and marked so `auto` runs it. With `cpu_target`, under the CPU penalty that meets it on these
    cells (`fit_within_cpu`).

    Memoised on the cells' contents: nested leave-one-out fits every pair of held-out data sets twice
    (A then B, B then A), and the penalty's bisection makes each fit dear."""
    key = (
        _fingerprint(cells, margin),
        tuple(errors[c.name] for c in cells),
        json.dumps(recipes, sort_keys=True),
        depth,
        min_leaf,
        margin,
        cpu_target,
        loss,
    )
    if key not in _FITTED:
        if len(_FITTED) >= _FITTED_MAX:
            _FITTED.clear()
        _FITTED[key] = _fit_checked_rule(cells, recipes, depth, min_leaf, margin, cpu_target, errors, loss)
    return copy.deepcopy(_FITTED[key])


_FITTED: dict[tuple, dict[str, Any]] = {}
_FITTED_MAX = 4096


def _fingerprint(cells: list[Cell], margin: float) -> tuple:
    """Everything of the cells a checked fit reads, hashable."""
    return tuple(
        (
            c.name,
            c.dataset,
            tuple((s, c.signals.value(s)) for s in c.signals.names()),
            tuple(sorted(c.accuracy.items())),
            tuple(sorted(c.seconds.items())),
            c.grid_seconds,
            c.validation_figure,
            tuple(sorted(c.at_margin(margin).checked.items())),
        )
        for c in cells
    )


def _fit_checked_rule(
    cells: list[Cell],
    recipes: dict[str, dict[str, Any]],
    depth: int,
    min_leaf: int,
    margin: float,
    cpu_target: float | None,
    errors: dict[str, float],
    loss: str,
) -> dict[str, Any]:
    at_margin = [c.at_margin(margin) for c in cells]
    accuracy = accuracy_loss(loss, errors)
    if cpu_target is None:
        rule, weight = fit_rule(at_margin, recipes, depth, min_leaf, accuracy, checked=True), 0.0
    else:
        rule, weight = fit_within_cpu(at_margin, recipes, depth, min_leaf, accuracy, cpu_target)
    fit = {
        "loss": loss,
        "depth": depth,
        "min_leaf": min_leaf,
        "margin_se": margin,
        "cpu_target": cpu_target,
        "cpu_weight": weight,
    }
    figures = {c.validation_figure for c in cells} or {BEST_EPOCH}
    if len(figures) > 1:
        raise ValueError(f"cells checked with different validation figures: {sorted(figures)}")
    checked = {"validation_check": True, "validation_margin_se": margin, "validation_figure": figures.pop()}
    return {**rule, **checked, "fit": fit}


def at_rules_margin(cells: list[Cell], rules: dict[str, dict[str, Any]]) -> list[Cell]:
    """Each cell as its data set's rule's validation check sees it (margin 0 for a rule without one): the
    cells to judge leave-one-data-set-out picks on."""
    return [c.at_margin(rules[c.dataset].get("validation_margin_se", 0.0)) if c.dataset in rules else c for c in cells]


def choose_fit_method(
    cells: list[Cell],
    recipes: dict[str, dict[str, Any]],
    errors: dict[str, float],
    margins: tuple[float, ...] = VALIDATION_MARGINS,
    cpu_target: float | None = TARGET_CPU,
    processes: int = 1,
    loss: str = AUTO_LOSS,
) -> tuple[tuple[float, int, int], dict[str, dict[str, Any]]]:
    """The validation margin, depth and smallest leaf whose rules, fitted leaving one of these cells' data
    sets out at a time, are within one SE of the best in most of the held-out cells (then the lower mean
    regret, then the smaller margin and simpler tree): chosen on these cells only, so a held-out data set
    judges the choice too. With fewer than two data sets nothing can be held out, and the simplest method
    that splits at all, no margin and (2, 2), is taken."""
    if len({c.dataset for c in cells}) < 2:
        return (0.0, 2, 2), {}
    verdicts = {}
    methods = [(margin, depth, leaf) for margin in margins for depth, leaf in FIT_METHODS]
    for margin, depth, min_leaf in methods:
        picks, rules = leave_one_dataset_out(
            cells,
            recipes,
            lambda train, d=depth, m=min_leaf, v=margin: fit_checked_rule(
                train, recipes, d, m, errors, v, cpu_target, loss
            ),
            processes,
        )
        verdicts[margin, depth, min_leaf] = judge_policy(at_rules_margin(cells, rules), picks, errors, {}, checked=True)
    best = min(methods, key=lambda m: (-verdicts[m]["within_one_se"], verdicts[m]["mean_regret"]))
    return best, {f"{margin}/{depth}/{leaf}": v for (margin, depth, leaf), v in verdicts.items()}


# The CPU aims the tree method's fit chooses among. Its penalty spends at most the aim on the cells it is fitted
# to, and a data set it has not seen then costs more than those did (its leaves fit them): so the aim that
# meets the CPU target held out is found by holding data sets out, not assumed to be the target itself.
CPU_AIMS: tuple[float, ...] = (0.12, 0.13, 0.14, 0.15, 0.16, 0.17)


def choose_cpu_aim(
    cells: list[Cell],
    recipes: dict[str, dict[str, Any]],
    errors: dict[str, float],
    method: tuple[float, int, int],
    signals: dict[str, dict[str, Any]],
    cpu_target: float,
    loss: str = AUTO_LOSS,
    aims: tuple[float, ...] = CPU_AIMS,
    processes: int = 1,
) -> tuple[float, dict[float, dict[str, Any]]]:
    """The CPU aim whose rules (the fit `method`: margin, depth, leaf), fitted leaving one of these cells'
    data sets out at a time, are within one SE in most held-out cells while spending at most `cpu_target`
    of their grid, the signals auto pays for counted (`signals`); then the lower mean regret, then the
    lower aim. None within the target: the lowest aim. Chosen on these cells only, like the method."""
    margin, depth, min_leaf = method
    verdicts = {}
    for aim in aims:
        picks, rules = leave_one_dataset_out(
            cells,
            recipes,
            lambda train, a=aim: fit_checked_rule(train, recipes, depth, min_leaf, errors, margin, a, loss),
            processes,
        )
        judged = at_rules_margin([c for c in cells if c.name in picks], rules)
        verdicts[aim] = judge_policy(judged, picks, errors, auto_signal_seconds(signals, judged, rules), checked=True)
    within = [a for a in aims if (verdicts[a]["cpu_share_of_grid"] or 0.0) <= cpu_target]
    if not within:
        return min(aims), verdicts
    return min(within, key=lambda a: (-verdicts[a]["within_one_se"], verdicts[a]["mean_regret"] or 0.0, a)), verdicts


def fit_tree_rule(
    cells: list[Cell],
    recipes: dict[str, dict[str, Any]],
    errors: dict[str, float],
    margins: tuple[float, ...] = VALIDATION_MARGINS,
    cpu_target: float | None = TARGET_CPU,
    processes: int = 1,
    loss: str = AUTO_LOSS,
    *,
    signals: dict[str, dict[str, Any]] | None = None,
    aims: tuple[float, ...] | None = CPU_AIMS,
) -> dict[str, Any]:
    """The tree method, auto's way to fit its rule before the nearest cells (bench/nearest_fit.py): minimising the
    `loss` (the regret beyond each cell's one SE, `errors`) under a CPU penalty, choose the validation margin (among
    `margins`), depth and smallest leaf by leaving data sets out (`choose_fit_method`, each fit aimed at
    `cpu_target`), then the penalty's aim (among `aims`, `choose_cpu_aim`: held out, within `cpu_target`, the
    `signals` auto pays for counted), then fit with them on every cell given. `aims=None`, or fewer than two data
    sets (nothing to hold out), aims at `cpu_target` itself. Judged leaving one data set out, this is nested: the
    held-out data set takes part in none of the choices nor the fit. `processes`: see leave_one_dataset_out (1 when
    this fit is itself one fold of a leave-one-out)."""
    method, verdicts = choose_fit_method(cells, recipes, errors, margins, cpu_target, processes, loss)
    margin, depth, min_leaf = method
    aim, aim_verdicts = cpu_target, {}
    if cpu_target is not None and aims and len({c.dataset for c in cells}) >= 2:
        if signals is None:
            raise ValueError("choosing the CPU aim needs the cells' signals: what auto pays for them counts")
        aim, aim_verdicts = choose_cpu_aim(cells, recipes, errors, method, signals, cpu_target, loss, aims, processes)
    rule = fit_checked_rule(cells, recipes, depth, min_leaf, errors, margin, aim, loss)
    rule["fit"]["chosen_from"] = {
        name: {k: v[k] for k in ("within_one_se", "mean_regret")} for name, v in verdicts.items()
    }
    if aim_verdicts:
        rule["fit"]["held_out_cpu_target"] = cpu_target
        rule["fit"]["aims"] = {
            str(a): {k: v[k] for k in ("within_one_se", "mean_regret", "cpu_share_of_grid")}
            for a, v in aim_verdicts.items()
        }
    return rule


# How far from one seed's best a replicate policy may pick a cheaper recipe, in standard errors of that
# seed's test split: 0 is the recipe best on the seed (ties go to the cheaper)
REPLICATE_TOLERANCES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)


def replicate_frontier(
    records: list[dict[str, Any]],
    cells: list[Cell],
    errors: dict[str, float],
    grid: set[str],
    tolerances: tuple[float, ...] = REPLICATE_TOLERANCES,
    auto: tuple[dict[str, str], dict[str, dict[str, Any]], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """What a policy that knew a whole replicate of the grid could do, judged on the other replicates.

    In each cell with three or more seeds of every recipe, each seed in turn is the replicate: its results
    pick the cheapest recipe within `tolerance` standard errors (the binomial error of its test split) of
    its own best. The pick is judged like every policy here, on the other seeds: within one SE of the best
    of their means, and its CPU (its mean over them) a share of the grid's recipes' (`grid`) over them.
    Tolerance 0, the recipe best on one seed, measures how repeatable "the best recipe" is: the noise in
    the target itself. A replicate is everything a cell's training could tell a policy short of running the
    grid again, so a target pair that no tolerance meets here is beyond what signals can be shown to reach.
    `auto` (its picks, its held-out folds' rules, its signal seconds per cell) is judged on the same trials:
    its proposal under its fold's check, per seed of the other seeds, plus the probe's run and its signals."""
    runs = runs_by_cell_and_recipe(records)

    def mean_over(by_seed: dict[int, dict[str, Any]], seeds: set[int], key: str) -> float:
        return statistics.fmean(by_seed[s][key] for s in seeds)

    # per trial: the cell, the replicate's seed, the other seeds, recipe -> seed -> run, and on the other
    # seeds the best mean accuracy and the grid's CPU (what every pick of the trial is judged against)
    trials: list[tuple[Cell, int, set[int], dict[str, dict[int, dict[str, Any]]], float, float]] = []
    for cell in cells:
        by_recipe = {r: {x["seed"]: x for x in runs[cell.name, r]} for r in cell.accuracy}
        seeds = set.intersection(*(set(by_seed) for by_seed in by_recipe.values()))
        if len(seeds) < 3:
            continue
        for seed in sorted(seeds):
            others = seeds - {seed}
            best = max(mean_over(by_seed, others, "test_accuracy") for by_seed in by_recipe.values())
            cost = sum(mean_over(by_seed, others, "cpu_seconds") for r, by_seed in by_recipe.items() if r in grid)
            trials.append((cell, seed, others, by_recipe, best, cost))

    def judged(outcomes: list[tuple[bool, float, float]]) -> dict[str, Any]:
        spent, grid_cost = sum(o[1] for o in outcomes), sum(o[2] for o in outcomes)
        return {
            "within_one_se": sum(o[0] for o in outcomes) / len(outcomes) if outcomes else None,
            "cpu_share_of_grid": spent / grid_cost if grid_cost > 0 else None,
        }

    rows = []
    for tolerance in tolerances:
        outcomes = []
        for cell, seed, others, by_recipe, best, grid_cost in trials:
            own = {r: by_seed[seed]["test_accuracy"] for r, by_seed in by_recipe.items()}
            top = max(own.values())
            error = binomial_error(top, by_recipe[max(own, key=own.get)][seed]["test_images"])
            near = [r for r, a in own.items() if top - a <= tolerance * error + 1e-12]
            pick = min(near, key=lambda r: by_recipe[r][seed]["cpu_seconds"])
            accuracy = mean_over(by_recipe[pick], others, "test_accuracy")
            spent = mean_over(by_recipe[pick], others, "cpu_seconds")
            outcomes.append((best - accuracy <= errors[cell.name] + 1e-12, spent, grid_cost))
        rows.append({"tolerance_se": tolerance, **judged(outcomes)})
    result: dict[str, Any] = {
        "cells": len({t[0].name for t in trials}),
        "trials": len(trials),
        "within_one_se": rows[0]["within_one_se"] if rows and rows[0]["tolerance_se"] == 0 else None,
        "frontier": rows,
    }
    if auto is not None:
        picks, rules, signal_seconds = auto
        outcomes = []
        for cell, _, others, by_recipe, best, grid_cost in trials:
            rule = rules[cell.dataset]
            pick = picks[cell.name]
            kept = {r: [by_seed[s] for s in others] for r, by_seed in by_recipe.items()}
            checked = checked_accuracy(kept, rule.get("validation_margin_se", 0.0), validation_figure_of(rule))
            spent = mean_over(by_recipe[pick], others, "cpu_seconds") + signal_seconds.get(cell.name, 0.0)
            if pick != FEATURE_EXTRACTION:
                spent += mean_over(by_recipe[FEATURE_EXTRACTION], others, "cpu_seconds")
            outcomes.append((best - checked[pick] <= errors[cell.name] + 1e-12, spent, grid_cost))
        result["auto"] = judged(outcomes)
    return result


FIT_CHOICES = ("margin_se", "depth", "min_leaf", "cpu_target", "cpu_weight")  # what a fold's fit chose, for reports


def held_out_verdict(
    judged: list[Cell], picks: dict[str, str], errors: dict[str, float], signal_seconds: dict[str, float]
) -> dict[str, Any]:
    """Held-out picks judged as the study judges auto (under the check), with the count of cells within one
    SE and the cells missed."""
    verdict = judge_policy(judged, picks, errors, signal_seconds, checked=True)
    return {
        **verdict,
        "cells_within_one_se": round(verdict["within_one_se"] * verdict["cells"]),
        "misses": [m["cell"] for m in policy_misses(judged, picks, errors)],
    }


def meets_targets(verdict: dict[str, Any]) -> bool:
    """Whether a verdict (a policy's share within one SE and its CPU share of the grid) meets both of auto's
    targets; the tolerance keeps a share summed to exactly a target from missing it by a rounding error."""
    return verdict["within_one_se"] >= TARGET_SHARE - 1e-12 and verdict["cpu_share_of_grid"] <= TARGET_CPU + 1e-12
