"""The transfer study: which strategy wins, on which data, at which size, and can `auto` tell beforehand?

Runs the grid data sets x sizes (images per class) x backbones x recipes x seeds through the stages'
own cores (ingest, prepare, train) and scores every model on its test split. For each (data set, size,
backbone) cell it also measures the advisor's cheap signals. Then:

- Kendall tau of each signal against the cell's best fine-tuned accuracy;
- leave-one-data-set-out: the advisor's rule fitted on the other data sets (the nearest cells, how many it
  pools, its CPU weight and validation margin chosen on them too: bench/nearest_fit.py) proposes a recipe
  for each cell of the held-out one, under auto's validation check; its accuracy against the cell's best,
  the share of cells within one standard error of it, and its CPU time (signals + the proposed run + the
  probe's) as a share of the whole cell's grid; the same for the tree auto followed before;
- the same verdicts for fixed policies: always partial, always full, fastai-style (one frozen epoch,
  then everything);
- how repeatable the best recipe itself is across seeds, and what a policy that knew a whole replicate of
  the grid could buy with its CPU (a bound on any policy judged on this grid), beside auto on the same trials;
- the rule fitted on every cell, written to transferline/model/advisor_rule.json for `strategy: auto` (and
  the tree fitted on every cell, kept in the results as `tree_rule`).

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
from bench.backbone_fit import pick_backbones, with_backbone_comparison
from bench.common import machine, results_dir, write_results
from bench.nearest_fit import CPU_WEIGHTS, SIZE_AND_PROBE, fit_nearest_rule
from bench.transfer_analysis import (
    AUTO_LOSS,
    REGRET,
    TARGET_SHARE,
    VALIDATION_MARGINS,
    at_rules_margin,
    auto_cpu_parts,
    auto_signal_seconds,
    backbone_of,
    build_cells,
    cell_id,
    cell_name,
    cells_ran_on,
    cheapest_at_share,
    cheapest_within_one_se,
    compare_experiment,
    compare_recipes,
    costed_on,
    cpu_of,
    cpu_per_wall,
    dataset_bootstrap,
    early_stops,
    expected_range_coverage,
    fit_tree_rule,
    grid_cpu,
    hindsight_checked,
    judge_policy,
    kendall_taus,
    leave_one_dataset_out,
    machine_ratios,
    policy_misses,
    replicate_frontier,
    runs_by_cell_and_recipe,
    signals_costed_on,
    standard_error,
    usable_cores,
    whole_seeds,
)
from bench.transfer_design import (
    AUTO,
    AUTO_BY_SEEDS,
    BACKBONES,
    BEST_EPOCH_CHECK,
    CHECK_FIGURE,
    DATASETS,
    EXPERIMENTS,
    FASTAI,
    FIXED_POLICIES,
    GRID,
    GRID_ONLY,
    HELD_OUT,
    HINDSIGHT,
    HINDSIGHT_AT_TARGET,
    NO_BUDGET,
    NO_MARGIN,
    PERFECT_CHECK,
    PLAIN_REGRET,
    PROTOCOL,
    RECIPES,
    SEEDS_LARGE,
    SEEDS_SMALL,
    SIZES,
    SMALL,
    TREE_RULE,
    UNCHECKED,
)
from bench.transfer_report import curves, markdown, policy_map, runs_machine
from transferline import atomic
from transferline.model.advisor import BEST_EPOCH, Cell
from transferline.model.nearest_cells import NEAREST_CELLS

log = logging.getLogger("bench.transfer_study")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORK = PROJECT_ROOT / "bench" / ".work" / "transfer_study"
RULE_FILE = PROJECT_ROOT / "transferline" / "model" / "advisor_rule.json"
IMAGE_SIZE = 96  # the side the study trains and measures signals at


def train_overrides(recipe: dict[str, Any], num_blocks: int) -> dict[str, Any]:
    """TrainParams values for a study recipe: the advisor's Recipe fields resolved for the backbone
    (frozen_fraction), any other key passed on as a train param."""
    from dataclasses import fields

    from transferline.model.advisor import Recipe

    names = {f.name for f in fields(Recipe)}
    base = Recipe(**{k: v for k, v in recipe.items() if k in names})
    return {**base.overrides(num_blocks, base.epochs), **{k: v for k, v in recipe.items() if k not in names}}


def seeds_for(size: int | None, quick: bool, chosen: list[int] | None = None) -> list[int]:
    """The seeds a cell runs: `chosen` when given (more seeds for cells the grid ran once), else three up to
    SMALL images a class and one above."""
    if chosen is not None:
        return chosen
    if quick:
        return [0]
    return list(range(SEEDS_SMALL if size is not None and size <= SMALL else SEEDS_LARGE))


# ---------------------------------------------------------------- data


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


def features_folder(prepared: Path, backbone: str, layers: tuple[float, ...]) -> Path:
    """Where a cell's pretrained features are cached, one folder per set of depths the head reads: runs with
    the last layer's (fine-tunes from the probe) and with several (feature_extraction) never evict each other."""
    from transferline.model.backbones import LAST_LAYER

    suffix = "" if tuple(layers) == LAST_LAYER else "-layers-" + "-".join(f"{depth:g}" for depth in layers)
    return prepared.parent / f"features-{backbone}{suffix}"


def cell_context(prepared: Path, backbone: str, quick: bool, layers: tuple[float, ...] | None = None) -> dict[str, Any]:
    """What measuring or caching a cell's features takes: params, runtime, splits, the pretrained model (its
    head reading the body's depths `layers`; the last layer alone by default), the cell's feature cache and
    its key."""
    from transferline.data.pixel_cache import load_split, read_dataset
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.model.backbones import LAST_LAYER, build_model, feature_dim
    from transferline.model.features import cache_key
    from transferline.model.training import configure_threads, resolve_runtime

    layers = LAST_LAYER if layers is None else tuple(layers)
    params = base_params(backbone, quick, strategy="feature_extraction")
    runtime = resolve_runtime(params)
    configure_threads(params, runtime)
    dataset = read_dataset(prepared)
    spec = PreprocessSpec.from_dict(dataset["preprocess"])
    classes = dataset["classes"]
    model, weights = build_model(backbone, len(classes), True, feature_layers=layers)
    features_dir = features_folder(prepared, backbone, layers)
    features_dir.mkdir(exist_ok=True)
    return {
        "model": model,
        "train": load_split(prepared, "train", len(classes), spec.image_size),
        "val": load_split(prepared, "val", len(classes), spec.image_size),
        "spec": spec,
        "params": params,
        "runtime": runtime,
        "features_dir": features_dir,
        "key": cache_key(
            backbone, weights, dataset["data_version"], dataset["preprocess"], feature_dim(model), model.taps
        ),
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
    result["cpu"] = machine()["cpu"]  # the kind of CPU its seconds are in (transfer_analysis.signals_costed_on)
    return result


def cache_features(prepared: Path, backbone: str, quick: bool, layers: tuple[float, ...]) -> None:
    """The cell's pretrained features at the depths `layers`, as auto's signals leave them cached (the train
    stage measures them with feature_extraction's head, whose depths include the last layer the signals
    read): a feature_extraction run, or a run that starts from the probe (head_init: probe), then pays for
    its head, not for the forward pass auto has already paid."""
    import torch

    from transferline.model.features import cached_features

    c = cell_context(prepared, backbone, quick, layers)
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
    layers = train.feature_layers_for(params)
    scratch = prepared.parent / "scratch"
    (scratch / "train_run.json").unlink(missing_ok=True)  # read back below: never a previous run's
    start = time.perf_counter()
    cpu_start = time.process_time()
    metrics = train.run(
        params,
        prepared_dir=prepared,
        models_dir=scratch / "models",
        features_dir=features_folder(prepared, backbone, layers),
        checkpoint_dir=scratch / "checkpoints",
        metrics_file=scratch / "metrics.json",
        live_dir=None,
    )
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    run_record = json.loads((scratch / "train_run.json").read_text())
    history = run_record.get("history", [])
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
        **({"probe_layers": list(layers)} if params.strategy == "feature_extraction" else {}),
        # a head fitted on cached features pays for the head alone (the forward pass is auto's signals')
        **({"features_from_cache": run_record["features_from_cache"]} if "features_from_cache" in run_record else {}),
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
    rerun: dict[str, str] = getattr(args, "rerun", None) or {}
    for recipe, kept_as in rerun.items():
        supersede(state, recipe, kept_as)
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
                # a rerun's replaced recipe (an experiment) runs beside it, also where the experiments do not
                recipes = {**RECIPES, **(EXPERIMENTS if experiments or rerun else {})}
                runs = {**{k: train_overrides(v, num_blocks) for k, v in recipes.items()}, "fastai": FASTAI}
                if rerun:  # a rerun makes its recipes again, and nothing the grid never ran
                    runs = {k: v for k, v in runs.items() if k in rerun or k in rerun.values()}
                seeds = seeds_for(size, args.quick, getattr(args, "seeds", None))
                seeds_of = {recipe: seeds for recipe in runs}
                for recipe, kept_as in rerun.items():  # every seed the replaced runs had
                    recorded = {
                        r["seed"]
                        for r in state["runs"]
                        if r["recipe"] == kept_as and cell_id(r) == (dataset, size, backbone)
                    }
                    seeds_of[recipe] = sorted(set(seeds) | recorded)
                pending = [
                    recipe
                    for recipe in runs
                    for seed in seeds_of[recipe]
                    if (dataset, size, backbone, recipe, seed) not in done
                ]
                for layers in cached_layers(
                    backbone, args.quick, [runs[r] for r in {*pending, *(rerun[r] for r in pending if r in rerun)}]
                ):
                    cache_features(prepared, backbone, args.quick, layers)
                ran = False
                for recipe, overrides in runs.items():
                    for seed in seeds_of[recipe]:
                        if (dataset, size, backbone, recipe, seed) in done:
                            continue
                        ran = True
                        reference = {}
                        if recipe in rerun:  # the replaced recipe beside it, on this machine: what costs it
                            beside = train_and_test(prepared, test, backbone, runs[rerun[recipe]], seed, args.quick)
                            reference = {"reference_run": {"recipe": rerun[recipe], **pick(beside, REFERENCE_FIELDS)}}
                        result = train_and_test(prepared, test, backbone, overrides, seed, args.quick)
                        record = {
                            "dataset": dataset,
                            "size": size,
                            "backbone": backbone,
                            "recipe": recipe,
                            "cpu": cpu_name,
                        }
                        state["runs"].append({**record, "seed": seed, "overrides": overrides, **result, **reference})
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


REFERENCE_FIELDS = ("cpu_seconds", "wall_seconds", "epochs_run", "test_accuracy", "val_accuracy", "features_from_cache")


def pick(record: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: record[k] for k in fields if k in record}


def cached_layers(backbone: str, quick: bool, recipes: list[dict[str, Any]]) -> list[tuple[float, ...]]:
    """The sets of depths whose features `recipes` read from the cache (feature_extraction's head, a
    fine-tune's probe start), each once."""
    from stages.train import feature_layers_for

    layers = []
    for overrides in recipes:
        if overrides.get("strategy") == "feature_extraction" or overrides.get("head_init") == "probe":
            depths = tuple(feature_layers_for(base_params(backbone, quick, **overrides)))
            if depths not in layers:
                layers.append(depths)
    return layers


def supersede(state: dict[str, Any], recipe: str, kept_as: str) -> None:
    """Keep `recipe`'s recorded runs as the experiment `kept_as` (their overrides completed with what
    distinguishes it), so that `recipe` runs again in every cell: once, a resumed rerun keeps its new runs."""
    if kept_as not in EXPERIMENTS:
        raise SystemExit(
            f"--rerun {recipe}={kept_as}: {kept_as} is not one of the study's experiments {sorted(EXPERIMENTS)}"
        )
    if any(run["recipe"] == kept_as for run in state["runs"]):
        return
    for run in state["runs"]:
        if run["recipe"] == recipe:
            run["recipe"] = kept_as
            run["overrides"] = {**run["overrides"], **EXPERIMENTS[kept_as]}
    log.info("%s's recorded runs kept as %s; %s runs again", recipe, kept_as, recipe)


def load_state(state_file: Path, results_file: Path) -> dict[str, Any]:
    """Runs so far: the work folder's runs.json, else the last committed results (a study resumes on
    another machine too; each run records the machine it ran on)."""
    for path in (state_file, results_file):
        if path.is_file():
            document = json.loads(path.read_text())
            if document.get("protocol") == PROTOCOL and "runs" in document and "signals" in document:
                return {"protocol": PROTOCOL, "runs": document["runs"], "signals": document["signals"]}
    return {"protocol": PROTOCOL, "runs": [], "signals": {}}


def study_signals(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The cells' signals, their CPU seconds as the grid's kind of CPU would have measured them."""
    if not state["runs"]:
        return state["signals"]
    return signals_costed_on(state["signals"], state["runs"], grid_cpu(state["runs"]))


def judged_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs as every verdict reads them: each cell's whole seeds, every CPU cost as the grid's kind of
    CPU measured it (runs from another kind add accuracy only)."""
    return costed_on(whole_seeds(runs, {*RECIPES, "fastai"}), grid_cpu(runs)) if runs else []


def records_of(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The judged runs of the recipes auto chooses from (not fastai's, judged beside them)."""
    return [r for r in judged_runs(state["runs"]) if r["recipe"] in RECIPES]


def seeds_per_cell(records: list[dict[str, Any]]) -> dict[str, int]:
    """Per cell, how many seeds its feature-extraction runs (and so every recipe of a complete cell) ran."""
    return {
        name: len({r["seed"] for r in runs})
        for (name, recipe), runs in runs_by_cell_and_recipe(records).items()
        if recipe == "feature_extraction"
    }


def cells_by_seed_count(cells: list[Cell], seeds: dict[str, int]) -> dict[str, list[Cell]]:
    """auto's cells grouped by how many seeds they ran, labelled as AUTO_BY_SEEDS does; nothing where every
    cell ran as many (the one group is the whole grid, judged as auto already)."""
    groups = {label: [c for c in cells if seeds.get(c.name) == count] for count, label in AUTO_BY_SEEDS.items()}
    groups = {label: subset for label, subset in groups.items() if subset}
    return groups if len(groups) > 1 else {}


def study_cells(
    state: dict[str, Any], figure: str = CHECK_FIGURE, margins: tuple[float, ...] = VALIDATION_MARGINS
) -> tuple[list[Cell], dict[str, float]]:
    """The complete cells of the grid's recipes, checked comparing the fine-tune's `figure` on validation
    (at each of the validation `margins` a fit may choose), and one standard error of each cell's best recipe."""
    records = records_of(state)
    cells = build_cells(
        records, state["signals"], required=set(RECIPES), grid=set(GRID), figure=figure, margins=margins
    )
    errors = {}
    for cell in cells:
        key = next(k for k in {(r["dataset"], r["size"], r["backbone"]) for r in records} if cell_name(k) == cell.name)
        best = max(cell.accuracy, key=cell.accuracy.get)
        errors[cell.name] = standard_error(records, key, best)
    return cells, errors


def analyse(state: dict[str, Any]) -> dict[str, Any]:
    """Cells, signal rankings, and the verdicts of auto (leave-one-data-set-out) and the fixed policies.
    Judged on each cell's whole seeds, with every CPU cost as the grid's kind of CPU measured it."""
    measured, on = state["runs"], grid_cpu(state["runs"])
    state = {**state, "signals": study_signals(state)}
    cells, errors = study_cells(state)
    judged_state = {**state, "runs": judged_runs(measured)}  # judged once, for the readers below
    records = [r for r in judged_state["runs"] if r["recipe"] in RECIPES]
    cores = usable_cores()
    fit = rule_fit(errors, state["signals"])
    picks, loo_rules = leave_one_dataset_out(cells, RECIPES, fit, cores)
    fine_tuned = [name for name in RECIPES if name != "feature_extraction"]
    judged = at_rules_margin([c for c in cells if c.name in picks], loo_rules)
    signal_seconds = auto_signal_seconds(state["signals"], judged, loo_rules)
    verdicts = {AUTO: judge_policy(judged, picks, errors, signal_seconds, checked=True)}
    for backbone in sorted({backbone_of(c) for c in cells}):
        verdicts[f"auto, {backbone} cells"] = judge_policy(
            [c for c in judged if backbone_of(c) == backbone], picks, errors, signal_seconds, checked=True
        )
    for label, subset in cells_by_seed_count(judged, seeds_per_cell(records)).items():
        verdicts[label] = judge_policy(subset, picks, errors, signal_seconds, checked=True)
    verdicts[PERFECT_CHECK] = judge_policy(
        hindsight_checked(records, judged), picks, errors, signal_seconds, checked=True
    )
    best_epoch_cells, _ = study_cells(state, BEST_EPOCH)
    variants = (
        (GRID_ONLY, cells, GRID, VALIDATION_MARGINS, CPU_WEIGHTS, AUTO_LOSS),
        (NO_BUDGET, cells, RECIPES, VALIDATION_MARGINS, (0.0,), AUTO_LOSS),
        (NO_MARGIN, cells, RECIPES, (0.0,), (0.0,), AUTO_LOSS),
        (BEST_EPOCH_CHECK, best_epoch_cells, RECIPES, VALIDATION_MARGINS, CPU_WEIGHTS, AUTO_LOSS),
        (PLAIN_REGRET, cells, RECIPES, VALIDATION_MARGINS, CPU_WEIGHTS, REGRET),
    )
    for label, variant_cells, recipes, margins, weights, loss in variants:
        other, other_rules = leave_one_dataset_out(
            variant_cells,
            recipes,
            lambda train, r=recipes, m=margins, w=weights, k=loss: fit_nearest_rule(
                train, r, errors, state["signals"], margins=m, weights=w, loss=k
            ),
            cores,
        )
        verdicts[label] = judged_verdict(variant_cells, other, other_rules, errors, state["signals"])
    tree, tree_rules = leave_one_dataset_out(
        cells, RECIPES, lambda train: fit_tree_rule(train, RECIPES, errors, signals=state["signals"]), cores
    )
    verdicts[TREE_RULE] = judged_verdict(cells, tree, tree_rules, errors, state["signals"])
    tree_misses = policy_misses(at_rules_margin([c for c in cells if c.name in tree], tree_rules), tree, errors)
    unchecked, unchecked_rules = leave_one_dataset_out(cells, RECIPES, processes=cores)
    unchecked_cells = [c for c in cells if c.name in unchecked]
    verdicts[UNCHECKED] = judge_policy(
        unchecked_cells, unchecked, errors, auto_signal_seconds(state["signals"], unchecked_cells, unchecked_rules)
    )
    for label, recipe in FIXED_POLICIES:
        verdicts[label] = judge_policy(cells, {c.name: recipe for c in cells}, errors, {})
    verdicts[HINDSIGHT] = judge_policy(cells, cheapest_within_one_se(cells, errors), errors, {})
    verdicts[HINDSIGHT_AT_TARGET] = judge_policy(cells, cheapest_at_share(cells, errors, TARGET_SHARE), errors, {})
    with_fastai = fastai_cells(judged_state, cells)
    if with_fastai:
        # judged against the best of the grid's recipes, not against itself
        verdicts["fastai fine_tune"] = judge_outside_grid(with_fastai, "fastai", errors)
    shown = {c.name: c for c in with_fastai}
    rule = fit(cells) if cells else None
    # the tree auto followed before, fitted on every cell too: what a held-out round may judge beside the rule
    tree_rule = fit_tree_rule(cells, RECIPES, errors, processes=cores, signals=state["signals"]) if cells else None
    if rule is not None:
        rule["cost"] = rule_cost(measured)
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
        "tree_misses": tree_misses,
        "auto_bootstrap": dataset_bootstrap(judged, picks, errors, signal_seconds, checked=True),
        "kendall_tau": kendall_taus(cells, fine_tuned),
        "backbone_pick": pick_backbones(judged, picks, loo_rules, errors, checked=True),
        "repeatability": replicate_frontier(
            records, judged, errors, set(GRID), auto=(picks, loo_rules, signal_seconds)
        ),
        "schedule": compare_recipes(cells, errors, "partial_half_5ep", "partial_half", picks),
        "experiments": experiments(judged_state, cells, errors),
        "experiment_cpu_seconds": sum(r["cpu_seconds"] for r in state["runs"] if r["recipe"] in EXPERIMENTS),
        "cpu_per_wall": cpu_per_wall([r for r in measured if cpu_of(r) == on]),
        "auto_cpu": auto_cpu_parts(records, state["signals"], judged, picks, loo_rules),
        "expected_range": expected_range_coverage(judged, picks, loo_rules),
        "early_stops": early_stops(records, state["signals"], judged, picks, loo_rules, errors),
        "reruns": {
            "runs": sum("rerun" in r for r in state["runs"]),
            "reproduced": sum(r.get("rerun", {}).get("reproduced", False) for r in state["runs"]),
        },
        "verdicts": verdicts,
        "rule": rule,
        "tree_rule": tree_rule,
        "leave_one_out_rules": {dataset: without_cells(rule) for dataset, rule in loo_rules.items()},
    }


def without_cells(rule: dict[str, Any]) -> dict[str, Any]:
    """A fold's rule as the results record it: a nearest-cells rule without its cells' table, which is the
    study's own cells less the held-out data set (recorded once, under `cells`), not a copy per fold."""
    if NEAREST_CELLS not in rule:
        return rule
    policy = {key: value for key, value in rule[NEAREST_CELLS].items() if key != "cells"}
    return {**rule, NEAREST_CELLS: {**policy, "cell_count": len(rule[NEAREST_CELLS]["cells"])}}


def judged_verdict(
    cells: list[Cell],
    picks: dict[str, str],
    rules: dict[str, dict[str, Any]],
    errors: dict[str, float],
    signals: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Leave-one-data-set-out picks judged as auto runs: under each fold's check, its signals' CPU counted."""
    judged = at_rules_margin([c for c in cells if c.name in picks], rules)
    return judge_policy(judged, picks, errors, auto_signal_seconds(signals, judged, rules), checked=True)


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


def rule_fit(
    errors: dict[str, float],
    measured: dict[str, dict[str, Any]],
    signals: tuple[str, ...] = SIZE_AND_PROBE,
    recipes: dict[str, dict[str, Any]] = RECIPES,
) -> Callable[[list[Cell]], dict[str, Any]]:
    """auto's fit: nearest cells on `signals` choosing among `recipes`, naming the backbone comparison chosen
    on the same cells."""
    return with_backbone_comparison(
        lambda train: fit_nearest_rule(train, recipes, errors, measured, signals=signals), recipes, errors
    )


def rule_cost(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The rule's cost model from the grid's runs timed on the grid's kind of CPU (`cost_model`)."""
    on = grid_cpu(runs)
    return cost_model([r for r in runs if r["recipe"] not in EXPERIMENTS and cpu_of(r) == on])


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny generated data, 2 epochs: checks the machinery")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--sizes", nargs="+", default=[str(s) for s in SIZES], help="images per class; 'all'")
    parser.add_argument("--backbones", nargs="+", default=BACKBONES)
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="run these seeds in every cell of the chosen grid (default: 3 up to 100 images a class, 1 above)",
    )
    add_rerun_argument(parser)
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--work", type=Path, default=None, help="where data and runs.json live (resumable)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: analyse the runs recorded so far again and rewrite the report and the rule",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.sizes = [None if s == "all" else int(s) for s in args.sizes]
    args.rerun = parse_rerun(parser, args.rerun)
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
    if args.seeds is not None:  # more seeds for part of a grid: recorded, then analysed whole by --report-only
        run_grid(args, lambda partial: None, experiments=False)
        log.info("runs recorded in %s; `--report-only` analyses them with the whole grid", args.work / "runs.json")
        return
    if args.rerun:  # the rest of the grid is complete: one report at the end, not one a cell (5 min each)
        report(run_grid(args, lambda partial: None), args, out_dir, final=True)
        return
    state = run_grid(args, lambda partial: report(partial, args, out_dir, final=False))
    report(state, args, out_dir, final=True)


def remade_runs(runs: list[dict[str, Any]], on: str) -> dict[str, Any]:
    """The runs `--rerun` made on another kind of CPU than the grid's `on`: how many, of which recipes, the
    CPU seconds they measured and those the grid counts them at (`costed_on`, by the runs they replaced)."""
    remade = [r for r in runs if cpu_of(r) != on and "reference_run" in r]
    if not remade:
        return {}
    costed = costed_on([*remade, *(r for r in runs if cpu_of(r) == on)], on)[: len(remade)]
    return {
        "runs": len(remade),
        "recipes": {
            recipe: sum(r["recipe"] == recipe for r in remade) for recipe in sorted({r["recipe"] for r in remade})
        },
        "replaced": sorted({r["reference_run"]["recipe"] for r in remade}),
        "cpus": sorted({cpu_of(r) for r in remade}),
        "measured_cpu_seconds": sum(r["cpu_seconds"] for r in remade),
        "costed_cpu_seconds": sum(r["cpu_seconds"] for r in costed),
        "median_ratio": statistics.median(r["cpu_seconds"] / r["reference_run"]["cpu_seconds"] for r in remade),
    }


def joined_runs(runs: list[dict[str, Any]], signals: dict[str, dict[str, Any]], on: str) -> dict[str, Any]:
    """The grid's runs in cells that only another kind of CPU than `on` ran (a data set that joined from
    another machine): how many, where, the CPU seconds they and their cells' signals measured, and those the
    grid counts them at (`costed_on`, by `machine_ratios`); the same for their cells' signals (`signals`,
    costed already, count in the grid's CPU time with the others)."""
    on_cpu = cells_ran_on(runs, on)
    indices = [i for i, r in enumerate(runs) if cell_id(r) not in on_cpu and r["recipe"] not in EXPERIMENTS]
    if not indices:
        return {}
    costed = costed_on(runs, on)
    cells = {cell_name(cell_id(runs[i])) for i in indices}
    joined_signals = [signals[name] for name in sorted(cells) if name in signals]
    ratios = machine_ratios(runs, on)
    return {
        "runs": len(indices),
        "datasets": sorted({runs[i]["dataset"] for i in indices}),
        "cpus": sorted({cpu_of(runs[i]) for i in indices}),
        "measured_cpu_seconds": sum(runs[i]["cpu_seconds"] for i in indices),
        "costed_cpu_seconds": sum(costed[i]["cpu_seconds"] for i in indices),
        "signals_measured_cpu_seconds": sum(s.get("measured_seconds", s["seconds"]) for s in joined_signals),
        "signals_costed_cpu_seconds": sum(s["seconds"] for s in joined_signals),
        "ratios": {
            f"{cpu} {backbone}": ratio
            for (cpu, backbone), ratio in sorted(ratios.items())
            if any(cpu_of(runs[i]) == cpu and runs[i]["backbone"] == backbone for i in indices)
        },
    }


def add_rerun_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rerun",
        nargs="+",
        default=[],
        metavar="RECIPE=KEPT_AS",
        help="run RECIPE again in every cell and seed, its recorded runs kept as the experiment KEPT_AS "
        "(which also runs beside each new run, to cost it on the grid's CPU)",
    )


def parse_rerun(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    """`--rerun`'s RECIPE=KEPT_AS pairs, each a grid recipe and one of the study's experiments."""
    if any("=" not in pair for pair in pairs):
        parser.error("--rerun takes RECIPE=KEPT_AS pairs, e.g. feature_extraction=feature_extraction_last_layer")
    rerun = dict(pair.split("=", 1) for pair in pairs)
    for recipe, kept_as in rerun.items():
        if recipe not in RECIPES or kept_as not in EXPERIMENTS:
            parser.error(
                f"--rerun {recipe}={kept_as}: RECIPE is one of {sorted(RECIPES)}, KEPT_AS of {sorted(EXPERIMENTS)}"
            )
    return rerun


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
    ran = {run["dataset"] for run in state["runs"]}  # a data set that joined since (its runs imported): in the grid
    args.datasets = [*args.datasets, *(name for name in DATASETS if name in ran and name not in args.datasets)]
    report(state, args, out_dir, final=bool(grid.get("complete", True)))


def report(state: dict[str, Any], args: argparse.Namespace, out_dir: Path, final: bool) -> None:
    """Write the results so far; the rule only once the whole grid has run (a partial grid would fit a
    rule to whichever cells happened to finish)."""
    state["machine"] = machine()
    state["signals"] = study_signals(state)
    analysis = analyse(state)
    on = grid_cpu(state["runs"]) if state["runs"] else ""
    grid_runs = [r for r in state["runs"] if r["recipe"] not in EXPERIMENTS]
    signal_cpu = sum(s["seconds"] for s in state["signals"].values())
    remade, joined = remade_runs(state["runs"], on), joined_runs(state["runs"], state["signals"], on)
    cpu = sum(r["cpu_seconds"] for r in grid_runs if cpu_of(r) == on) + remade.get("costed_cpu_seconds", 0.0)
    cpu += joined.get("costed_cpu_seconds", 0.0) + signal_cpu
    on_cpu = cells_ran_on(state["runs"], on)
    elsewhere: dict[str, float] = {}  # more seeds run on another kind of CPU: their seconds, never added to the grid's
    for run in grid_runs:
        if cpu_of(run) != on and "reference_run" not in run and cell_id(run) in on_cpu:
            elsewhere[cpu_of(run)] = elsewhere.get(cpu_of(run), 0.0) + run["cpu_seconds"]
    pictures = [policy_map(analysis["verdicts"], out_dir), *curves(state, out_dir)]
    payload = {
        "protocol": PROTOCOL,
        "held_out_per_class": HELD_OUT,
        "machine": state["machine"],
        "measured_on": runs_machine(state["runs"]),
        "complete": final,
        "grid_cpu_seconds": cpu,
        **({"cpu_seconds_elsewhere": elsewhere} if elsewhere else {}),
        **({"remade": remade} if remade else {}),
        **({"joined": joined} if joined else {}),
        **analysis,
        "runs": state["runs"],
        "signals": state["signals"],
    }
    grid = {"backbones": args.backbones, "datasets": args.datasets, "sizes": args.sizes, "complete": final}
    payload["grid"] = grid
    write_results(
        "transfer_study", payload, markdown(state, analysis, pictures, cpu, final, grid, elsewhere, remade, joined)
    )
    if final and analysis["rule"] is not None:
        rule_file = RULE_FILE if not args.quick else out_dir / "advisor_rule.json"
        fitted_on = [c["cell"] for c in analysis["cells"]]
        atomic.write_json(rule_file, rule_document(analysis["rule"], fitted_on, state["runs"], args.image_size))
        log.info("advisor rule written to %s", rule_file)


def rule_document(rule: dict[str, Any], fitted_on: list[str], runs: list[dict[str, Any]], image_size: int) -> dict:
    """A fitted rule as the rule file holds it: with the image size its signals were measured at, the cells
    it was fitted on (a held-out round refuses those) and the CPUs its runs were timed on."""
    return {**rule, "image_size": image_size, "fitted_on": sorted(set(fitted_on)), "machine": runs_machine(runs)}


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
