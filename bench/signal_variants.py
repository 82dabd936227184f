"""Is the random-init forward pass worth its cost? Cheaper stand-ins for it, judged as auto is judged.

`pretrained_gain` is the linear probe's validation accuracy on ImageNet features less the same probe's on
the features of a randomly initialised network of the same architecture: how much of the probe's accuracy
ImageNet brings. That random-init pass is a second forward pass over the data, about two fifths of what
measuring the signals costs (bench/results/transfer_study.md, "Where auto's CPU goes"). A stand-in that
needs no forward pass: the same probe on the images' own pixels, averaged down to P x P per channel (the
prepared pixel cache, already in memory). Here each stand-in replaces the random-init probe in every cell's
`pretrained_gain`, its measured CPU replaces the random-init pass's share of the signals' CPU, and the
committed fitting method (bench/transfer_analysis.py `fit_auto_rule`) is judged leaving one data set out,
exactly as the study judges the committed rule.

It trains nothing; it reads the study's prepared data (bench/.work/transfer_study, made by
`python -m bench.transfer_study`) and bench/results/transfer_study.json. Writes
bench/results/transfer_signal_variants.{md,json}. Usage: python -m bench.signal_variants
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

import numpy as np

from bench.common import results_dir, write_results
from bench.transfer_analysis import (
    TARGET_CPU,
    TARGET_SHARE,
    at_rules_margin,
    cell_name,
    fit_auto_rule,
    judge_policy,
    leave_one_dataset_out,
)
from bench.transfer_study import (
    BACKBONES,
    DATASETS,
    RECIPES,
    RULE_FILE,
    SIZES,
    WORK,
    base_params,
    load_state,
    prepared_data,
    resolve_source,
    study_cells,
)

PIXEL_GRIDS = (8, 16, 32)  # P: the pixel probe's input, P x P x 3 means of the prepared images
RANDOM_INIT = "random-init features (committed)"


def pooled_pixels(images: np.ndarray, grid: int) -> np.ndarray:
    """(N, S, S, C) uint8 images as (N, grid * grid * C) float means over square patches (S cropped to a
    multiple of grid)."""
    count, size, _, channels = images.shape
    patch = size // grid
    if patch < 1:
        raise ValueError(f"cannot pool {size}-pixel images to a {grid} x {grid} grid")
    cropped = np.asarray(images[:, : patch * grid, : patch * grid], dtype=np.float32)
    return cropped.reshape(count, grid, patch, grid, patch, channels).mean(axis=(2, 4)).reshape(count, -1)


def with_stand_in(state: dict[str, Any], probes: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A copy of the study's state whose cells' `pretrained_gain` is the probe less the stand-in's validation
    accuracy, and whose signals' CPU pays for the stand-in instead of the random-init pass (that pass's share
    of the measurement's wall time, as the study's CPU breakdown counts it)."""
    changed = copy.deepcopy(state)
    for name, stand_in in probes.items():
        signals = changed["signals"][name]
        wall = signals.get("wall_seconds") or 0.0
        random_pass = signals["seconds"] * signals["timings"]["random_features"] / wall if wall else 0.0
        signals["pretrained_gain"] = signals["probe_accuracy"] - stand_in["val_accuracy"]
        signals["seconds"] = signals["seconds"] - random_pass + stand_in["cpu_seconds"]
    return changed


def judge(state: dict[str, Any]) -> dict[str, Any]:
    """auto's verdict on the state's cells, leaving one data set out, with the signals' total CPU and the
    rule fitted on all cells."""
    cells, errors = study_cells(state)
    signal_seconds = {name: values["seconds"] for name, values in state["signals"].items()}
    picks, rules = leave_one_dataset_out(cells, RECIPES, lambda train: fit_auto_rule(train, RECIPES, errors))
    judged = at_rules_margin([c for c in cells if c.name in picks], rules)
    verdict = judge_policy(judged, picks, errors, signal_seconds, checked=True)
    rule = fit_auto_rule(cells, RECIPES, errors)
    return {
        **verdict,
        "signals_cpu_seconds": sum(signal_seconds[c.name] for c in cells),
        "rule_signal": rule["tree"].get("signal"),
    }


def pixel_probes(state: dict[str, Any], grid: int) -> dict[str, dict[str, float]]:
    """The pixel probe's validation accuracy and CPU seconds in every measured cell of the study."""
    from transferline.data.pixel_cache import load_split, read_dataset
    from transferline.model.backbones import get_spec, imagenet_normalization
    from transferline.model.head import fit_probe

    image_size = json.loads(RULE_FILE.read_text())["image_size"]  # the study's, which the rule records
    probes = {}
    for backbone in BACKBONES:
        params = base_params(backbone, quick=False)
        norm = imagenet_normalization(get_spec(backbone))
        for dataset in DATASETS:
            source = resolve_source(dataset, WORK)
            for size in SIZES:
                name = cell_name((dataset, size, backbone))
                if name not in state["signals"]:
                    continue
                data = prepared_data(WORK, dataset, source, size, norm, image_size)
                if data is None:
                    continue
                prepared, _ = data
                classes = len(read_dataset(prepared)["classes"])
                train, val = (load_split(prepared, split, classes, image_size) for split in ("train", "val"))
                start = time.process_time()
                result = fit_probe(
                    pooled_pixels(train.images, grid),
                    train.labels,
                    pooled_pixels(val.images, grid),
                    val.labels,
                    classes,
                    params.probe_l2,
                    standardize=params.probe_standardize,
                )
                probes[name] = {"val_accuracy": float(result.val_accuracy), "cpu_seconds": time.process_time() - start}
    return probes


def markdown(cpu: str, rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Stand-ins for the random-init pass behind `pretrained_gain`",
        "",
        f"The transfer study's cells (bench/results/transfer_study.json), {cpu}. Each row replaces "
        "the random-init probe in every cell's pretrained gain, and its CPU in the signals' cost; the committed "
        "fitting method is then judged leaving one data set out, as the study judges auto.",
        "",
        f"Targets: within one SE in >= {TARGET_SHARE:.0%} of cells, at <= {TARGET_CPU:.0%} of the grid's CPU.",
        "",
        "| pretrained gain over | within one SE | mean regret | CPU share | signals' CPU (s) | rule fitted on all "
        "cells splits on |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        lines.append(
            f"| {label} | {row['within_one_se']:.0%} | {row['mean_regret']:.4f} | {row['cpu_share_of_grid']:.1%} "
            f"| {row['signals_cpu_seconds']:.0f} | {row['rule_signal']} |"
        )
    committed = rows[RANDOM_INIT]
    cheaper = [row for label, row in rows.items() if label != RANDOM_INIT]
    if cheaper:
        best = max(cheaper, key=lambda row: (row["within_one_se"], -row["mean_regret"]))
        verdict = (
            "a pixel probe keeps auto's accuracy for less: it could replace the random-init pass"
            if best["within_one_se"] >= committed["within_one_se"]
            else "no pixel probe keeps auto's accuracy: the random-init pass earns its cost"
        )
        lines += [
            "",
            f"The best stand-in is within one SE in {best['within_one_se']:.0%} of cells against the random-init "
            f"pass's {committed['within_one_se']:.0%}; {verdict}. A probe on pixels measures how separable the "
            "classes already are, not what an untrained network of this architecture gives, so it asks a "
            "different question than the gain the rule was built on.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=list(PIXEL_GRIDS), help="pixel probe's P")
    args = parser.parse_args(argv)
    study = results_dir() / "transfer_study.json"
    state = load_state(WORK / "runs.json", study)
    cpu = json.loads(study.read_text())["machine"]["cpu"]
    rows = {RANDOM_INIT: judge(state)}
    probes = {}
    for grid in args.grids:
        probes[grid] = pixel_probes(state, grid)
        rows[f"a probe on {grid} x {grid} pixels"] = judge(with_stand_in(state, probes[grid]))
    result = {"rows": rows, "pixel_probes": {str(grid): values for grid, values in probes.items()}}
    write_results("transfer_signal_variants", result, markdown(cpu, rows))


if __name__ == "__main__":
    main()
