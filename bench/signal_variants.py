"""Is the random-init forward pass worth its cost? Cheaper stand-ins for it, judged as auto is judged.

`pretrained_gain` is the linear probe's validation accuracy on ImageNet features less the same probe's on
the features of a randomly initialised network of the same architecture: how much of the probe's accuracy
ImageNet brings. That random-init pass is a second forward pass over the data, about two fifths of what
measuring the signals costs (bench/results/transfer_study.md, "Where auto's CPU goes"). A stand-in that
needs no forward pass: the same probe on the images' own pixels, averaged down to P x P per channel (the
prepared pixel cache, already in memory). Here each stand-in replaces the random-init probe in every cell's
`pretrained_gain`, its measured CPU replaces the random-init pass's share of the signals' CPU, and the
tree fitting method (bench/transfer_analysis.py `fit_tree_rule`) is judged leaving one data set out,
as the study judges the committed rule: a cell pays for its gain's measurement only where its data set's
rule reads the gain on that cell's path (as `auto` skips the random-init pass elsewhere), so the committed
row is the study's own verdict.

The other way to pay less: keep the random-init pass but run it on at most N images a class (and the
validation split in proportion), with the pretrained probe it is subtracted from fitted on the same images,
so the pass's cost stops growing with the data set.

It trains nothing; it reads the study's prepared data (bench/.work/transfer_study, made by
`python -m bench.transfer_study`) and bench/results/transfer_study.json. Writes
bench/results/transfer_signal_variants.{md,json}. Usage: python -m bench.signal_variants
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from bench.common import machine, results_dir, write_results
from bench.transfer_analysis import (
    TARGET_CPU,
    TARGET_SHARE,
    at_rules_margin,
    auto_signal_seconds,
    cell_name,
    fit_tree_rule,
    judge_policy,
    leave_one_dataset_out,
    random_pass_cpu,
    usable_cores,
)
from bench.transfer_design import BACKBONES, DATASETS, RECIPES, SIZES
from bench.transfer_study import RULE_FILE, WORK, cell_context, load_state, prepared_data, resolve_source, study_cells
from transferline.data.pixel_cache import SplitData
from transferline.model.advice_signals import random_init_features
from transferline.model.features import cached_features
from transferline.model.head import fit_probe

PIXEL_GRIDS = (8, 16, 32)  # P: the pixel probe's input, P x P x 3 means of the prepared images
CAPS = (100,)  # N: the capped random-init pass's images a class (the study's sizes are 10, 30, 100 and 400)
RANDOM_INIT = "random-init features (committed)"
PIXEL_ROW = "a probe on"  # how the rows of each kind of stand-in begin
CAPPED_ROW = "random-init features of at most"


def pooled_pixels(images: np.ndarray, grid: int) -> np.ndarray:
    """(N, S, S, C) uint8 images as (N, grid * grid * C) float means over square patches (S cropped to a
    multiple of grid)."""
    count, size, _, channels = images.shape
    patch = size // grid
    if patch < 1:
        raise ValueError(f"cannot pool {size}-pixel images to a {grid} x {grid} grid")
    cropped = np.asarray(images[:, : patch * grid, : patch * grid], dtype=np.float32)
    return cropped.reshape(count, grid, patch, grid, patch, channels).mean(axis=(2, 4)).reshape(count, -1)


def with_gains(state: dict[str, Any], gains: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A copy of the study's state with each named cell's `pretrained_gain` replaced, and its signals' CPU
    paying for the replacement's `cpu_seconds` instead of the random-init pass (that pass's share of the
    measurement's wall time, as the study's CPU breakdown counts it)."""
    changed = copy.deepcopy(state)
    for name, replacement in gains.items():
        signals = changed["signals"][name]
        signals["seconds"] = signals["seconds"] - random_pass_cpu(signals) + replacement["cpu_seconds"]
        signals["pretrained_gain"] = replacement["pretrained_gain"]
        signals["gain_cpu_seconds"] = replacement["cpu_seconds"]  # what a rule that skips the gain saves
    return changed


def first_per_class(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first `count` images of each class, in their split's order (shuffled by prepare)."""
    kept: dict[int, int] = {}
    chosen = []
    for index, label in enumerate(labels.tolist()):
        if kept.get(label, 0) < count:
            kept[label] = kept.get(label, 0) + 1
            chosen.append(index)
    return np.asarray(chosen, dtype=np.int64)


def judge(state: dict[str, Any]) -> dict[str, Any]:
    """auto's verdict on the state's cells, leaving one data set out, with the signals' CPU it pays (the gain
    only where its fold's rule reads it) and the first split of the rule fitted on all cells."""
    cells, errors = study_cells(state)
    picks, rules = leave_one_dataset_out(
        cells, RECIPES, lambda train: fit_tree_rule(train, RECIPES, errors, signals=state["signals"]), usable_cores()
    )
    judged = at_rules_margin([c for c in cells if c.name in picks], rules)
    signal_seconds = auto_signal_seconds(state["signals"], judged, rules)
    verdict = judge_policy(judged, picks, errors, signal_seconds, checked=True)
    rule = fit_tree_rule(cells, RECIPES, errors, signals=state["signals"], processes=usable_cores())
    return {
        **verdict,
        "signals_cpu_seconds": sum(signal_seconds.values()),
        "rule_signal": rule["tree"].get("signal"),
    }


def measured_cells(state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each cell whose signals the study measured, with what measuring them took (bench.transfer_study's
    `cell_context`: params, runtime, train and val splits, the pretrained model and its feature cache)."""
    from transferline.model.backbones import get_spec, imagenet_normalization

    image_size = json.loads(RULE_FILE.read_text())["image_size"]  # the study's, which its rule records
    for backbone in BACKBONES:
        norm = imagenet_normalization(get_spec(backbone))
        for dataset in DATASETS:
            source = resolve_source(dataset, WORK)
            for size in SIZES:
                name = cell_name((dataset, size, backbone))
                if name not in state["signals"]:
                    continue
                data = prepared_data(WORK, dataset, source, size, norm, image_size)
                if data is not None:
                    yield name, cell_context(data[0], backbone, quick=False)


def feature_batch(params: Any) -> int:
    """The batch the study's signals measured features in (transferline/model/advice_signals.py)."""
    return max(2 * params.batch_size, 64)


def cell_features(context: dict[str, Any]) -> dict[str, np.ndarray]:
    """A measured cell's pretrained features of its train and val splits, from its feature cache."""
    features, _ = cached_features(
        context["model"],
        {"train": context["train"], "val": context["val"]},
        context["spec"],
        context["runtime"],
        context["features_dir"],
        context["key"],
        feature_batch(context["params"]),
    )
    return features


def pixel_probes(state: dict[str, Any], grid: int) -> dict[str, dict[str, float]]:
    """In every measured cell: the probe less the pixel probe's validation accuracy, and the pixel probe's CPU."""
    gains = {}
    for name, context in measured_cells(state):
        train, val, params = context["train"], context["val"], context["params"]
        start = time.process_time()
        pixels = fit_probe(
            pooled_pixels(train.images, grid),
            train.labels,
            pooled_pixels(val.images, grid),
            val.labels,
            context["model"].head.out_features,
            params.probe_l2,
            standardize=params.probe_standardize,
            label_smoothing=params.probe_label_smoothing,
        )
        gains[name] = {
            "pretrained_gain": state["signals"][name]["probe_accuracy"] - float(pixels.val_accuracy),
            "cpu_seconds": time.process_time() - start,
        }
    return gains


def capped_passes(state: dict[str, Any], cap: int) -> dict[str, dict[str, float]]:
    """In every cell with more than `cap` training images a class: the random-init pass on the first `cap`
    a class (validation in proportion), both probes fitted on those images, the gain between them, and the
    CPU of the pass and the two probes."""
    gains = {}
    for name, context in measured_cells(state):
        if state["signals"][name]["images_per_class"] <= cap:
            continue
        train, val, params = context["train"], context["val"], context["params"]
        classes = context["model"].head.out_features
        batch = feature_batch(params)
        splits = {"train": train, "val": val}
        features = cell_features(context)
        val_cap = max(1, round(cap * len(val) / len(train)))
        keep = {"train": first_per_class(train.labels, cap), "val": first_per_class(val.labels, val_cap)}
        subset = {k: SplitData(np.asarray(v.images)[keep[k]], v.labels[keep[k]]) for k, v in splits.items()}
        start = time.process_time()
        random_features = random_init_features(
            params, classes, subset["train"], subset["val"], context["spec"], context["runtime"], batch
        )
        pretrained = {k: v[keep[k]] for k, v in features.items()}
        accuracy = {}
        for label, arrays in (("pretrained", pretrained), ("random", random_features)):
            accuracy[label] = fit_probe(
                arrays["train"],
                subset["train"].labels,
                arrays["val"],
                subset["val"].labels,
                classes,
                params.probe_l2,
                standardize=params.probe_standardize,
                label_smoothing=params.probe_label_smoothing,
            ).val_accuracy
        gains[name] = {
            "pretrained_gain": float(accuracy["pretrained"] - accuracy["random"]),
            "cpu_seconds": time.process_time() - start,
        }
    return gains


def markdown(cpu: str, stand_ins_cpu: str, rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Stand-ins for the random-init pass behind `pretrained_gain`",
        "",
        f"The transfer study's cells (bench/results/transfer_study.json), {cpu}. Each row replaces "
        "the random-init probe in every cell's pretrained gain, and its CPU in the signals' cost; the committed "
        "fitting method is then judged leaving one data set out, as the study judges auto (a cell pays for "
        "its gain only where its data set's rule reads it). The stand-ins' CPU was measured on "
        f"{stand_ins_cpu}.",
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
    for prefix, kind in ((PIXEL_ROW, "pixel probe"), (CAPPED_ROW, "capped random-init pass")):
        group = {label: row for label, row in rows.items() if label.startswith(prefix)}
        if not group:
            continue
        label, best = max(group.items(), key=lambda item: (item[1]["within_one_se"], -item[1]["mean_regret"]))
        kept = best["within_one_se"] >= committed["within_one_se"]
        saved = committed["signals_cpu_seconds"] - best["signals_cpu_seconds"]
        lines += [
            "",
            f"The best {kind} ({label}) is within one SE in {best['within_one_se']:.0%} of cells at "
            f"{best['cpu_share_of_grid']:.1%} of the CPU, against the full random-init pass's "
            f"{committed['within_one_se']:.0%} at {committed['cpu_share_of_grid']:.1%}: "
            + (
                "it does not keep auto's accuracy."
                if not kept
                else f"it keeps auto's accuracy for {saved:.0f} s less of signals."
                if saved > 0
                else f"it keeps auto's accuracy but costs {-saved:.0f} s more of signals."
            ),
        ]
    if any(label.startswith(PIXEL_ROW) for label in rows):
        lines += [
            "",
            "A probe on pixels measures how separable the classes already are, not what an untrained network "
            "of this architecture gives, so it asks another question than the gain the rule was built on.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="*", default=list(PIXEL_GRIDS), help="pixel probe's P")
    parser.add_argument("--caps", type=int, nargs="*", default=list(CAPS), help="capped random-init pass's N")
    args = parser.parse_args(argv)
    study = results_dir() / "transfer_study.json"
    state = load_state(WORK / "runs.json", study)
    cpu = json.loads(study.read_text())["measured_on"]  # where the study's runs ran
    rows = {RANDOM_INIT: judge(state)}
    probes = {}
    for grid in args.grids:
        probes[grid] = pixel_probes(state, grid)
        rows[f"{PIXEL_ROW} {grid} x {grid} pixels"] = judge(with_gains(state, probes[grid]))
    passes = {}
    for cap in args.caps:
        passes[cap] = capped_passes(state, cap)
        rows[f"{CAPPED_ROW} {cap} images a class"] = judge(with_gains(state, passes[cap]))
    result = {
        "rows": rows,
        "pixel_probes": {str(grid): values for grid, values in probes.items()},
        "capped_passes": {str(cap): values for cap, values in passes.items()},
    }
    result["stand_ins_measured_on"] = machine()["cpu"]
    write_results("transfer_signal_variants", result, markdown(cpu, result["stand_ins_measured_on"], rows))


if __name__ == "__main__":
    main()
