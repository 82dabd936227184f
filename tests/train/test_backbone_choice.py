"""`train.backbone: auto`: the candidates are the backbones this machine loads offline, each is measured on
the data, and the pick (recorded in models/advice.json) is the one expected to do best."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.conftest import make_tiny_params
from transferline.errors import ParamsError
from transferline.model.advisor import Advice, Signals
from transferline.model.backbone_choice import Candidate, candidate_backbones, pick, weights_on_machine
from transferline.model.backbone_comparison import comparison_of


def signals(probe: float) -> Signals:
    return Signals(100, 3, probe, probe, 0.5, 0.2)


def advice(low: float, high: float, seconds: float) -> Advice:
    return Advice("full", {"strategy": "full"}, [], (low, high), seconds, None)


def test_the_pick_is_the_highest_figure_of_the_comparison_and_a_tie_goes_to_the_cheaper():
    fixed = [Candidate("mobilenet_v2", signals(0.80), None), Candidate("efficientnet_lite0", signals(0.84), None)]
    assert pick(fixed, comparison_of(None)).backbone == "efficientnet_lite0"  # a fixed strategy compares the probes
    advised = [
        Candidate("mobilenet_v2", signals(0.90), advice(0.70, 0.80, 100)),
        Candidate("efficientnet_lite0", signals(0.70), advice(0.80, 0.90, 300)),
    ]
    assert pick(advised, "expected_accuracy").backbone == "efficientnet_lite0"
    assert pick(advised, "probe_accuracy").backbone == "mobilenet_v2"  # the probe whatever the advice expects
    tied = [
        Candidate("mobilenet_v2", signals(0.5), advice(0.80, 0.90, 300)),
        Candidate("efficientnet_lite0", signals(0.5), advice(0.84, 0.86, 100)),
    ]
    assert pick(tied, "expected_accuracy").backbone == "efficientnet_lite0"


def test_the_comparison_is_the_one_the_rule_names():
    assert comparison_of(None) == "probe_accuracy"
    assert comparison_of({"backbone_comparison": {"compared_on": "logme"}}) == "logme"
    assert comparison_of({"tree": {}}) == "expected_accuracy"  # a rule from before rules named one
    with pytest.raises(ParamsError, match=r"backbone_comparison names 'accuracy'; it must be one of probe_accuracy"):
        comparison_of({"backbone_comparison": {"compared_on": "accuracy"}})
    with pytest.raises(ParamsError, match="expected accuracy needs the advisor's rule"):
        Candidate("mobilenet_v2", signals(0.5), None).compared("expected_accuracy")


def test_candidates_are_the_backbones_with_weights_on_this_machine():
    names = candidate_backbones(make_tiny_params(backbone="auto"), 96)
    assert names and all(weights_on_machine(name) for name in names)
    assert {"mobilenet_v2", "efficientnet_lite0"} <= set(names)  # `make assets` seeds both
    named = make_tiny_params(backbone="auto", backbone_candidates=["efficientnet_lite0", "inception_v3"])
    assert candidate_backbones(named, 64) == ["efficientnet_lite0"]  # 64 px is below InceptionV3's 75
    with pytest.raises(ParamsError, match=r"none of train.backbone_candidates \(inception_v3\) accepts 32 px"):
        candidate_backbones(make_tiny_params(backbone="auto", backbone_candidates=["inception_v3"]), 32)
    with pytest.raises(ParamsError, match="needs pretrained: true"):
        candidate_backbones(make_tiny_params(backbone="auto", pretrained=False), 96)


def test_backbone_auto_measures_each_candidate_and_records_the_choice(run_train, tmp_path: Path):
    params = make_tiny_params(
        backbone="auto", backbone_candidates=["mobilenet_v2", "efficientnet_lite0"], strategy="feature_extraction"
    )
    metrics = run_train(params)
    advice = json.loads((tmp_path / "out" / "models" / "advice.json").read_text())
    choice = advice["backbone_choice"]
    assert [c["backbone"] for c in choice["candidates"]] == ["mobilenet_v2", "efficientnet_lite0"]
    assert choice["compared_on"] == "the linear probe's validation accuracy"
    best = max(choice["candidates"], key=lambda c: round(c["expected_accuracy"], 3))
    assert choice["chosen"] == best["backbone"] == metrics["auto_backbone"] == metrics["backbone"]
    assert all(c["expected_accuracy"] == c["signals"]["probe_accuracy"] for c in choice["candidates"])
    # compared on the probe alone, no candidate pays for the random-init pass behind the pretrained gain
    assert all(c["signals"]["pretrained_gain"] is None for c in choice["candidates"])
    meta = json.loads((tmp_path / "out" / "models" / "model.json").read_text())
    assert meta["backbone"] == choice["chosen"] and meta["params"]["backbone"] == choice["chosen"]
    assert meta["advice"]["backbone_choice"] == choice and "recipe" not in advice  # the strategy was the user's


def test_backbone_and_strategy_auto_together_follow_the_rule_per_candidate(run_train, tmp_path: Path):
    rule = {
        "tree": {"recipe": "partial_half", "gain_over_probe": [0.0, 0.1], "cells": 2},
        "recipes": {
            "feature_extraction": {"strategy": "feature_extraction"},
            "partial_half": {"strategy": "partial", "frozen_fraction": 0.5, "epochs": 2, "lr": 0.002},
        },
        "cost": {"mobilenet_v2": {"partial": 0.001}, "efficientnet_lite0": {"partial": 0.002}},
        "image_size": 32,
        "backbone_comparison": {"compared_on": "probe_accuracy"},  # as the committed rule names
    }
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps(rule))
    params = make_tiny_params(
        backbone="auto", backbone_candidates=["mobilenet_v2", "efficientnet_lite0"], strategy="auto"
    )
    metrics = run_train(params.model_copy(update={"advisor_rule": rule_file}))
    advice = json.loads((tmp_path / "out" / "models" / "advice.json").read_text())
    assert advice["recipe"] == "partial_half" and metrics["strategy"] == "partial"
    choice = advice["backbone_choice"]
    assert choice["compared_on"] == "the linear probe's validation accuracy"
    assert {c["recipe"] for c in choice["candidates"]} == {"partial_half"}
    assert all(c["compared_value"] == c["signals"]["probe_accuracy"] for c in choice["candidates"])
    best = max(choice["candidates"], key=lambda c: round(c["signals"]["probe_accuracy"], 3))
    assert metrics["backbone"] == choice["chosen"] == best["backbone"]


def test_auto_is_not_a_backbone_outside_the_train_stage():
    from transferline.model.backbones import get_spec

    with pytest.raises(ParamsError, match="auto is resolved from the data by the train stage"):
        get_spec("auto")
