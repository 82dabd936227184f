"""Fitting auto's nearest-cells policy (transferline/model/nearest_cells.py) on the study's cells.

A policy's settings (how many cells it pools, k; the CPU penalty's weight; the validation check's margin)
are chosen by leaving data sets out within the cells it is fitted on: the most held-out cells within one
SE among the settings that spend at most 15% of the held-out grid, the signals' CPU counted (the cheapest
setting if none does), then the lower mean regret, simpler first on a tie. Judged leaving one data set
out, this is nested: the held-out data set takes part in none of the choices. The fitted rule then carries
every training cell's signals and per-recipe losses as data (`fit_nearest_rule`).

The same machinery, with another picker, judges other policy families (bench/auto_families.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.transfer_analysis import AUTO_LOSS, TARGET_CPU, VALIDATION_MARGINS, accuracy_loss, random_pass_cpu
from transferline.model.advisor import BEST_EPOCH, Cell
from transferline.model.nearest_cells import NEAREST_CELLS, neighbour_picks, signal_vector

SIZE_AND_PROBE = ("images_per_class", "probe_accuracy")  # what the committed policy reads
NEIGHBOUR_COUNTS: tuple[float, ...] = (3, 5, 8, 12, 20)  # the k a fit chooses among
CPU_WEIGHTS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)


@dataclass(frozen=True)
class Table:
    """The cells at one validation margin, as arrays over (cell, recipe) in `recipes` order."""

    recipes: tuple[str, ...]
    names: tuple[str, ...]  # each cell's name
    datasets: np.ndarray  # (cells,) each cell's data set
    features: np.ndarray  # (cells, signals)
    loss: np.ndarray  # (cells, recipes) what a policy minimises: by default the regret beyond one SE
    regret: np.ndarray  # (cells, recipes) regret after the check
    gain: np.ndarray  # (cells, recipes) accuracy after the check less the probe's
    error: np.ndarray  # (cells,) each cell's one SE
    seconds: np.ndarray  # (cells, recipes) CPU of proposing the recipe under the check
    grid: np.ndarray  # (cells,) CPU of the cell's grid
    signal_seconds: np.ndarray  # (cells,) CPU of the signals the policy reads

    @property
    def cpu(self) -> np.ndarray:
        """Each proposal's CPU as a share of its own cell's grid: what the penalty weighs."""
        return self.seconds / self.grid[:, None]


def signal_seconds(measured: dict[str, Any], signals: Sequence[str]) -> float:
    """CPU of measuring what a policy reads: everything the study measured, less the random-init pass where
    the pretrained gain is not among `signals` (auto skips it then: transferline/model/advice_signals.py)."""
    paid = measured.get("seconds", 0.0)
    return paid if "pretrained_gain" in signals else paid - random_pass_cpu(measured)


def make_table(
    cells: list[Cell],
    errors: dict[str, float],
    measured: dict[str, dict[str, Any]],
    signals: Sequence[str],
    margin: float,
    recipes: Sequence[str],
    loss: str = AUTO_LOSS,
) -> Table:
    at = [c.at_margin(margin) for c in cells]
    accuracy_lost = accuracy_loss(loss, errors)
    return Table(
        recipes=tuple(recipes),
        names=tuple(c.name for c in at),
        datasets=np.array([c.dataset for c in at]),
        features=np.array([signal_vector(c.signals.value, signals) for c in at], dtype=float),
        loss=np.array([[accuracy_lost(c, r) for r in recipes] for c in at]),
        regret=np.array([[c.checked_regret(r) for r in recipes] for c in at]),
        gain=np.array([[c.outcome(r, checked=True) - c.signals.probe_accuracy for r in recipes] for c in at]),
        error=np.array([errors[c.name] for c in at]),
        seconds=np.array([[c.checked_seconds(r) for r in recipes] for c in at]),
        grid=np.array([c.grid_cost() for c in at]),
        signal_seconds=np.array([signal_seconds(measured.get(c.name, {}), signals) for c in at]),
    )


Picker = Callable[[Table, np.ndarray, np.ndarray, float, float], np.ndarray]


def nearest_picks(table: Table, train: np.ndarray, targets: np.ndarray, k: float, weight: float) -> np.ndarray:
    """Recipe index per target: the least loss plus `weight` x CPU share pooled over its `k` nearest
    training cells, as the advisor decides (transferline/model/nearest_cells.py)."""
    return neighbour_picks(table.features, table.loss, table.cpu, train, targets, k, weight)


@dataclass(frozen=True)
class Setting:
    margin: float
    parameter: float  # k for the nearest cells
    weight: float


def settings(margins: Sequence[float], parameters: Sequence[float], weights: Sequence[float]) -> list[Setting]:
    return [Setting(*s) for s in itertools.product(margins, parameters, weights)]


def lodo_picks(picker: Picker, table: Table, rows: np.ndarray, setting: Setting) -> np.ndarray:
    """Recipe index for each of `rows`, each proposed with its own data set left out of `rows`."""
    picks = np.empty(len(rows), dtype=int)
    for dataset in np.unique(table.datasets[rows]):
        held = table.datasets[rows] == dataset
        if held.all():
            raise ValueError("leaving a data set out needs at least two data sets")
        picks[held] = picker(table, rows[~held], rows[held], setting.parameter, setting.weight)
    return picks


def score(table: Table, rows: np.ndarray, picks: np.ndarray) -> tuple[int, float, float]:
    """(cells within one SE, mean regret, CPU share of the grid) of proposing `picks` for `rows`."""
    regret = table.regret[rows, picks]
    hits = int((regret <= table.error[rows] + 1e-12).sum())
    spent = (table.seconds[rows, picks] + table.signal_seconds[rows]).sum()
    return hits, float(regret.mean()), float(spent / table.grid[rows].sum())


def scored_settings(
    picker: Picker, tables: dict[float, Table], rows: np.ndarray, candidates: Sequence[Setting]
) -> list[tuple[Setting, tuple[int, float, float]]]:
    """Every candidate setting with its `score` on `rows`, each proposed leaving its data set out."""
    return [(s, score(tables[s.margin], rows, lodo_picks(picker, tables[s.margin], rows, s))) for s in candidates]


def choose_setting(
    picker: Picker, tables: dict[float, Table], rows: np.ndarray, candidates: Sequence[Setting]
) -> tuple[Setting, list[tuple[Setting, tuple[int, float, float]]]]:
    """The setting chosen on `rows` alone by leaving their data sets out: the most cells within one SE among
    those within the CPU target (else the cheapest setting), then the lower mean regret; earlier (simpler)
    first on a tie. With every scored setting."""
    scored = scored_settings(picker, tables, rows, candidates)
    eligible = [(s, v) for s, v in scored if v[2] <= TARGET_CPU]
    if not eligible:
        return min(scored, key=lambda sv: sv[1][2])[0], scored
    return min(eligible, key=lambda sv: (-sv[1][0], sv[1][1]))[0], scored


def fit_nearest_rule(
    cells: list[Cell],
    recipes: dict[str, dict[str, Any]],
    errors: dict[str, float],
    measured: dict[str, dict[str, Any]],
    signals: Sequence[str] = SIZE_AND_PROBE,
    margins: Sequence[float] = VALIDATION_MARGINS,
    ks: Sequence[float] = NEIGHBOUR_COUNTS,
    weights: Sequence[float] = CPU_WEIGHTS,
    loss: str = AUTO_LOSS,
) -> dict[str, Any]:
    """auto's rule as nearest cells: k, CPU weight and margin chosen by leaving these cells' data sets out
    (`choose_setting`), then every cell's signals, losses, CPU shares and gains at that margin kept as data.
    `measured`: the study's signal measurements per cell, whose CPU the choice counts. With fewer than two
    data sets nothing can be held out: the first margin, the fewest cells and no CPU penalty."""
    names = [r for r in recipes if all(r in c.accuracy for c in cells)]
    if not cells or not names:
        raise ValueError("fit_nearest_rule needs cells with results for at least one common recipe")
    tables = {m: make_table(cells, errors, measured, signals, m, names, loss) for m in margins}
    rows = np.arange(len(cells))
    candidates = settings(margins, ks, weights)
    if len(set(tables[margins[0]].datasets)) < 2:
        chosen, scored = Setting(margins[0], min(ks), 0.0), []
    else:
        chosen, scored = choose_setting(nearest_picks, tables, rows, candidates)
    table = tables[chosen.margin]
    figures = {c.validation_figure for c in cells} or {BEST_EPOCH}
    if len(figures) > 1:
        raise ValueError(f"cells checked with different validation figures: {sorted(figures)}")
    kept = [
        {
            "cell": table.names[i],
            "signals": {s: cells[i].signals.value(s) for s in signals},
            "loss": dict(zip(names, table.loss[i].tolist(), strict=True)),
            "cpu_share": dict(zip(names, table.cpu[i].tolist(), strict=True)),
            "gain_over_probe": dict(zip(names, table.gain[i].tolist(), strict=True)),
        }
        for i in rows
    ]
    # the settings the choice ranked first: within the CPU target, by cells within one SE, then mean regret
    best = sorted(scored, key=lambda sv: (sv[1][2] > TARGET_CPU, -sv[1][0], sv[1][1]))[:8]
    return {
        NEAREST_CELLS: {
            "signals": list(signals),
            "k": int(chosen.parameter),
            "cpu_weight": chosen.weight,
            "cells": kept,
        },
        "recipes": recipes,
        "signals": list(signals),
        "validation_check": True,
        "validation_margin_se": chosen.margin,
        "validation_figure": figures.pop(),
        "fit": {
            "policy": "nearest cells",
            "loss": loss,
            "margin_se": chosen.margin,
            "k": int(chosen.parameter),
            "cpu_weight": chosen.weight,
            "cpu_target": TARGET_CPU,
            "settings_tried": len(scored),
            "best_settings": [
                {
                    "margin_se": s.margin,
                    "k": int(s.parameter),
                    "cpu_weight": s.weight,
                    "within_one_se": hits / len(cells),
                    "mean_regret": regret,
                    "cpu_share_of_grid": cpu,
                }
                for s, (hits, regret, cpu) in best
            ],
        },
    }
