"""The transfer study: which strategy wins, on which data, at which size, and can `auto` tell beforehand?

Runs the grid data sets x sizes (images per class) x backbones x recipes x seeds through the stages'
own cores (ingest, prepare, train) and scores every model on its test split. For each (data set, size,
backbone) cell it also measures the advisor's cheap signals. Then:

- Kendall tau of each signal against the cell's best fine-tuned accuracy;
- leave-one-data-set-out: the advisor's rule fitted on the other data sets (its validation margin, depth
  and smallest leaf chosen on them too) proposes a recipe for each cell of the held-out one, under auto's
  validation check; its accuracy against the cell's best, the share of cells within one standard error of
  it, and its CPU time (signals + the proposed run + the probe's) as a share of the whole cell's grid;
- the same verdicts for fixed policies: always partial, always full, fastai-style (one frozen epoch,
  then everything);
- how repeatable the best recipe itself is across seeds, and what a policy that knew a whole replicate of
  the grid could buy with its CPU (a bound on any policy judged on this grid), beside auto on the same trials;
- the rule fitted on every cell, written to transferline/model/advisor_rule.json for `strategy: auto`.

Writes bench/results/transfer_study.{md,json} and one PNG of learning curves per data set. Every run is
appended to bench/.work/transfer_study/runs.json as it finishes, so a stopped study resumes where it was.

Usage: python -m bench.transfer_study [--quick] [--datasets ...] [--sizes ...] [--backbones ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import study_sources
from bench.common import machine, results_dir, write_results
from bench.transfer_analysis import (
    BACKBONE_HINDSIGHT,
    TARGET_CPU,
    TARGET_SHARE,
    VALIDATION_MARGINS,
    at_rules_margin,
    auto_cpu_parts,
    auto_signal_seconds,
    backbone_of,
    build_cells,
    cell_name,
    cheapest_at_share,
    cheapest_within_one_se,
    compare_experiment,
    compare_recipes,
    cpu_per_wall,
    dataset_bootstrap,
    early_stops,
    expected_range_coverage,
    fit_auto_rule,
    hindsight_checked,
    judge_policy,
    kendall_taus,
    leave_one_dataset_out,
    pick_backbones,
    policy_misses,
    replicate_frontier,
    runs_by_cell_and_recipe,
    standard_error,
    usable_cores,
)
from transferline import atomic
from transferline.model.advisor import BEST_EPOCH, LAST_EPOCH, Cell

log = logging.getLogger("bench.transfer_study")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORK = PROJECT_ROOT / "bench" / ".work" / "transfer_study"
RULE_FILE = PROJECT_ROOT / "transferline" / "model" / "advisor_rule.json"

DATASETS: dict[str, dict[str, Any]] = {
    "fashion_mnist": {"source": "fashion_mnist", "path": "data/external/fashion-mnist"},
    "elpv_defective": {"source": "elpv", "path": "data/external/elpv", "task": "functional_vs_defective"},
    "elpv_levels": {"source": "elpv", "path": "data/external/elpv", "task": "defect_level"},
    # scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes): a third domain, far from
    # ImageNet and unrelated to the others (the two ELPV tasks share their images), written out as a folder.
    "digits": {"source": "folder", "path": "sources/digits"},
    # Two more domains (bench/study_sources.py): scikit-image's LFW faces against non-face patches (natural
    # photos, 100 a class), and Animal-MNIST's silhouettes of 10 species (shape alone, 1,000 a class).
    "faces": {"source": "folder", "path": "sources/faces"},
    "animals": {"source": "folder", "path": "sources/animals"},
    # CIFAR-10's first training batch (10,000 32x32 colour photos of 10 classes), the domain closest to
    # ImageNet. It joined after the rule fitted on the six above had been judged on it, held out
    # (bench/transfer_holdout.py, bench/results/transfer_holdout_cifar10.md).
    "cifar10": {"source": "folder", "path": "sources/cifar10"},
    # Emoji artwork in two designs, classed by Unicode category (9 classes): clip art. It joined after the
    # rule fitted on the seven above had been judged on it (bench/results/transfer_holdout_emoji.md).
    "emoji": {"source": "folder", "path": "sources/emoji"},
}
SIZES: list[int | None] = [10, 30, 100, 400]
BACKBONES = ["mobilenet_v2", "efficientnet_lite0"]
# The grid: the strategies the study compares, partial at two depths (a quarter and half of the backbone's
# blocks frozen). Every policy's CPU share is a share of these recipes' CPU time.
GRID: dict[str, dict[str, Any]] = {
    "feature_extraction": {"strategy": "feature_extraction"},
    "partial_quarter": {"strategy": "partial", "frozen_fraction": 0.25, "epochs": 10, "lr": 2e-3},
    "partial_half": {"strategy": "partial", "frozen_fraction": 0.5, "epochs": 10, "lr": 2e-3},
    "full": {"strategy": "full", "epochs": 10, "lr": 1e-3},
    "discriminative": {"strategy": "discriminative", "frozen_fraction": 0.0, "epochs": 10, "lr": 2e-3},
}
# The recipes the advisor chooses between (its rule's leaves): the grid's, and half frozen for 5 epochs, so
# the rule chooses the schedule's length too. That one is run in every cell and may be a cell's best, but
# stays out of the CPU shares' denominator: a recipe added to choose from must not make every share smaller.
RECIPES: dict[str, dict[str, Any]] = {
    **GRID,
    "partial_half_5ep": {"strategy": "partial", "frozen_fraction": 0.5, "epochs": 5, "lr": 2e-3},
}
# Recipes run in every cell and compared with the grid's, not (yet) among auto's choices: half the blocks
# frozen as partial_half, fine-tuned from the linear probe's head instead of a random one (linear probing then
# fine-tuning, Kumar et al., ICLR 2022: a random head's first gradients distort the pretrained features).
EXPERIMENTS: dict[str, dict[str, Any]] = {
    "partial_half_from_probe": {**RECIPES["partial_half"], "head_init": "probe"},
    # the same, the starting head fitted with the fine-tune's own label smoothing (0.1): a head at the optimum
    # of the loss the fine-tune minimises, less confident than the plain probe, so the first steps pull less
    # on the body
    "partial_half_from_smoothed_probe": {**RECIPES["partial_half"], "head_init": "probe", "probe_label_smoothing": 0.1},
}
EXPERIMENT_NOTES = {
    "partial_half_from_probe": "half the blocks frozen, 10 epochs, from the linear probe's head",
    "partial_half_from_smoothed_probe": "the same, from a probe fitted with the fine-tune's label smoothing, 0.1",
}
# Fixed policies judged beside auto; fastai's `fine_tune`: the head alone for one epoch, then everything.
FASTAI = {"strategy": "discriminative", "frozen_blocks": 0, "gradual_unfreeze": True, "layer_groups": 1}
SEEDS_SMALL, SEEDS_LARGE, SMALL = 3, 1, 100  # seeds per cell: 3 up to 100 images per class, 1 above


def train_overrides(recipe: dict[str, Any], num_blocks: int) -> dict[str, Any]:
    """TrainParams values for a study recipe: the advisor's Recipe fields resolved for the backbone
    (frozen_fraction), any other key passed on as a train param."""
    from dataclasses import fields

    from transferline.model.advisor import Recipe

    names = {f.name for f in fields(Recipe)}
    base = Recipe(**{k: v for k, v in recipe.items() if k in names})
    return {**base.overrides(num_blocks, base.epochs), **{k: v for k, v in recipe.items() if k not in names}}


def seeds_for(size: int | None, quick: bool) -> list[int]:
    if quick:
        return [0]
    return list(range(SEEDS_SMALL if size is not None and size <= SMALL else SEEDS_LARGE))


# ---------------------------------------------------------------- data


# Runs made under another protocol (test set, subsets) are never mixed into a resumed study.
PROTOCOL = "held-out test set v1"
HELD_OUT = 300  # test images per class kept out of every subset; a quarter of a class that has fewer than 1,200
# How many images per class the pool ingests (None: all); it must cover the largest size plus HELD_OUT.
POOL_PER_CLASS: dict[str, int | None] = {"fashion_mnist": max(s for s in SIZES if s is not None) + HELD_OUT}


def pool_raw(work: Path, dataset: str, source: dict[str, Any]) -> Path:
    """Every image the study draws from for this data set, ingested once by the ingest stage's own code."""
    from stages import ingest
    from transferline.config import IngestParams

    directory = work / "data" / dataset / "pool"
    if not (directory / "ingest.json").is_file():
        params = IngestParams(**{**source, "per_class": POOL_PER_CLASS.get(dataset), "seed": 0})
        ingest.run(params, directory / "raw", directory / "ingest.json")
    return directory / "raw"


def held_out(raw: Path) -> dict[str, tuple[list[Path], list[Path]]]:
    """Per class: the order subsets are drawn in, and the test images held out of every subset.

    The order is the seeded per-name one that `ingest.per_class` uses (nested subsets); the held-out
    images are its last HELD_OUT (or quarter). So every size of a data set is scored on the same, large
    test set that no subset contains: at 10 images a class the cell's own test split would hold two
    images per class, a standard error of ten points.
    """
    from transferline.data.subsets import seeded_order

    split = {}
    for class_dir in sorted(p for p in raw.iterdir() if p.is_dir()):
        found = sorted(f for f in class_dir.iterdir() if f.is_file())
        files = [found[i] for i in seeded_order([f.name for f in found], 0)]
        reserve = min(HELD_OUT, len(files) // 4)
        split[class_dir.name] = (files[: len(files) - reserve], files[len(files) - reserve :])
    return split


def linked_folder(target: Path, files: dict[str, list[Path]]) -> Path:
    """A folder data set (class/file) of hard links to the pool's files, written atomically."""
    if target.is_dir():
        return target
    with atomic.atomic_dir(target) as tmp:
        for label, paths in files.items():
            (tmp / label).mkdir()
            for path in paths:
                os.link(path, tmp / label / path.name)
    return target


def prepared_data(
    work: Path, dataset: str, source: dict[str, Any], size: int | None, norm: tuple, image_size: int
) -> tuple[Path, Path] | None:
    """The prepared subset (train and val for the run; a one-image-a-class test split it does not use) and
    the prepared held-out test set, for one input normalisation; made once, reused across runs. A class with
    fewer than `size` images outside the held-out set gives all it has (the cell's `images_per_class` signal
    is the true mean, so the rule sees what was trained on); None when no class reaches `size`, where the
    subset would repeat the data set's largest one."""
    from stages import prepare
    from transferline.config import PrepareParams, PreprocessParams

    split = held_out(pool_raw(work, dataset, source))
    preprocess = PreprocessParams(image_size=image_size, mean=norm[0], std=norm[1])
    variant = f"{image_size}-{'-'.join(f'{x:g}' for x in norm[0])}"
    base = work / "data" / dataset
    test_raw = linked_folder(base / "held_out" / "raw", {label: test for label, (_, test) in split.items()})
    test = base / "held_out" / variant / "prepared"
    if not (test / "dataset.json").is_file():
        prepare.run(PrepareParams(min_per_class=3), preprocess, test_raw, test, test.parent / "prepare.json")
    subset = {label: order[:size] if size is not None else order for label, (order, _) in split.items()}
    if size is not None and max(len(order) for order, _ in split.values()) < size:
        return None
    subset_raw = linked_folder(base / str(size) / "raw", subset)
    prepared = base / str(size) / variant / "prepared"
    if not (prepared / "dataset.json").is_file():
        params = PrepareParams(min_per_class=3, test_fraction=0.01)  # the held-out set is the test set
        prepare.run(params, preprocess, subset_raw, prepared, prepared.parent / "prepare.json")
    return prepared, test


def held_out_test(test_prepared: Path, classes: list[str], image_size: int):
    """Every image of the prepared held-out set (all three of its splits), as one test split."""
    import numpy as np

    from transferline.data.pixel_cache import SplitData, load_split, read_dataset

    if read_dataset(test_prepared)["classes"] != classes:
        raise ValueError(f"{test_prepared}: the held-out classes differ from the subset's {classes}")
    parts = [load_split(test_prepared, name, len(classes), image_size) for name in ("train", "val", "test")]
    return SplitData(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


# ---------------------------------------------------------------- runs


def base_params(backbone: str, quick: bool, **overrides):
    from transferline.config import TrainParams, load_section

    values = load_section("train", TrainParams, PROJECT_ROOT / "params.yaml").model_dump()
    values.update(backbone=backbone, seed=0)
    values.update(overrides)
    if quick:  # the machinery, not the figures: one short epoch of everything
        values.update(epochs=1, warmup_epochs=0.5, batch_size=16)
    return TrainParams(**values)


def cell_context(prepared: Path, backbone: str, quick: bool) -> dict[str, Any]:
    """What measuring or caching a cell's features takes: params, runtime, splits, the pretrained model, the
    cell's feature cache and its key."""
    from transferline.data.pixel_cache import load_split, read_dataset
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.model.backbones import build_model, feature_dim
    from transferline.model.features import cache_key
    from transferline.model.training import configure_threads, resolve_runtime

    params = base_params(backbone, quick, strategy="feature_extraction")
    runtime = resolve_runtime(params)
    configure_threads(params, runtime)
    dataset = read_dataset(prepared)
    spec = PreprocessSpec.from_dict(dataset["preprocess"])
    classes = dataset["classes"]
    model, weights = build_model(backbone, len(classes), True)
    features_dir = prepared.parent / f"features-{backbone}"
    features_dir.mkdir(exist_ok=True)
    return {
        "model": model,
        "train": load_split(prepared, "train", len(classes), spec.image_size),
        "val": load_split(prepared, "val", len(classes), spec.image_size),
        "spec": spec,
        "params": params,
        "runtime": runtime,
        "features_dir": features_dir,
        "key": cache_key(backbone, weights, dataset["data_version"], dataset["preprocess"], feature_dim(model)),
    }


def measure_cell(prepared: Path, backbone: str, quick: bool) -> dict[str, float]:
    """The advisor's signals for this cell, and how long measuring them took."""
    from transferline.model.advice_signals import measure_signals

    context = cell_context(prepared, backbone, quick)
    start, cpu_start = time.perf_counter(), time.process_time()
    signals, timings = measure_signals(**context)
    result = {k: signals.value(k) for k in signals.__dataclass_fields__}
    result["wall_seconds"] = time.perf_counter() - start
    result["seconds"] = time.process_time() - cpu_start  # CPU seconds, comparable with the runs' cpu_seconds
    result["timings"] = timings
    return result


def cache_features(prepared: Path, backbone: str, quick: bool) -> None:
    """The cell's pretrained features, as measuring its signals leaves them cached: a run that starts from the
    probe (head_init: probe) then pays for its head, not for the forward pass auto has already paid."""
    import torch

    from transferline.model.features import cached_features

    c = cell_context(prepared, backbone, quick)
    c["model"].to(c["runtime"].device)
    if c["runtime"].channels_last:  # as measuring the signals runs it
        c["model"].to(memory_format=torch.channels_last)
    splits = {"train": c["train"], "val": c["val"]}
    batch = max(2 * c["params"].batch_size, 64)
    cached_features(c["model"], splits, c["spec"], c["runtime"], c["features_dir"], c["key"], batch)


EPOCH_PARTS = ("train_seconds", "eval_seconds", "feature_seconds", "head_fit_seconds")  # an epoch's timed parts


def train_and_test(
    prepared: Path, test_prepared: Path, backbone: str, overrides: dict[str, Any], seed: int, quick: bool
) -> dict:
    """One training through the train stage's core, scored on the held-out test set no subset contains."""
    import torch

    from stages import train
    from transferline.data.pixel_cache import read_dataset
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.model.trained_model import load_trained_model
    from transferline.model.training import BatchSource, evaluate, resolve_runtime

    params = base_params(backbone, quick, seed=seed, **overrides)
    scratch = prepared.parent / "scratch"
    (scratch / "train_run.json").unlink(missing_ok=True)  # read back below: never a previous run's
    start = time.perf_counter()
    cpu_start = time.process_time()
    metrics = train.run(
        params,
        prepared_dir=prepared,
        models_dir=scratch / "models",
        features_dir=prepared.parent / f"features-{backbone}",
        checkpoint_dir=scratch / "checkpoints",
        metrics_file=scratch / "metrics.json",
        live_dir=None,
    )
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    history = json.loads((scratch / "train_run.json").read_text()).get("history", [])
    dataset = read_dataset(prepared)
    spec = PreprocessSpec.from_dict(dataset["preprocess"])
    test = held_out_test(test_prepared, dataset["classes"], spec.image_size)
    model, _ = load_trained_model(scratch / "models")
    runtime = resolve_runtime(params)
    _, accuracy = evaluate(model, BatchSource(test, runtime.device), spec, runtime, 128)
    return {
        "test_accuracy": float(accuracy),
        "test_images": len(test),
        "val_accuracy": metrics["val_accuracy"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "wall_seconds": wall,
        "cpu_seconds": cpu,  # all threads: what the grid's cost is compared in (a busy machine inflates wall time)
        "threads": torch.get_num_threads(),
        "train_images": int(dataset["splits"]["train"]),
        "val_images": int(dataset["splits"]["val"]),  # what the validation check's margin is scaled by
        # per epoch, for judging an earlier stop from the records: validation accuracy and wall seconds
        "val_history": [epoch["val_accuracy"] for epoch in history],
        "epoch_seconds": [sum(epoch.get(part, 0.0) for part in EPOCH_PARTS) for epoch in history],
    }


# ---------------------------------------------------------------- the grid


def run_grid(
    args: argparse.Namespace,
    checkpoint: Callable[[dict[str, Any]], None],
    results_name: str = "transfer_study",
    experiments: bool = True,
) -> dict[str, Any]:
    """Run every missing (backbone, data set, size, recipe, seed), resuming from the work folder's runs.json
    or else from the committed `results_name` results; the study's experimental recipes too with `experiments`."""
    from transferline.model.backbones import BACKBONES, get_spec, imagenet_normalization

    state_file = args.work / "runs.json"
    state = load_state(state_file, results_dir() / f"{results_name}.json")
    done = {(r["dataset"], r["size"], r["backbone"], r["recipe"], r["seed"]) for r in state["runs"]}
    started = time.perf_counter()
    cpu_name = machine()["cpu"]
    for backbone in args.backbones:  # backbone outermost: one backbone's whole grid is a complete study
        for dataset in args.datasets:
            source = args.sources[dataset]
            for size in args.sizes:
                norm = imagenet_normalization(get_spec(backbone))
                data = prepared_data(args.work, dataset, source, size, norm, args.image_size)
                if data is None:
                    continue
                prepared, test = data
                name = cell_name((dataset, size, backbone))
                if name not in state["signals"]:
                    state["signals"][name] = measure_cell(prepared, backbone, args.quick)
                    atomic.write_json(state_file, state)
                num_blocks = len(BACKBONES[backbone].blocks)
                recipes = {**RECIPES, **(EXPERIMENTS if experiments else {})}
                runs = {**{k: train_overrides(v, num_blocks) for k, v in recipes.items()}, "fastai": FASTAI}
                pending = [
                    recipe
                    for recipe in runs
                    for seed in seeds_for(size, args.quick)
                    if (dataset, size, backbone, recipe, seed) not in done
                ]
                if any(runs[recipe].get("head_init") == "probe" for recipe in pending):
                    cache_features(prepared, backbone, args.quick)
                ran = False
                for recipe, overrides in runs.items():
                    for seed in seeds_for(size, args.quick):
                        if (dataset, size, backbone, recipe, seed) in done:
                            continue
                        ran = True
                        result = train_and_test(prepared, test, backbone, overrides, seed, args.quick)
                        record = {
                            "dataset": dataset,
                            "size": size,
                            "backbone": backbone,
                            "recipe": recipe,
                            "cpu": cpu_name,
                        }
                        state["runs"].append({**record, "seed": seed, "overrides": overrides, **result})
                        atomic.write_json(state_file, state)
                        log.info(
                            "%s %s seed %d: test %.4f (%.0f s)",
                            name,
                            recipe,
                            seed,
                            result["test_accuracy"],
                            result["wall_seconds"],
                        )
                if ran:
                    checkpoint(state)
    state["grid_wall_seconds_this_run"] = time.perf_counter() - started
    return state


def load_state(state_file: Path, results_file: Path) -> dict[str, Any]:
    """Runs so far: the work folder's runs.json, else the last committed results (a study resumes on
    another machine too; each run records the machine it ran on)."""
    for path in (state_file, results_file):
        if path.is_file():
            document = json.loads(path.read_text())
            if document.get("protocol") == PROTOCOL and "runs" in document and "signals" in document:
                return {"protocol": PROTOCOL, "runs": document["runs"], "signals": document["signals"]}
    return {"protocol": PROTOCOL, "runs": [], "signals": {}}


AUTO = "auto (leave one data set out)"
PERFECT_CHECK = "hindsight: auto's proposals under a perfect check"
UNCHECKED = "the rule alone: regret, depth 2, no validation check"
NO_BUDGET = "auto without the CPU penalty"
# auto on the cells that ran three seeds (up to SMALL images a class) and on those that ran one: one SE of a
# cell's best includes the seeds' spread only where there are seeds to spread
AUTO_BY_SEEDS = {SEEDS_SMALL: "auto, cells with three seeds", SEEDS_LARGE: "auto, cells with one seed"}
GRID_ONLY = "auto choosing among the grid's recipes only (no 5-epoch recipe)"
NO_MARGIN = "auto without the CPU penalty or a validation margin"
BEST_EPOCH_CHECK = "auto, the check comparing the fine-tune's best epoch (as before)"
# The fine-tune's validation figure auto's check compares with the probe's, and the committed rule records:
# the last epoch's. The best epoch's is the highest of up to 10 measurements on the same few images, so it
# flatters the fine-tune against the probe's one (the BEST_EPOCH_CHECK row measures the difference).
CHECK_FIGURE = LAST_EPOCH
HINDSIGHT = "hindsight: cheapest within one SE"
# the fixed policies judged beside auto: (label, the recipe every cell gets)
FIXED_POLICIES = (
    ("always partial_quarter", "partial_quarter"),
    ("always partial_half_5ep", "partial_half_5ep"),
    ("always full", "full"),
    ("always feature_extraction", "feature_extraction"),
)
HINDSIGHT_AT_TARGET = f"hindsight: cheapest within one SE in {TARGET_SHARE:.0%} of cells"


def records_of(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of the recipes auto chooses from (not fastai's, judged beside them)."""
    return [r for r in state["runs"] if r["recipe"] in RECIPES]


def seeds_per_cell(records: list[dict[str, Any]]) -> dict[str, int]:
    """Per cell, how many seeds its feature-extraction runs (and so every recipe of a complete cell) ran."""
    return {
        name: len({r["seed"] for r in runs})
        for (name, recipe), runs in runs_by_cell_and_recipe(records).items()
        if recipe == "feature_extraction"
    }


def study_cells(state: dict[str, Any], figure: str = CHECK_FIGURE) -> tuple[list[Cell], dict[str, float]]:
    """The complete cells of the grid's recipes, checked comparing the fine-tune's `figure` on validation,
    and one standard error of each cell's best recipe."""
    records = records_of(state)
    cells = build_cells(records, state["signals"], required=set(RECIPES), grid=set(GRID), figure=figure)
    errors = {}
    for cell in cells:
        key = next(k for k in {(r["dataset"], r["size"], r["backbone"]) for r in records} if cell_name(k) == cell.name)
        best = max(cell.accuracy, key=cell.accuracy.get)
        errors[cell.name] = standard_error(records, key, best)
    return cells, errors


def analyse(state: dict[str, Any]) -> dict[str, Any]:
    """Cells, signal rankings, and the verdicts of auto (leave-one-data-set-out) and the fixed policies."""
    cells, errors = study_cells(state)
    cores = usable_cores()
    picks, loo_rules = leave_one_dataset_out(cells, RECIPES, lambda train: fit_auto_rule(train, RECIPES, errors), cores)
    fine_tuned = [name for name in RECIPES if name != "feature_extraction"]
    judged = at_rules_margin([c for c in cells if c.name in picks], loo_rules)
    signal_seconds = auto_signal_seconds(state["signals"], judged, loo_rules)
    verdicts = {AUTO: judge_policy(judged, picks, errors, signal_seconds, checked=True)}
    for backbone in sorted({backbone_of(c) for c in cells}):
        verdicts[f"auto, {backbone} cells"] = judge_policy(
            [c for c in judged if backbone_of(c) == backbone], picks, errors, signal_seconds, checked=True
        )
    seeds = seeds_per_cell(records_of(state))
    for count, label in AUTO_BY_SEEDS.items():
        subset = [c for c in judged if seeds.get(c.name) == count]
        if subset:
            verdicts[label] = judge_policy(subset, picks, errors, signal_seconds, checked=True)
    verdicts[PERFECT_CHECK] = judge_policy(
        hindsight_checked(records_of(state), judged), picks, errors, signal_seconds, checked=True
    )
    best_epoch_cells, _ = study_cells(state, BEST_EPOCH)
    variants = (
        (GRID_ONLY, cells, GRID, VALIDATION_MARGINS, TARGET_CPU),
        (NO_BUDGET, cells, RECIPES, VALIDATION_MARGINS, None),
        (NO_MARGIN, cells, RECIPES, (0.0,), None),
        (BEST_EPOCH_CHECK, best_epoch_cells, RECIPES, VALIDATION_MARGINS, TARGET_CPU),
    )
    for label, variant_cells, recipes, margins, target in variants:
        other, other_rules = leave_one_dataset_out(
            variant_cells,
            recipes,
            lambda train, r=recipes, m=margins, t=target: fit_auto_rule(train, r, errors, m, cpu_target=t),
            cores,
        )
        variant_judged = at_rules_margin([c for c in variant_cells if c.name in other], other_rules)
        verdicts[label] = judge_policy(
            variant_judged,
            other,
            errors,
            auto_signal_seconds(state["signals"], variant_judged, other_rules),
            checked=True,
        )
    unchecked, unchecked_rules = leave_one_dataset_out(cells, RECIPES, processes=cores)
    unchecked_cells = [c for c in cells if c.name in unchecked]
    verdicts[UNCHECKED] = judge_policy(
        unchecked_cells, unchecked, errors, auto_signal_seconds(state["signals"], unchecked_cells, unchecked_rules)
    )
    for label, recipe in FIXED_POLICIES:
        verdicts[label] = judge_policy(cells, {c.name: recipe for c in cells}, errors, {})
    verdicts[HINDSIGHT] = judge_policy(cells, cheapest_within_one_se(cells, errors), errors, {})
    verdicts[HINDSIGHT_AT_TARGET] = judge_policy(cells, cheapest_at_share(cells, errors, TARGET_SHARE), errors, {})
    with_fastai = fastai_cells(state, cells)
    if with_fastai:
        # judged against the best of the grid's recipes, not against itself
        verdicts["fastai fine_tune"] = judge_outside_grid(with_fastai, "fastai", errors)
    shown = {c.name: c for c in with_fastai}
    rule = fit_auto_rule(cells, RECIPES, errors) if cells else None
    if rule is not None:
        rule["cost"] = cost_model([r for r in state["runs"] if r["recipe"] not in EXPERIMENTS])
    return {
        "cells": [
            {
                "cell": c.name,
                "signals": state["signals"][c.name],
                "accuracy": shown.get(c.name, c).accuracy,  # fastai's too, where it ran
                "seconds": shown.get(c.name, c).seconds,
                "standard_error": errors[c.name],
                "best": max((r for r in c.accuracy if r in RECIPES), key=c.accuracy.get),
                "auto_pick": picks.get(c.name),
            }
            for c in cells
        ],
        "auto_misses": policy_misses(judged, picks, errors),
        "auto_bootstrap": dataset_bootstrap(judged, picks, errors, signal_seconds, checked=True),
        "kendall_tau": kendall_taus(cells, fine_tuned),
        "backbone_pick": pick_backbones(judged, picks, loo_rules, errors, checked=True),
        "repeatability": replicate_frontier(
            records_of(state), judged, errors, set(GRID), auto=(picks, loo_rules, signal_seconds)
        ),
        "schedule": compare_recipes(cells, errors, "partial_half_5ep", "partial_half", picks),
        "experiments": experiments(state, cells, errors),
        "experiment_cpu_seconds": sum(r["cpu_seconds"] for r in state["runs"] if r["recipe"] in EXPERIMENTS),
        "cpu_per_wall": cpu_per_wall(state["runs"]),
        "auto_cpu": auto_cpu_parts(records_of(state), state["signals"], judged, picks, loo_rules),
        "expected_range": expected_range_coverage(judged, picks, loo_rules),
        "early_stops": early_stops(records_of(state), state["signals"], judged, picks, loo_rules, errors),
        "reruns": {
            "runs": sum("rerun" in r for r in state["runs"]),
            "reproduced": sum(r.get("rerun", {}).get("reproduced", False) for r in state["runs"]),
        },
        "verdicts": verdicts,
        "rule": rule,
        "leave_one_out_rules": loo_rules,
    }


def experiments(state: dict[str, Any], cells: list[Cell], errors: dict[str, float]) -> list[dict[str, Any]]:
    """Each experimental recipe against the grid, in the study's cells where it ran as many seeds as the grid."""
    seeds = runs_by_cell_and_recipe(state["runs"])
    results = []
    for recipe in EXPERIMENTS:
        complete = {
            c.name for c in cells if len(seeds.get((c.name, recipe), [])) == len(seeds[c.name, "feature_extraction"])
        }
        with_it = [
            replace(
                c,
                accuracy={**c.accuracy, recipe: statistics.fmean(r["test_accuracy"] for r in seeds[c.name, recipe])},
                seconds={**c.seconds, recipe: statistics.fmean(r["cpu_seconds"] for r in seeds[c.name, recipe])},
            )
            for c in cells
            if c.name in complete
        ]
        results.append(compare_experiment(with_it, errors, recipe, set(RECIPES)))
    return results


def fastai_cells(state: dict[str, Any], cells: list[Cell]) -> list[Cell]:
    """Copies of the cells where fastai's `fine_tune` ran, with it as one more recipe: copies, so the grid's
    own cells never gain a recipe that a rule fitted on them would count as a cell's best."""
    fastai: dict[str, list[dict[str, Any]]] = {}
    for run in state["runs"]:
        if run["recipe"] == "fastai":
            fastai.setdefault(cell_name((run["dataset"], run["size"], run["backbone"])), []).append(run)
    return [
        replace(
            c,
            accuracy={**c.accuracy, "fastai": statistics.fmean(r["test_accuracy"] for r in fastai[c.name])},
            seconds={**c.seconds, "fastai": statistics.fmean(r["cpu_seconds"] for r in fastai[c.name])},
        )
        for c in cells
        if c.name in fastai
    ]


def judge_outside_grid(cells: list[Cell], recipe: str, errors: dict[str, float]) -> dict[str, Any]:
    """A recipe outside the grid (fastai's) judged against the best of the grid's recipes, not itself."""
    within, regrets, spent, grid = [], [], [], []
    for cell in cells:
        best = max(v for k, v in cell.accuracy.items() if k in RECIPES)
        regrets.append(best - cell.accuracy[recipe])
        within.append(regrets[-1] <= errors[cell.name] + 1e-12)
        spent.append(cell.seconds[recipe])
        grid.append(cell.grid_cost())
    return {
        "cells": len(cells),
        "within_one_se": sum(within) / len(within),
        "mean_regret": statistics.fmean(regrets),
        "max_regret": max(regrets),
        "cpu_share_of_grid": sum(spent) / sum(grid),
    }


def cost_model(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Seconds per training image per epoch, by backbone and strategy, from the study's own runs (median);
    feature extraction per image once. `auto` uses it to fit a recipe into `train.time_budget_s`. CPU
    seconds over the run's threads: the wall time the run would take alone on the machine."""
    samples: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        images = run.get("train_images")
        if not images:
            continue
        strategy = run["overrides"]["strategy"]
        epochs = 1 if strategy == "feature_extraction" else max(1, run["epochs_run"])
        samples.setdefault(run["backbone"], {}).setdefault(strategy, []).append(
            run["cpu_seconds"] / run["threads"] / (epochs * images)
        )
    return {b: {s: statistics.median(v) for s, v in by.items()} for b, by in samples.items()}


# ---------------------------------------------------------------- report


def curves(state: dict[str, Any], out_dir: Path) -> list[str]:
    """One PNG per data set: test accuracy against images per class, a line per recipe, a panel per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for dataset in sorted({r["dataset"] for r in state["runs"]}):
        runs = [r for r in state["runs"] if r["dataset"] == dataset and r["size"] is not None]
        backbones = sorted({r["backbone"] for r in runs})
        figure, axes = plt.subplots(1, len(backbones), figsize=(5.5 * len(backbones), 4), squeeze=False)
        for axis, backbone in zip(axes[0], backbones, strict=True):
            for recipe in [*RECIPES, "fastai"]:
                points = {}
                for r in runs:
                    if r["backbone"] == backbone and r["recipe"] == recipe:
                        points.setdefault(r["size"], []).append(r["test_accuracy"])
                if points:
                    sizes = sorted(points)
                    axis.plot(sizes, [statistics.fmean(points[s]) for s in sizes], marker="o", label=recipe)
            axis.set_xscale("log")
            axis.set_xlabel("images per class")
            axis.set_ylabel("test accuracy")
            axis.set_title(f"{dataset}: {backbone}")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        figure.tight_layout()
        path = out_dir / f"transfer_study_{dataset}.png"
        tmp = path.with_suffix(".tmp.png")
        figure.savefig(tmp, dpi=110)
        plt.close(figure)
        tmp.replace(path)
        written.append(path.name)
    return written


def policy_map(verdicts: dict[str, dict[str, Any]], out_dir: Path) -> str:
    """One PNG: each policy's share of cells within one SE of the best against its CPU share of the grid,
    with auto's targets drawn in: the picture of what each policy buys with its CPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5.5))
    axis.fill_between([0, 100 * TARGET_CPU], TARGET_SHARE, 1.0, color="tab:green", alpha=0.12, label="targets")
    points = sorted(
        (100 * v["cpu_share_of_grid"], v["within_one_se"], label)
        for label, v in verdicts.items()
        # no per-backbone rows, nor the perfect check's bound (it shares auto's CPU)
        if v.get("cpu_share_of_grid") is not None and not label.startswith("auto, ") and label != PERFECT_CHECK
    )
    axis.set_xlim(0, max([35.0, *(x + 3 for x, _, _ in points)]))
    axis.set_ylim(0, 1.05)
    renderer = figure.canvas.get_renderer()
    placed = []
    for x, y, label in points:
        is_auto = label == AUTO
        axis.scatter([x], [y], s=60 if is_auto else 30, color="tab:red" if is_auto else "tab:blue", zorder=3)
        for offset in (4, -11, 13, -20):  # above the point first; below, or further out, where a label is
            text = axis.annotate(label, (x, y), fontsize=7, xytext=(4, offset), textcoords="offset points")
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or offset == -20:
                placed.append(box)
                break
            text.remove()
    axis.set_xlabel("CPU time, % of the whole grid")
    axis.set_ylabel("cells within one SE of the best")
    axis.set_title("Policies on the transfer study (leave one data set out)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path = out_dir / "transfer_study_policies.png"
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    tmp.replace(path)
    return path.name


def expected_range_words(coverage: dict[str, Any], leaf: str = "its held-out fold's leaf") -> list[str]:
    """The report's sentence on how the advice's expected accuracy range fares on held-out data sets."""
    if not coverage.get("cells"):
        return []
    return [
        "",
        f"The expected accuracy range the advice states before training ({leaf}: the probe's "
        "accuracy plus the lowest to highest gain over it among that leaf's fitting cells) holds the test "
        f"accuracy auto then got in {coverage['inside']} of {coverage['cells']} cells ({coverage['below']} "
        f"below it, {coverage['above']} above), but it is wide: {coverage['median_width']:.2f} of accuracy at "
        f"the median ({coverage['narrowest']:.2f} to {coverage['widest']:.2f}). The leaf chooses the recipe; "
        "as a forecast of its accuracy on a new data set, the range is only that precise.",
    ]


def replicate_words(repeat: dict[str, Any]) -> list[str]:
    """The report's paragraph and table on what knowing a whole replicate of the grid buys, beside auto."""
    if not repeat.get("trials"):
        return []
    lines = [
        "",
        f"How repeatable the best recipe is: in the {repeat['cells']} cells with three seeds, the recipe best "
        f"on one seed (the cheaper on a tie) is within one SE of the best on the other seeds' mean in "
        f"{repeat['within_one_se']:.0%} of {repeat['trials']} trials. The noise in the target itself sits near "
        "the 80% asked for.",
    ]
    frontier = repeat.get("frontier") or []
    if not frontier:
        return lines
    lines += [
        "",
        "What a policy that knew a whole replicate of the grid could buy: each seed in turn is the replicate, "
        "its results pick the cheapest recipe within a tolerance of its own best (in standard errors of its "
        "test split), and the pick is judged on the other seeds like every policy here (its CPU too, as a "
        "share of their grid). A replicate is everything training the cell could tell a policy short of "
        "running the grid again.",
        "",
        "| policy, on the same trials | within one SE | CPU share of the grid |",
        "|---|---|---|",
    ]
    for row in frontier:
        label = (
            "the replicate's best recipe"
            if row["tolerance_se"] == 0
            else f"the replicate's cheapest within {row['tolerance_se']:g} SE of its best"
        )
        lines.append(f"| {label} | {row['within_one_se']:.1%} | {row['cpu_share_of_grid']:.1%} |")
    auto = repeat.get("auto")
    if auto:
        lines.append(
            f"| auto (its fold's rule and check, signals and probe paid) | {auto['within_one_se']:.1%} "
            f"| {auto['cpu_share_of_grid']:.1%} |"
        )
    meets = [
        row
        for row in frontier
        if row["within_one_se"] >= TARGET_SHARE - 1e-12 and row["cpu_share_of_grid"] <= TARGET_CPU + 1e-12
    ]
    lines += [
        "",
        (
            f"Knowing a replicate meets both targets at {len(meets)} of {len(frontier)} tolerances"
            + (f" (at best {max(r['within_one_se'] for r in meets):.1%} of trials)" if meets else "")
            + ": the pair asks a policy that sees signals measured in seconds to pick about as well as one "
            "that had trained every recipe on the cell once."
        ),
    ]
    return lines


def markdown(
    state: dict[str, Any], analysis: dict[str, Any], pictures: list[str], cpu: float, final: bool, grid: dict[str, Any]
) -> str:
    lines = ["# Transfer study", ""]
    if not final:
        lines += ["**Partial: the grid is still running (or was stopped); the figures cover the cells listed.**", ""]
    sizes = ", ".join("all" if s is None else str(s) for s in grid["sizes"])
    lines += [
        f"This run's grid, run to {'completion' if final else 'this point'}: {', '.join(grid['backbones'])} x "
        f"{', '.join(grid['datasets'])} x {sizes} images per class (a smaller class gives all it has; a size "
        "no class reaches is skipped); earlier runs' cells are kept. "
        f"The analysis uses every cell with all recipes run: {len(analysis['cells'])}, "
        f"{cells_in_words(analysis['cells'])}." + (" The rule below is fitted on all of them." if final else ""),
        "",
        f"The grid's recipes: {', '.join(GRID)} (10 epochs each where they fine-tune). Every CPU share below is "
        "a share of their CPU time. `auto` also chooses from "
        + ", ".join(f"`{name}`" for name in RECIPES if name not in GRID)
        + " (half the blocks frozen, 5 epochs): it is run in every cell and counts for each cell's best, "
        "but stays out of the shares' denominator, so adding a choice cannot make every share smaller.",
        "",
    ]
    lines += [
        f"Machine: {runs_machine(state['runs'])}. Grid CPU time "
        f"(every run and signal measurement, summed over threads): {cpu / 3600:.2f} h"
        + (
            f"; the experiments below took {analysis['experiment_cpu_seconds'] / 3600:.2f} h more."
            if analysis.get("experiment_cpu_seconds")
            else "."
        ),
        "",
        *rerun_words(analysis.get("reruns") or {}),
        f"Test sets: per data set, up to {HELD_OUT} images per class (a quarter of a smaller class) held out of "
        "every subset, so every size is scored on the same images; each subset's own validation split picks "
        "the epoch and the probe's L2.",
        "",
    ]
    lines += [
        "## Policies against each cell's best recipe",
        "",
        "| policy | cells | within one SE of the best | mean regret | max regret | CPU share of the grid |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in analysis["verdicts"].items():
        if not v.get("cells"):
            continue
        lines.append(
            f"| {name} | {v['cells']} | {v['within_one_se']:.0%} | {v['mean_regret']:.4f} | "
            f"{v['max_regret']:.4f} | {v['cpu_share_of_grid']:.1%} |"
        )
    lines += [
        "",
        f"Targets for auto: within one SE in >= {TARGET_SHARE:.0%} of cells, at <= {TARGET_CPU:.0%} of the grid's "
        "CPU time.",
        "",
        "`auto` is judged as it runs: the rule, fitted without the cell's data set, proposes a recipe; where "
        "that is fine-tuning, the fine-tuned model is kept only if its validation accuracy at its last epoch "
        "beats the linear probe's by more than the rule's margin (in standard errors of that difference on the cell's "
        "validation split: sqrt(0.5 / n) each), else the probe's head is (per seed, from the runs' own "
        "validation figures; the probe's run is counted in its CPU). The rule minimises the regret plus a CPU "
        f"penalty whose weight is the smallest that keeps the training data sets' CPU at {TARGET_CPU:.0%} of "
        "their grid; its validation margin, tree depth and smallest leaf are chosen by leaving data sets out "
        "within the training data sets, so the held-out one judges those choices too. "
        f"'{NO_BUDGET}': the same without the penalty; '{NO_MARGIN}': nor a margin (a fine-tune kept "
        f"wherever it beats the probe on validation at all). '{BEST_EPOCH_CHECK}': the check comparing the "
        "fine-tune's best epoch, the highest of its epochs' validation figures and so flattering, and the "
        "rule fitted under that check (only the half-frozen 10-epoch runs record every epoch; another "
        f"fine-tune reads its best epoch under both). '{UNCHECKED}' is the method used before the "
        "check: the rule's pick as it is. "
        f"'{AUTO_BY_SEEDS[SEEDS_SMALL]}' and '{AUTO_BY_SEEDS[SEEDS_LARGE]}': auto on the cells up to {SMALL} "
        f"images a class, which ran {SEEDS_SMALL} seeds, and on the larger ones, which ran {SEEDS_LARGE}; a "
        "cell's one SE is its test split's binomial error or its seeds' spread, whichever is larger, so a cell "
        "run once has no seeds' spread in it and sets the stricter bar.",
    ]
    lines += bootstrap_words(analysis.get("auto_bootstrap") or {})
    lines += expected_range_words(analysis.get("expected_range") or {})
    lines += perfect_check_words(analysis["verdicts"]) + miss_words(analysis.get("auto_misses") or [])
    lines += cpu_words(analysis.get("auto_cpu") or {}) + early_stop_words(analysis.get("early_stops") or [])
    lines += schedule_words(analysis.get("schedule") or {})
    for experiment in analysis.get("experiments") or []:
        lines += experiment_words(experiment)
    lines += cpu_per_wall_words(analysis.get("cpu_per_wall") or {})
    lines += replicate_words(analysis.get("repeatability") or {})
    bound = analysis["verdicts"].get(HINDSIGHT, {})
    at_target = analysis["verdicts"].get(HINDSIGHT_AT_TARGET, {})
    if bound.get("cells") and at_target.get("cells"):
        verdict = (
            "so the pair of targets is not out of reach on this grid: a policy meets both only by picking "
            "feature extraction wherever it is within one SE and giving up the cells where fine-tuning costs most."
            if at_target["cpu_share_of_grid"] <= TARGET_CPU
            else "so no policy meets both targets on this grid."
        )
        lines += [
            "",
            "The two hindsight rows are bounds, not policies: picks made knowing the results. The first takes "
            "in each cell the cheapest recipe within one SE of the best: "
            f"{bound['cpu_share_of_grid']:.1%} of the grid, the least a policy right everywhere can spend. The "
            f"second may miss in {1 - TARGET_SHARE:.0%} of the cells, and misses where that saves most: "
            f"{at_target['cpu_share_of_grid']:.1%}, {verdict}",
        ]
    lines.append("")
    backbone_verdicts = analysis.get("backbone_pick", {})
    if any(v.get("groups") for v in backbone_verdicts.values()):
        lines += [
            "## Choosing the backbone (`train.backbone: auto`)",
            "",
            "Per data set and size run with every backbone: the backbone each policy picks, trained with its "
            "auto recipe, against the best backbone and recipe of that data set and size.",
            "",
            "| policy | data set x size | within one SE of the best | mean regret | max regret |",
            "|---|---|---|---|---|",
        ]
        for name, v in backbone_verdicts.items():
            lines.append(
                f"| {name} | {v['groups']} | {v['within_one_se']:.0%} | {v['mean_regret']:.4f} | "
                f"{v['max_regret']:.4f} |"
            )
        lines += backbone_bound_words(backbone_verdicts)
        lines.append("")
    lines.append("")
    if final and analysis["rule"] is not None:
        lines += [
            "## The rule `strategy: auto` follows (transferline/model/advisor_rule.json)",
            "",
            "Fitted on every cell above; each leaf names the recipe with the least total regret plus CPU "
            "penalty on its cells after the validation check, which keeps a fine-tuned model only if it beats "
            "the probe on validation by more than the margin.",
            "",
            *fit_method_words(analysis["rule"].get("fit", {})),
            "",
            "```",
            *rule_lines(analysis["rule"]["tree"]),
            "```",
            "",
        ]
    lines += ["## Kendall tau of each signal against the best fine-tuned accuracy", ""]
    datasets = sorted({c["cell"].split("/")[0] for c in analysis["cells"]})
    lines += ["| signal | all cells | " + " | ".join(datasets) + " |", "|---" * (2 + len(datasets)) + "|"]
    for signal, row in analysis["kendall_tau"].items():
        cells = [row["all"], *[row.get(d) for d in datasets]]
        lines.append(f"| {signal} | " + " | ".join("n/a" if x is None else f"{x:+.2f}" for x in cells) + " |")
    lines += [
        "",
        "## Cells",
        "",
        "| cell | " + " | ".join([*RECIPES, "fastai"]) + " | best | auto pick | SE |",
        "|---" * (len(RECIPES) + 5) + "|",
    ]
    for c in analysis["cells"]:
        accs = " | ".join(f"{c['accuracy'][r]:.3f}" if r in c["accuracy"] else "-" for r in [*RECIPES, "fastai"])
        lines.append(f"| {c['cell']} | {accs} | {c['best']} | {c['auto_pick'] or '-'} | {c['standard_error']:.3f} |")
    lines += ["", *[f"![{p}]({p})" for p in pictures], ""]
    return "\n".join(lines)


def backbone_bound_words(verdicts: dict[str, Any]) -> list[str]:
    """What the backbone choice could gain, against what its signals gain."""
    bound = verdicts.get(BACKBONE_HINDSIGHT) or {}
    scored = {name: v for name, v in verdicts.items() if name != BACKBONE_HINDSIGHT and v.get("groups")}
    if not bound.get("groups") or not scored:
        return []
    best_name = max(scored, key=lambda name: (scored[name]["within_one_se"], -scored[name]["mean_regret"]))
    return [
        "",
        f"'{BACKBONE_HINDSIGHT}' is a bound, not a policy: it reaches {bound['within_one_se']:.0%}, the best "
        f"policy here ({best_name}) {scored[best_name]['within_one_se']:.0%}. The signals measured before "
        "training rank the two backbones no better than a fixed choice on these data sets: what decides is how "
        "each one's fine-tune turns out, which they do not foresee.",
    ]


def bootstrap_words(bootstrap: dict[str, Any]) -> list[str]:
    """How precisely the grid measures auto's two figures, whether it can tell them from the targets, and
    how they move together from one data set to the next."""
    if not bootstrap:
        return []
    share_low, share_high = bootstrap["within_one_se"]
    cpu_low, cpu_high = bootstrap["cpu_share_of_grid"]
    each_inside = share_low <= TARGET_SHARE <= share_high and cpu_low <= TARGET_CPU <= cpu_high
    verdict = (
        "each target lies inside its interval, so on this grid neither figure can be told from its target"
        if each_inside
        else "a target outside its interval is missed or met beyond this grid's noise"
    )
    per_dataset = bootstrap.get("per_dataset") or {}
    lines = [
        "",
        f"How precisely {bootstrap['datasets']} data sets pin auto's figures: drawing the data sets again with "
        f"replacement ({bootstrap['draws']:,} draws, each bringing all its cells, since cells of one data set "
        f"are not independent trials), the share within one SE spans {share_low:.0%} to {share_high:.0%} and "
        f"the CPU share {cpu_low:.1%} to {cpu_high:.1%} (95%): {verdict}. Both at once hold in "
        f"{bootstrap['both_targets_met']:.0%} of the draws. Per data set (held out):",
        "",
        "| data set | cells | within one SE | CPU share of its grid |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {v['cells']} | {v['within_one_se']:.0%} | {v['cpu_share_of_grid']:.1%} |"
        for name, v in per_dataset.items()
    ]
    if len(per_dataset) > 2:
        shares = [v["within_one_se"] for v in per_dataset.values()]
        cpus = [v["cpu_share_of_grid"] for v in per_dataset.values()]
        if len(set(shares)) > 1 and len(set(cpus)) > 1:
            r = statistics.correlation(shares, cpus)
            lines += [
                "",
                f"Across data sets the two figures move {'together' if r > 0 else 'apart'} (Pearson r "
                f"{r:+.2f}), so whether a target holds depends on the grid's mix of data sets as well as "
                "on the rule.",
            ]
    return lines


def perfect_check_words(verdicts: dict[str, dict[str, Any]]) -> list[str]:
    """What a better validation check could recover: auto's proposals with, per seed, the better test
    accuracy of the fine-tune and the probe (the best any check can do)."""
    auto, perfect = verdicts.get(AUTO, {}), verdicts.get(PERFECT_CHECK, {})
    if not auto.get("cells") or not perfect.get("cells"):
        return []
    recovered = round((perfect["within_one_se"] - auto["within_one_se"]) * auto["cells"])
    return [
        "",
        f"'{PERFECT_CHECK}' is a bound, not a policy: auto's own proposals, with per seed the better test "
        f"accuracy of the fine-tune and the probe, what no validation check can beat. It is within one SE in "
        f"{perfect['within_one_se']:.0%} of cells against auto's {auto['within_one_se']:.0%}: a better check "
        f"(a larger validation split, another margin) could recover {recovered} of auto's cells"
        + ("; every miss is in the rule's proposal." if recovered == 0 else "."),
    ]


def miss_words(misses: list[dict[str, Any]]) -> list[str]:
    """Where auto misses: each cell's proposal, its outcome after the check, and the recipe that did best."""
    if not misses:
        return []
    to_probe = sum(m["proposed"] == "feature_extraction" for m in misses)
    lines = [
        "",
        f"Where auto misses ({len(misses)} cells; in {to_probe} it proposed feature extraction where a fine-tune "
        f"won, in {len(misses) - to_probe} another fine-tune than the best):",
        "",
        "| cell | proposed | outcome after the check | best recipe | its accuracy | behind by (SE) |",
        "|---|---|---|---|---|---|",
    ]
    for m in misses:
        behind = (m["best_accuracy"] - m["outcome"]) / m["standard_error"]
        lines.append(
            f"| {m['cell']} | {m['proposed']} | {m['outcome']:.3f} | {m['best']} | {m['best_accuracy']:.3f} | "
            f"{behind:.1f} |"
        )
    return lines


def cpu_words(parts: dict[str, float]) -> list[str]:
    """Where auto's CPU goes, and what making each part free would leave: the bounds on a cheaper auto."""
    if not parts.get("grid"):
        return []
    target = TARGET_CPU * parts["grid"]

    def without(part: str) -> str:
        left = parts["spent"] - parts[part]
        return f"{left:.0f} s ({left / parts['grid']:.2%})"

    skipped = parts.get("random_features_skipped", 0.0)
    random_pass = f"the random-init forward pass behind the pretrained gain {parts['random_features']:.0f} s" + (
        f" (auto skips it wherever its rule does not split on that signal: {skipped:.0f} s not spent)"
        if skipped
        else ""
    )
    freed = (
        f"the first would leave auto at {without('random_features')} of the grid, the second at "
        if parts["random_features"]
        else "the random pass being skipped already, the second would leave auto at "
    )
    return [
        "",
        f"Where auto's CPU goes: {parts['spent']:.0f} s of the grid's {parts['grid']:.0f} s (the target: "
        f"{target:.0f} s). Measuring the signals takes {parts['signals']:.0f} s, of which {random_pass}; the "
        f"fine-tunes that the validation check threw away cost {parts['rejected_fine_tunes']:.0f} s. Even free, "
        + freed
        + f"{without('rejected_fine_tunes')} (stopping those fine-tunes early could save at most that).",
    ]


def rerun_words(reruns: dict[str, int]) -> list[str]:
    """How many runs were trained a second time (to record what the first run did not) and gave the same."""
    if not reruns.get("runs"):
        return []
    return [
        f"{reruns['runs']} runs were trained again to record their per-epoch figures; {reruns['reproduced']} of "
        "them reproduced their recorded test and validation accuracy exactly.",
        "",
    ]


def early_stop_words(rows: list[dict[str, Any]]) -> list[str]:
    """auto with an earlier stop of the fine-tunes it proposed, replayed from the runs' per-epoch records."""
    rows = [row for row in rows if row["within_one_se"] is not None]  # none before a cell is judged
    if not rows:
        return []
    lines = [
        "",
        "Stopping a proposed fine-tune early, replayed from each run's per-epoch validation accuracy: from the "
        "epoch given on, once its best validation accuracy so far trails the probe's by more than the gap, the "
        "probe's head ships and the remaining epochs are not paid for.",
        "",
        "| from epoch | gap (SE) | within one SE | CPU share | fine-tunes the final check kept, stopped |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['after_epoch']} | {row['gap_se']:g} | {row['within_one_se']:.0%} | "
            f"{row['cpu_share_of_grid']:.1%} | {row['kept_fine_tunes_stopped']} |"
        )
    return lines


def experiment_words(result: dict[str, Any]) -> list[str]:
    """An experimental recipe against the grid's, in the cells where it ran."""
    if not result.get("cells"):
        return []
    words = []
    for reference, versus in result["against"].items():
        words.append(
            f"against `{reference}` {versus['mean_difference']:+.3f} of test accuracy on average "
            f"({versus['min_difference']:+.3f} to {versus['max_difference']:+.3f}; within one SE of it in "
            f"{versus['within_one_se']} cells) at {versus['cpu_ratio']:.0%} of its CPU"
        )
    return [
        "",
        f"Experiment, not among auto's choices: `{result['recipe']}` ({EXPERIMENT_NOTES.get(result['recipe'], '')}), "
        f"in the {result['cells']} cells where every seed of it ran: {'; '.join(words)}. It is within one SE of "
        f"the best of auto's recipes in {result['within_one_se_of_best']} of {result['cells']} cells, and above "
        f"it in {result['above_best']}.",
    ]


def cpu_per_wall_words(ratios: dict[str, float]) -> list[str]:
    """How busy each recipe's threads were, as measured: recipes run in different sittings differ."""
    if not ratios:
        return []
    listed = ", ".join(f"{recipe} {ratio:.2f}" for recipe, ratio in ratios.items())
    return [
        "",
        f"CPU seconds over wall seconds, median per recipe (2 threads: at most 2): {listed}. The recipes were run "
        "in several sittings, and how busy their threads were differs between them; the CPU shares compare "
        "the CPU seconds as measured, so a share carries that spread too.",
    ]


def schedule_words(schedule: dict[str, Any]) -> list[str]:
    """The shorter schedule against the grid's, cell by cell."""
    if not schedule.get("cells"):
        return []
    return [
        "",
        f"The schedule's length: `{schedule['recipe']}` against `{schedule['reference']}` (10 epochs) scores "
        f"{schedule['mean_difference']:+.3f} of test accuracy on average ({schedule['min_difference']:+.3f} to "
        f"{schedule['max_difference']:+.3f}), at {schedule['cpu_ratio']:.0%} of its CPU; it is within one SE "
        f"of it in {schedule['within_one_se']} of {schedule['cells']} cells, the best recipe in "
        f"{schedule['best']}, and auto's pick in {schedule['picked']}.",
    ]


def fit_method_words(fit: dict[str, Any]) -> list[str]:
    """The chosen validation margin, tree depth and smallest leaf, and a table of what each candidate
    scored when data sets were left out."""
    if not fit:
        return []
    margin = fit.get("margin_se", 0.0)
    words = f"Validation margin {margin:g} SE, depth {fit['depth']}, smallest leaf {fit['min_leaf']} cells"
    if fit.get("cpu_target") is not None and fit["cpu_weight"] > 0:
        words += f", CPU penalty weight {fit['cpu_weight']:.3g} (the smallest meeting {fit['cpu_target']:.0%})"
    elif fit.get("cpu_target") is not None:
        words += f", no CPU penalty needed (the regret alone spends at most {fit['cpu_target']:.0%} here)"
    scores = fit.get("chosen_from", {})
    if not scores:
        return [words + "."]
    parsed = {tuple(name.split("/")): v for name, v in scores.items()}
    margins = sorted({m for m, _, _ in parsed}, key=float)
    methods = sorted({(int(d), int(leaf)) for _, d, leaf in parsed})
    lines = [
        words + ", chosen leaving one data set out: within one SE of the best (mean regret) of each candidate,",
        "",
        "| validation margin (SE) | " + " | ".join(f"depth {d}, leaf {leaf}" for d, leaf in methods) + " |",
        "|---" * (1 + len(methods)) + "|",
    ]
    for margin in margins:
        row = [parsed[margin, str(d), str(leaf)] for d, leaf in methods]
        lines.append(
            f"| {float(margin):g} | "
            + " | ".join(f"{v['within_one_se']:.0%} ({v['mean_regret']:.4f})" for v in row)
            + " |"
        )
    return lines


def cells_in_words(cells: list[dict[str, Any]]) -> str:
    """The analysed cells as 'backbones x data set (sizes); ...', from the cells themselves: a study resumed
    with other arguments keeps the cells of earlier runs."""
    by_dataset: dict[str, set[int | None]] = {}
    backbones = sorted({c["cell"].split("/")[2] for c in cells})
    for cell in cells:
        dataset, size, _ = cell["cell"].split("/")
        by_dataset.setdefault(dataset, set()).add(None if size == "None" else int(size))
    order = {d: i for i, d in enumerate(DATASETS)}
    parts = [
        f"{d} ({', '.join('all' if s is None else str(s) for s in sorted(by_dataset[d], key=lambda x: x or 1 << 30))})"
        for d in sorted(by_dataset, key=lambda d: (order.get(d, len(order)), d))
    ]
    return f"{' and '.join(backbones)} on " + "; ".join(parts)


def rule_lines(node: dict[str, Any], indent: str = "") -> list[str]:
    """A rule's tree as nested if/else lines people can read."""
    if "recipe" in node:
        return [f"{indent}{node['recipe']}  ({node['cells']} cells)"]
    return [
        f"{indent}if {node['signal']} <= {node['threshold']:g}:",
        *rule_lines(node["le"], indent + "    "),
        f"{indent}else:",
        *rule_lines(node["gt"], indent + "    "),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny generated data, 2 epochs: checks the machinery")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--sizes", nargs="+", default=[str(s) for s in SIZES], help="images per class; 'all'")
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--work", type=Path, default=None, help="where data and runs.json live (resumable)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: analyse the runs recorded so far again and rewrite the report and the rule",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.sizes = [None if s == "all" else int(s) for s in args.sizes]
    args.work = args.work or WORK
    out_dir = results_dir()
    if args.quick:
        args.work = args.work if args.work != WORK else WORK.parent / "transfer_study_quick"
        args.datasets, args.sizes, args.backbones, args.image_size = ["tiny_a", "tiny_b"], [6], ["mobilenet_v2"], 32
    if args.report_only:
        report_again(args, out_dir)
        return
    if args.quick:
        args.sources = quick_sources(args.work)
    else:
        unknown = sorted(set(args.datasets) - set(DATASETS))
        if unknown:
            parser.error(f"unknown data sets {unknown}; the study knows {sorted(DATASETS)}")
        args.sources = {name: resolve_source(name, args.work) for name in args.datasets}
    args.work.mkdir(parents=True, exist_ok=True)
    state = run_grid(args, lambda partial: report(partial, args, out_dir, final=False))
    report(state, args, out_dir, final=True)


def report_again(args: argparse.Namespace, out_dir: Path) -> None:
    """The report and rule rewritten from the runs recorded so far (the work folder's, else the committed
    results), with the grid those results describe: for a change in the analysis, not in the runs."""
    committed = out_dir / "transfer_study.json"
    state = load_state(args.work / "runs.json", committed)
    if not state["runs"]:
        raise SystemExit(f"no recorded runs to report: neither {args.work / 'runs.json'} nor {committed} holds any")
    grid = json.loads(committed.read_text()).get("grid", {}) if committed.is_file() else {}
    for key in ("backbones", "datasets", "sizes"):
        setattr(args, key, grid.get(key, getattr(args, key)))
    report(state, args, out_dir, final=bool(grid.get("complete", True)))


def runs_machine(runs: list[dict[str, Any]]) -> str:
    """Where the runs ran (each run records its CPU and threads), not where the report is written: a study
    resumed or re-reported on another machine must not pass its runs off as that machine's."""
    cpus = sorted({str(run["cpu"]) for run in runs})
    threads = sorted({int(run["threads"]) for run in runs})
    return f"{' and '.join(cpus) or 'none yet'}, {' or '.join(map(str, threads)) or '-'} threads a run"


def report(state: dict[str, Any], args: argparse.Namespace, out_dir: Path, final: bool) -> None:
    """Write the results so far; the rule only once the whole grid has run (a partial grid would fit a
    rule to whichever cells happened to finish)."""
    state["machine"] = machine()
    analysis = analyse(state)
    grid_runs = [r for r in state["runs"] if r["recipe"] not in EXPERIMENTS]
    cpu = sum(r["cpu_seconds"] for r in grid_runs) + sum(s["seconds"] for s in state["signals"].values())
    pictures = [policy_map(analysis["verdicts"], out_dir), *curves(state, out_dir)]
    payload = {
        "protocol": PROTOCOL,
        "held_out_per_class": HELD_OUT,
        "machine": state["machine"],
        "measured_on": runs_machine(state["runs"]),
        "complete": final,
        "grid_cpu_seconds": cpu,
        **analysis,
        "runs": state["runs"],
        "signals": state["signals"],
    }
    grid = {"backbones": args.backbones, "datasets": args.datasets, "sizes": args.sizes, "complete": final}
    payload["grid"] = grid
    write_results("transfer_study", payload, markdown(state, analysis, pictures, cpu, final, grid))
    if final and analysis["rule"] is not None:
        rule_file = RULE_FILE if not args.quick else out_dir / "advisor_rule.json"
        fitted_on = sorted({c["cell"] for c in analysis["cells"]})
        document = {
            **analysis["rule"],
            "image_size": args.image_size,
            "fitted_on": fitted_on,
            "machine": runs_machine(state["runs"]),
        }
        atomic.write_json(rule_file, document)
        log.info("advisor rule written to %s", rule_file)


def resolve_source(dataset: str, work: Path, datasets: dict[str, dict[str, Any]] = DATASETS) -> dict[str, Any]:
    """The ingest source of a data set; the folder data sets are written from their packages on first use."""
    source = dict(datasets[dataset])
    writer = study_sources.folder_writers().get(dataset)
    if writer is not None:
        source["path"] = str(writer(work / source["path"]))
    return source


def quick_sources(work: Path) -> dict[str, dict[str, Any]]:
    """Two tiny folder data sets of coloured shapes, generated once: enough to exercise every step."""
    from PIL import Image, ImageDraw

    sources = {}
    for name, classes in {"tiny_a": ("red", "green", "blue"), "tiny_b": ("square", "disc")}.items():
        root = work / "sources" / name
        if not root.is_dir():
            for label in classes:
                (root / label).mkdir(parents=True)
                for i in range(12):
                    image = Image.new("RGB", (40, 40), (30 + 5 * i, 30, 30))
                    draw = ImageDraw.Draw(image)
                    fill = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}.get(
                        label, (200, 200, 200)
                    )
                    box = (6 + i % 5, 6 + i % 7, 30 + i % 4, 32)
                    (draw.rectangle if label in ("square", "red", "green", "blue") else draw.ellipse)(box, fill=fill)
                    image.save(root / label / f"{label}-{i}.png")
        sources[name] = {"source": "folder", "path": str(root)}
    return sources


if __name__ == "__main__":
    main()
