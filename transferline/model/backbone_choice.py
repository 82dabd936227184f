"""`train.backbone: auto`: choose the backbone among those this machine can load without a download.

Each candidate's pretrained features are measured on the data (the same signals `strategy: auto` reads:
linear probe, k-NN, LogME, gain over random init). With `strategy: auto` each candidate also gets the
advisor's decision (its recipe, if chosen), and the candidates are compared on the figure the study's rule
names (transferline/model/backbone_comparison.py; the study chose it by leaving data sets out); with a
fixed strategy, on their linear probe's validation accuracy (the one signal that is an accuracy on this
very data). Ties go to the cheaper candidate.

Candidates: `train.backbone_candidates`, else every registered backbone whose ImageNet weights are
already on this machine (`make assets` seeds MobileNetV2 and EfficientNet-Lite0) and that accepts the
prepared image size. `auto` never downloads: a backbone that would need the network is named on purpose.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from transferline.config import TrainParams
from transferline.data.pixel_cache import SplitData
from transferline.data.preprocessing import PreprocessSpec
from transferline.errors import ParamsError
from transferline.model.advice_signals import load_rule, measure_signals, seconds_per_image_epoch
from transferline.model.advisor import Advice, Signals, decide, reads_gain
from transferline.model.backbone_comparison import COMPARISONS, EXPECTED_ACCURACY, compared_value, comparison_of
from transferline.model.backbones import BACKBONES, build_model, checkpoint_file, feature_dim
from transferline.model.features import cache_key
from transferline.model.training import Runtime

log = logging.getLogger("transferline.model.backbone_choice")


@dataclass(frozen=True)
class Candidate:
    """One backbone's measured signals and, under `strategy: auto`, the advisor's decision for it."""

    backbone: str
    signals: Signals
    advice: Advice | None

    @property
    def expected_accuracy(self) -> float:
        """The advisor's expected range midpoint, else the probe's accuracy: what the card shows."""
        if self.advice is None:
            return self.signals.probe_accuracy
        return compared_value(EXPECTED_ACCURACY, self.signals, self.advice.expected_accuracy)

    def compared(self, comparison: str) -> float:
        """The figure `comparison` ranks this candidate by."""
        return compared_value(comparison, self.signals, None if self.advice is None else self.advice.expected_accuracy)

    @property
    def estimated_seconds(self) -> float | None:
        return None if self.advice is None else self.advice.estimated_seconds


@dataclass(frozen=True)
class BackboneChoice:
    """The chosen backbone and every candidate it was chosen from: models/advice.json's `backbone_choice`."""

    chosen: str
    compared_on: str
    candidates: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        scores = ", ".join(f"{c['backbone']} {c['compared_value']:.3f}" for c in self.candidates)
        return f"backbone auto chose {self.chosen} ({self.compared_on}: {scores})"


def weights_on_machine(name: str) -> bool:
    """Whether the backbone's ImageNet weights load without the network (file in the hub cache)."""
    spec = BACKBONES[name]
    if spec.weights is None and spec.seeded is None:
        return False
    return checkpoint_file(spec).is_file()


def candidate_backbones(params: TrainParams, image_size: int) -> list[str]:
    """The backbones `auto` compares, in registry order; a precise error when there is none."""
    if not params.pretrained:
        raise ParamsError("train.backbone: auto compares ImageNet-pretrained backbones; it needs pretrained: true")
    if params.weights_path is not None:
        raise ParamsError("train.backbone: auto cannot use train.weights_path (a state dict of one architecture)")
    named = params.backbone_candidates
    names = list(named) if named else [name for name in BACKBONES if weights_on_machine(name)]
    fitting = [name for name in names if image_size >= BACKBONES[name].min_input_size]
    if not fitting:
        why = (
            f"none of train.backbone_candidates ({', '.join(names)}) accepts {image_size} px images"
            if named
            else f"no backbone with ImageNet weights on this machine accepts {image_size} px images "
            f"(on this machine: {', '.join(names) or 'none'}; `make assets` seeds mobilenet_v2 and efficientnet_lite0)"
        )
        raise ParamsError(f"train.backbone: auto: {why}")
    return fitting


def pick(candidates: list[Candidate], comparison: str) -> Candidate:
    """The highest figure of `comparison`; on a tie (to 3 decimals, the probe's resolution on small val
    sets), the cheaper one, then registry order. Pure, so the choice is testable without a model."""
    order = list(BACKBONES)

    def key(c: Candidate) -> tuple:
        return (-round(c.compared(comparison), 3), c.estimated_seconds or 0.0, order.index(c.backbone))

    return min(candidates, key=key)


def choose_backbone(
    params: TrainParams,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    runtime: Runtime,
    features_dir: Path,
    dataset: dict[str, Any],
) -> tuple[TrainParams, BackboneChoice, Advice | None, dict[str, float]]:
    """Measure every candidate, pick one; return the params with the backbone (and, under `strategy: auto`,
    the recipe) resolved, the choice, the chosen candidate's advice, and the seconds measuring took."""
    names = candidate_backbones(params, spec.image_size)
    rule = load_rule(params.advisor_rule) if params.strategy == "auto" else None
    comparison = comparison_of(rule)
    num_classes = len(dataset["classes"])
    candidates, timings = [], {}
    for name in names:
        start = time.perf_counter()
        candidate_params = TrainParams(**{**params.model_dump(), "backbone": name})
        with torch.random.fork_rng(devices=[]):  # the chosen model is rebuilt from params.seed afterwards
            model, weights = build_model(name, num_classes, pretrained=True)
        key = cache_key(name, weights, dataset["data_version"], dataset["preprocess"], feature_dim(model))
        # without a rule, backbones are compared on the probe alone: no signal needs the random-init pass;
        # with one, only where its path for this backbone's other signals splits on the gain
        signals, _ = measure_signals(
            model,
            train,
            val,
            spec,
            candidate_params,
            runtime,
            features_dir,
            key,
            pretrained_gain=False if rule is None else (lambda measured, r=rule: reads_gain(r, measured)),
        )
        advice = None
        if rule is not None:
            costs = seconds_per_image_epoch(rule, name, spec.image_size)
            advice = decide(signals, rule, len(model.blocks()), len(train), costs, params.time_budget_s)
        candidates.append(Candidate(name, signals, advice))
        timings[name] = time.perf_counter() - start
    chosen = pick(candidates, comparison)
    choice = BackboneChoice(
        chosen=chosen.backbone,
        compared_on=COMPARISONS[comparison],
        candidates=[
            {
                "backbone": c.backbone,
                "compared_value": c.compared(comparison),
                "expected_accuracy": c.expected_accuracy,
                "recipe": None if c.advice is None else c.advice.recipe,
                "estimated_seconds": c.estimated_seconds,
                "signals": c.signals.measured(),
            }
            for c in candidates
        ],
    )
    resolved = {**params.model_dump(), "backbone": chosen.backbone}
    if chosen.advice is not None:
        resolved.update(chosen.advice.params)
    log.info("%s (measured in %.1f s)", choice.summary(), sum(timings.values()))
    if chosen.advice is not None:
        log.info("%s", chosen.advice.summary())
    return TrainParams(**resolved), choice, chosen.advice, timings
