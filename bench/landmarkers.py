"""Landmarkers as signals: does what the linear probe itself shows help auto's rule choose?

Meta-learning calls the scores of cheap learners on a data set landmarkers; auto's rule already reads one,
the probe's validation accuracy. The probe's fit shows three more, each added in turn as a seventh signal the
tree fitting method (bench/transfer_analysis.py `fit_tree_rule`) may split on, judged leaving one data
set out as the study judges auto:
- the probe's training accuracy: a probe that cannot fit its own training images says the pretrained features
  lack what the task needs, which only fine-tuning can change (free: the probe is fitted anyway);
- the probe's validation loss: its confidence as well as its accuracy (free);
- the probe's learning-curve slope: its validation accuracy on every training image less on the first half a
  class, a sampling landmarker of whether more data still pays (one more probe, paid for in the cells whose
  rule splits on it).

The probe is refitted here from each cell's cached features, so all three come from one machine's probe (on
tiny validation splits that probe's accuracy can differ from the study's, measured on another CPU, by an
image or two); the study's six signals are left as measured.

It trains nothing; it reads the study's prepared data and feature caches (bench/.work/transfer_study, made by
`python -m bench.transfer_study`) and bench/results/transfer_study.json. About 6 minutes on 2 cores. Writes
bench/results/transfer_landmarkers.{md,json}. Usage: python -m bench.landmarkers
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from bench.common import machine, results_dir, write_results
from bench.signal_variants import cell_features, first_per_class, measured_cells
from bench.transfer_analysis import (
    TARGET_CPU,
    TARGET_SHARE,
    at_rules_margin,
    auto_signal_seconds,
    fit_tree_rule,
    held_out_verdict,
    leave_one_dataset_out,
    usable_cores,
)
from bench.transfer_design import RECIPES, TREE_RULE
from bench.transfer_report import verdict_columns
from bench.transfer_study import study_cells
from transferline.model.advisor import Cell, Signals, signals_read
from transferline.model.head import fit_probe


# Signals with one landmarker more, each a class of its own (the folds' fits run in worker processes)
@dataclass(frozen=True)
class WithTrainAccuracy(Signals):
    probe_train_accuracy: float | None = None


@dataclass(frozen=True)
class WithValLoss(Signals):
    probe_val_loss: float | None = None


@dataclass(frozen=True)
class WithSlope(Signals):
    probe_slope: float | None = None


LANDMARKERS: dict[str, tuple[str, type[Signals]]] = {
    "probe_train_accuracy": ("the probe's training accuracy", WithTrainAccuracy),
    "probe_val_loss": ("the probe's validation loss", WithValLoss),
    "probe_slope": ("the probe's learning-curve slope (all images less half a class)", WithSlope),
}
PAID = {"probe_slope"}  # landmarkers that cost a probe of their own; the others come with the probe


def learning_curve_slope(full_accuracy: float, half_accuracy: float) -> float:
    """How much the probe's validation accuracy gains from the second half of the training images."""
    return full_accuracy - half_accuracy


def measure_landmarkers(state: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per measured cell: the refitted probe's validation accuracy, the three landmarkers, and the CPU of the
    half-data probe behind the slope."""
    measured = {}
    for name, context in measured_cells(state):
        train, val, params = context["train"], context["val"], context["params"]
        classes = context["model"].head.out_features
        features = cell_features(context)
        options = {"standardize": params.probe_standardize, "label_smoothing": params.probe_label_smoothing}
        labels = np.asarray(train.labels)
        probe = fit_probe(features["train"], labels, features["val"], val.labels, classes, params.probe_l2, **options)
        half = first_per_class(labels, max(1, len(train) // classes // 2))
        start = time.process_time()
        half_probe = fit_probe(
            features["train"][half], labels[half], features["val"], val.labels, classes, params.probe_l2, **options
        )
        measured[name] = {
            "probe_accuracy": float(probe.val_accuracy),
            "probe_train_accuracy": float(probe.train_accuracy),
            "probe_val_loss": float(probe.val_loss),
            "probe_slope": learning_curve_slope(probe.val_accuracy, half_probe.val_accuracy),
            "slope_cpu_seconds": time.process_time() - start,
        }
    return measured


def with_landmarker(cells: list[Cell], name: str, values: dict[str, float]) -> list[Cell]:
    """The cells carrying one more signal, `name`, so a rule fitted on them may split on it."""
    kind = LANDMARKERS[name][1]
    return [replace(c, signals=kind(**asdict(c.signals), **{name: values[c.name]})) for c in cells]


def landmarker_verdict(
    cells: list[Cell],
    errors: dict[str, float],
    measured: dict[str, dict[str, Any]],
    name: str,
    values: dict[str, float],
    extra_seconds: dict[str, float],
    processes: int = 1,
) -> dict[str, Any]:
    """The tree method on the cells with landmarker `name` as a seventh signal, fitted and judged leaving
    one data set out as the study judges auto; `extra_seconds`: what measuring it adds to a cell's signals,
    paid where the held-out data set's rule splits on it (as auto pays for the random-init pass only where
    its rule reads the gain)."""
    landmarked = with_landmarker(cells, name, values)
    # the aim's inner choice counts the six signals' CPU, not the landmarker's (as the study's auto, which
    # does not measure it)
    picks, rules = leave_one_dataset_out(
        landmarked, RECIPES, lambda train: fit_tree_rule(train, RECIPES, errors, signals=measured), processes
    )
    judged = at_rules_margin([c for c in landmarked if c.name in picks], rules)
    reading = sorted(d for d, r in rules.items() if name in signals_read(r["tree"]))
    paid = copy.deepcopy(measured)
    for cell in judged:
        if cell.dataset in reading:
            paid[cell.name]["seconds"] = paid[cell.name]["seconds"] + extra_seconds.get(cell.name, 0.0)
    return {
        **held_out_verdict(judged, picks, errors, auto_signal_seconds(paid, judged, rules)),
        "folds_splitting_on_it": reading,
    }


def markdown(study: dict[str, Any], rows: list[dict[str, Any]], cpu: str, probe_differs: int) -> str:
    committed = study["verdicts"][TREE_RULE]
    lines = [
        "# Landmarkers from the probe as signals",
        "",
        f"The transfer study's {committed['cells']} cells (bench/results/transfer_study.json, {study['measured_on']}). "
        "Each row adds one landmarker as a seventh signal the tree fitting method may split on, judged "
        "leaving one data set out as the study judges auto (bench/landmarkers.py). The landmarkers come from "
        f"the probe refitted on each cell's cached features on {cpu}; its validation accuracy differs from the "
        f"study's in {probe_differs} cells (tiny validation splits, another CPU).",
        "",
        f"Targets: within one SE in >= {TARGET_SHARE:.0%} of cells, at <= {TARGET_CPU:.0%} of the grid's CPU.",
        "",
        "| signals | within one SE | cells | mean regret | CPU share | meets both | held-out folds splitting on it |",
        "|---|---|---|---|---|---|---|",
        f"| the six (the tree method) | {verdict_columns(committed)} | |",
    ]
    for row in rows:
        folds = ", ".join(row["folds_splitting_on_it"]) or "none"
        lines.append(f"| the six and {row['label']} | {verdict_columns(row)} | {folds} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    study = json.loads((results_dir() / "transfer_study.json").read_text())
    cells, errors = study_cells(study)
    landmarkers = measure_landmarkers(study)
    missing = sorted(c.name for c in cells if c.name not in landmarkers)
    if missing:
        raise SystemExit(f"no prepared data for {len(missing)} cells (first: {missing[0]}): run the study first")
    rows = []
    for name, (label, _) in LANDMARKERS.items():
        values = {cell: figures[name] for cell, figures in landmarkers.items()}
        extra = {cell: figures["slope_cpu_seconds"] for cell, figures in landmarkers.items()} if name in PAID else {}
        verdict = landmarker_verdict(cells, errors, study["signals"], name, values, extra, usable_cores())
        rows.append({"landmarker": name, "label": label, **verdict})
    cpu = machine()["cpu"]
    differs = sum(abs(landmarkers[c.name]["probe_accuracy"] - c.signals.probe_accuracy) > 1e-9 for c in cells)
    write_results(
        "transfer_landmarkers",
        {"rows": rows, "landmarkers": landmarkers, "measured_on": cpu, "probe_differs": differs},
        markdown(study, rows, cpu, differs),
    )


if __name__ == "__main__":
    main()
