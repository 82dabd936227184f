"""auto's policy: propose the recipe that did best on the study cells most like the new data set.

Each study cell (a data set at one size, on one backbone) is a point in the space of the policy's signals
(images a class and classes on a log scale, every signal standardised on the study's cells). For a new data
set the `k` nearest cells pool, per recipe, their loss (the regret beyond one standard error after the
validation check) plus `cpu_weight` times its CPU share of the cell's grid; the recipe with the least pooled
cost is proposed. This is how a portfolio warm-start picks the configurations that did best on the most
similar data sets. The cells' losses are data in the rule file, so the decision is looked up, not modelled,
and every proposal can name the cells it came from.

Pure numpy over arrays, shared by the advisor (one data set) and the study that fits `k` and `cpu_weight`
by leaving data sets out (bench/nearest_fit.py), so both take the same decision to the bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NEAREST_CELLS = "nearest_cells"  # the rule file's key for this policy's data
LOG_SCALED = ("images_per_class", "num_classes")  # counts: a step from 10 to 30 is as far as 100 to 300
TIE = 1e-9  # a tie in the pooled cost goes to the recipe the neighbours spent less CPU on


def signal_vector(value: Callable[[str], float], signals: Sequence[str]) -> list[float]:
    """The coordinates of a data set with these signal values (`value(name)`), counts on a log scale."""
    return [math.log(value(s)) if s in LOG_SCALED else float(value(s)) for s in signals]


def standardised(features: np.ndarray, train: np.ndarray) -> np.ndarray:
    """`features` on the training rows' scale (a constant signal stays 0)."""
    mean, spread = features[train].mean(0), features[train].std(0)
    return (features - mean) / np.where(spread > 0, spread, 1.0)


def nearest_rows(features: np.ndarray, train: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Per target row, the `k` training rows nearest it (Euclidean, standardised on the training rows),
    nearest first; a tie in distance goes to the earlier row."""
    z = standardised(features, train)
    distance = np.linalg.norm(z[targets][:, None, :] - z[train][None, :, :], axis=2)
    return train[np.argsort(distance, axis=1, kind="stable")[:, : int(k)]]


def pooled_costs(loss: np.ndarray, cpu: np.ndarray, neighbours: np.ndarray, weight: float) -> np.ndarray:
    """Per target, per recipe: the neighbours' summed loss plus `weight` x CPU share (and the tie-break)."""
    return (loss + weight * cpu)[neighbours].sum(1) + TIE * cpu[neighbours].sum(1)


def neighbour_picks(
    features: np.ndarray,
    loss: np.ndarray,
    cpu: np.ndarray,
    train: np.ndarray,
    targets: np.ndarray,
    k: float,
    weight: float,
) -> np.ndarray:
    """Recipe index per target row: the least pooled cost over its `k` nearest training rows. `loss` and
    `cpu` are (rows, recipes)."""
    return pooled_costs(loss, cpu, nearest_rows(features, train, targets, int(k)), weight).argmin(1)


@dataclass(frozen=True)
class NearestChoice:
    """A proposal and what it rests on: the cells consulted and each recipe's pooled cost over them."""

    recipe: str
    neighbours: list[str]  # nearest first
    pooled: dict[str, float]
    gain_over_probe: tuple[float, float]  # the recipe's lowest and highest gain over the probe among them


def choose(policy: Mapping[str, Any], value: Callable[[str], float]) -> NearestChoice:
    """The recipe `policy` (a rule file's NEAREST_CELLS entry: its signals, k, CPU weight and cells) proposes
    for a data set whose signals read `value(name)`."""
    cells = policy["cells"]
    if not cells:
        raise ValueError("a nearest-cells policy needs cells")
    signals, recipes = list(policy["signals"]), list(cells[0]["loss"])
    for cell in cells:
        if list(cell["loss"]) != recipes or list(cell["cpu_share"]) != recipes:
            raise ValueError(f"cell {cell['cell']} does not cost the same recipes as the others: {recipes}")
    rows = [signal_vector(lambda s, c=cell: float(c["signals"][s]), signals) for cell in cells]
    features = np.array([*rows, signal_vector(value, signals)], dtype=float)
    train, target = np.arange(len(cells)), np.array([len(cells)])
    loss = np.array([[c["loss"][r] for r in recipes] for c in cells] + [[0.0] * len(recipes)])
    cpu = np.array([[c["cpu_share"][r] for r in recipes] for c in cells] + [[0.0] * len(recipes)])
    k = min(int(policy["k"]), len(cells))
    near = nearest_rows(features, train, target, k)
    pooled = pooled_costs(loss, cpu, near, float(policy["cpu_weight"]))[0]
    recipe = recipes[int(pooled.argmin())]
    gains = [cells[i]["gain_over_probe"][recipe] for i in near[0]]
    return NearestChoice(
        recipe=recipe,
        neighbours=[cells[i]["cell"] for i in near[0]],
        pooled={r: float(p) for r, p in zip(recipes, pooled, strict=True)},
        gain_over_probe=(min(gains), max(gains)),
    )
