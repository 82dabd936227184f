"""Measure the advisor's signals on a data set: one pass of pretrained features (the feature_extraction
cache, so a later feature_extraction run or trial reuses it), then probes, k-NN and LogME on those arrays
(seconds), and where asked one pass of random-init features.

The random-init pass is what makes `pretrained_gain` honest: how much of the probe's accuracy comes
from ImageNet rather than from the architecture and the data alone. It costs as much as the pretrained
pass, so `auto` pays for it only when its rule splits on that signal on the path the data set's other
signals take (`advisor.reads_gain`); the
transfer study measures it everywhere, since it ranks every signal and fits the rule over all of them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from transferline.config import TrainParams
from transferline.data.pixel_cache import SplitData
from transferline.data.preprocessing import PreprocessSpec
from transferline.errors import ParamsError
from transferline.model.advisor import Advice, Signals, decide, reads_gain
from transferline.model.backbones import TransferModel, build_model
from transferline.model.features import cached_features, compute_features
from transferline.model.head import fit_probe
from transferline.model.nearest_cells import NEAREST_CELLS
from transferline.model.training import Runtime
from transferline.model.transferability import knn_accuracy, logme

log = logging.getLogger("transferline.model.advice_signals")

KNN_NEIGHBOURS = 10


def measure_signals(
    model: TransferModel,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    params: TrainParams,
    runtime: Runtime,
    features_dir: Path,
    key: dict,
    pretrained_gain: bool | Callable[[Signals], bool] = True,
) -> tuple[Signals, dict[str, float]]:
    """The signals, and the seconds each part took (features, random features, probes and scores).
    `pretrained_gain`: whether to measure that signal, or a test of the other signals that says so (auto:
    whether its rule's path for them splits on it); where not, the random-init pass is skipped and the
    signal left unmeasured (None)."""
    batch = max(2 * params.batch_size, 64)
    num_classes = model.head.out_features
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    # the features the model's head reads, cached for the feature_extraction head; the signals read the last layer
    tapped, _ = cached_features(model, {"train": train, "val": val}, spec, runtime, features_dir, key, batch)
    features = {split: model.last_layer(array) for split, array in tapped.items()}
    timings["features"] = time.perf_counter() - start

    start = time.perf_counter()
    probe = _probe(features, train, val, num_classes, params)
    knn = knn_accuracy(features["train"], train.labels, features["val"], val.labels, k=KNN_NEIGHBOURS)
    evidence = logme(features["train"], np.asarray(train.labels), num_classes)
    timings["scores"] = time.perf_counter() - start

    signals = Signals(
        images_per_class=len(train) / num_classes,
        num_classes=num_classes,
        probe_accuracy=probe,
        knn_accuracy=knn,
        logme=evidence,
        pretrained_gain=None,
    )
    random_probe = None
    if pretrained_gain(signals) if callable(pretrained_gain) else pretrained_gain:
        start = time.perf_counter()
        random_features = random_init_features(params, num_classes, train, val, spec, runtime, batch)
        random_probe = _probe(random_features, train, val, num_classes, params)
        timings["random_features"] = time.perf_counter() - start
        signals = replace(signals, pretrained_gain=probe - random_probe)
    log.info(
        "signals: %.0f images/class, %d classes, probe %.3f (random init %s), k-NN %.3f, LogME %.3f",
        signals.images_per_class,
        num_classes,
        probe,
        "not measured: the rule does not read it here" if random_probe is None else f"{random_probe:.3f}",
        knn,
        evidence,
    )
    return signals, timings


def random_init_features(
    params: TrainParams,
    num_classes: int,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    runtime: Runtime,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Features of the same architecture with seeded random weights (BatchNorm at its initial statistics)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        model, _ = build_model(params.backbone, num_classes, pretrained=False)
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return {
        "train": compute_features(model, train, spec, runtime, batch_size),
        "val": compute_features(model, val, spec, runtime, batch_size),
    }


def _probe(features: dict[str, np.ndarray], train: SplitData, val: SplitData, num_classes: int, params) -> float:
    result = fit_probe(
        features["train"],
        train.labels,
        features["val"],
        val.labels,
        num_classes,
        params.probe_l2,
        standardize=params.probe_standardize,
        label_smoothing=params.probe_label_smoothing,
    )
    return float(result.val_accuracy)


def load_rule(path: Path) -> dict:
    """The advisor's rule file, checked enough that a bad one fails here with its path, not mid-decision."""
    if not path.is_file():
        raise ParamsError(
            f"train.strategy: auto needs the advisor's rule, {path}, which is missing: "
            "`python -m bench.transfer_study` fits it (or set train.advisor_rule)"
        )
    try:
        rule = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ParamsError(f"advisor rule {path} is not readable JSON: {exc}") from exc
    missing = [key for key in ("recipes",) if key not in rule]
    if "tree" not in rule and NEAREST_CELLS not in rule:
        missing.append(f"a policy (tree or {NEAREST_CELLS})")
    if missing:
        raise ParamsError(f"advisor rule {path} lacks {', '.join(missing)}")
    return rule


def seconds_per_image_epoch(rule: dict, backbone: str, image_size: int) -> dict[str, float]:
    """The study's measured cost per training image and epoch, scaled from its image size to this one."""
    cost = rule.get("cost") or {}
    by_strategy = cost.get(backbone)
    if by_strategy is None and cost:  # a backbone the study did not run: the mean of those it did
        strategies = {s for values in cost.values() for s in values}
        by_strategy = {s: float(np.mean([v[s] for v in cost.values() if s in v])) for s in strategies}
    scale = (image_size / rule.get("image_size", 96)) ** 2
    return {strategy: seconds * scale for strategy, seconds in (by_strategy or {}).items()}


def advise(
    params: TrainParams,
    model: TransferModel,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    runtime: Runtime,
    features_dir: Path,
    key: dict,
    num_blocks: int,
    rule_path: Path,
) -> tuple[TrainParams, Advice, dict[str, float]]:
    """Measure, decide, and return the train params the advice resolves to (strategy no longer auto), the
    advice, and how long measuring took."""
    rule = load_rule(rule_path)
    signals, timings = measure_signals(
        model,
        train,
        val,
        spec,
        params,
        runtime,
        features_dir,
        key,
        pretrained_gain=lambda measured: reads_gain(rule, measured),
    )
    costs = seconds_per_image_epoch(rule, params.backbone, spec.image_size)
    advice = decide(signals, rule, num_blocks, len(train), costs, params.time_budget_s)
    resolved = TrainParams(**{**params.model_dump(), **advice.params})
    # the timings go to the log (and metrics/train.json), never into advice.json: models/ must hash the same
    # for the same params and data
    log.info("%s (signals measured in %.1f s)", advice.summary(), sum(timings.values()))
    return resolved, advice, timings
