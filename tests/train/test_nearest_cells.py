"""auto's nearest-cells policy: the study cells most like a data set decide, as data in the rule file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from transferline.errors import ParamsError
from transferline.model import nearest_cells
from transferline.model.advisor import Cell, Signals, decide, propose, reads_gain, signals_read
from transferline.model.nearest_cells import NEAREST_CELLS

RECIPES = {
    "feature_extraction": {"strategy": "feature_extraction"},
    "partial": {"strategy": "partial", "frozen_fraction": 0.5, "epochs": 10, "lr": 0.002},
    "full": {"strategy": "full", "epochs": 10, "lr": 0.001},
}
COST = {"feature_extraction": 0.001, "partial": 0.004, "full": 0.01}


def policy_cell(name: str, per_class: float, probe: float, loss: dict[str, float], gain: float = 0.05) -> dict:
    return {
        "cell": name,
        "signals": {"images_per_class": per_class, "probe_accuracy": probe},
        "loss": loss,
        "cpu_share": {"feature_extraction": 0.01, "partial": 0.3, "full": 0.6},
        "gain_over_probe": {"feature_extraction": 0.0, "partial": gain, "full": gain / 2},
    }


def policy(k: int = 2, weight: float = 0.0) -> dict:
    """Small data sets: the probe is as good; large ones: partial fine-tuning gains."""
    small = {"feature_extraction": 0.0, "partial": 0.05, "full": 0.08}
    large = {"feature_extraction": 0.1, "partial": 0.0, "full": 0.01}
    return {
        "signals": ["images_per_class", "probe_accuracy"],
        "k": k,
        "cpu_weight": weight,
        "cells": [
            policy_cell("a/10/m", 10, 0.6, small),
            policy_cell("a/30/m", 30, 0.65, small),
            policy_cell("b/400/m", 400, 0.7, large, gain=0.08),
            policy_cell("b/1000/m", 1000, 0.75, large, gain=0.12),
        ],
    }


def signals(per_class: float, probe: float) -> Signals:
    return Signals(per_class, 10, probe, probe - 0.02, -0.5, None)


def test_the_nearest_cells_pool_their_losses_and_name_themselves():
    small = nearest_cells.choose(policy(), signals(20, 0.62).value)
    assert small.recipe == "feature_extraction" and small.neighbours == ["a/10/m", "a/30/m"]
    large = nearest_cells.choose(policy(), signals(600, 0.72).value)
    assert large.recipe == "partial" and set(large.neighbours) == {"b/400/m", "b/1000/m"}
    assert large.gain_over_probe == (0.08, 0.12)  # the proposed recipe's gains among the cells consulted
    assert large.pooled["partial"] < large.pooled["full"] < large.pooled["feature_extraction"]


def test_images_a_class_count_on_a_log_scale():
    """On a log scale 100 images a class lie halfway between 10 and 1000: 90 is nearer 10 and 110 nearer
    1000 (on a linear scale both would be nearer 10)."""
    cells = policy()["cells"]
    level = [{**c, "signals": {**c["signals"], "probe_accuracy": 0.7}} for c in (cells[0], cells[3])]
    one = {**policy(k=1), "cells": level}
    assert nearest_cells.choose(one, signals(90, 0.7).value).neighbours == ["a/10/m"]
    assert nearest_cells.choose(one, signals(110, 0.7).value).neighbours == ["b/1000/m"]
    assert nearest_cells.signal_vector({"images_per_class": 100.0}.__getitem__, ["images_per_class"]) == [
        pytest.approx(math.log(100))
    ]


def test_the_cpu_weight_moves_a_close_call_to_the_cheaper_recipe():
    close = {"feature_extraction": 0.02, "partial": 0.0, "full": 0.01}
    cells = [policy_cell(f"c/{n}/m", n, 0.7, close) for n in (100, 200)]
    rule = {**policy(), "cells": cells}
    assert nearest_cells.choose(rule, signals(150, 0.7).value).recipe == "partial"
    assert nearest_cells.choose({**rule, "cpu_weight": 0.1}, signals(150, 0.7).value).recipe == "feature_extraction"


def test_cells_that_cost_different_recipes_are_refused():
    broken = policy()
    broken["cells"][1] = {**broken["cells"][1], "loss": {"feature_extraction": 0.0}}
    with pytest.raises(ValueError, match="does not cost the same recipes"):
        nearest_cells.choose(broken, signals(20, 0.6).value)


def rule() -> dict:
    return {NEAREST_CELLS: policy(), "recipes": RECIPES, "validation_check": True, "validation_margin_se": 0.0}


def test_decide_with_a_nearest_cells_rule_explains_itself_and_skips_the_gain():
    advice = decide(
        signals(600, 0.72), rule(), num_blocks=8, train_images=6000, seconds_per_image_epoch=COST, budget_seconds=None
    )
    assert advice.recipe == "partial" and advice.params["frozen_blocks"] == 4
    assert "b/400/m" in advice.path[0] and "images_per_class 600" in advice.path[0]
    assert advice.path[1].startswith("partial costs least over them")
    assert advice.expected_accuracy == pytest.approx((0.80, 0.84))  # the probe plus the neighbours' gains
    assert advice.validation_check and advice.signals["pretrained_gain"] is None
    assert signals_read(rule()) == {"images_per_class", "probe_accuracy"}
    assert not reads_gain(rule()) and not reads_gain(rule(), signals(600, 0.72))
    reading_gain = {**rule(), NEAREST_CELLS: {**policy(), "signals": ["images_per_class", "pretrained_gain"]}}
    assert reads_gain(reading_gain)
    json.dumps(rule())  # the rule is data


def test_the_model_card_names_the_cells_behind_the_choice():
    from transferline.evaluation.model_card import advice_lines

    advice = decide(signals(600, 0.72), rule(), 8, 6000, COST, None).to_dict()
    card = "\n".join(advice_lines(advice))
    assert (
        "`strategy: auto` chose **partial**: the 2 study cells nearest images_per_class 600, probe_accuracy 0.72"
        in card
    )
    assert "b/400/m" in card and "expected test accuracy 0.80-0.84 (the range the study's cells behind" in card
    assert "pretrained_gain not measured (the rule does not read it)" in card


def test_a_nearest_cells_rule_on_an_unknown_signal_or_recipe_is_refused():
    unknown = {**rule(), NEAREST_CELLS: {**policy(), "signals": ["images_per_class", "loudness"]}}
    with pytest.raises(ParamsError, match="unknown signal 'loudness'"):
        propose(unknown, signals(20, 0.6))
    missing = {**rule(), "recipes": {"feature_extraction": RECIPES["feature_extraction"]}}
    with pytest.raises(ParamsError, match="proposes recipe 'partial', which the rule does not define"):
        decide(signals(600, 0.72), missing, 8, 6000, COST, None)


def test_the_advisors_rule_loader_takes_either_form_and_refuses_neither(tmp_path):
    from transferline.model.advice_signals import load_rule

    path = tmp_path / "rule.json"
    path.write_text(json.dumps(rule()))
    assert load_rule(path)[NEAREST_CELLS]["k"] == 2
    path.write_text(json.dumps({"recipes": RECIPES}))
    with pytest.raises(ParamsError, match="lacks a policy"):
        load_rule(path)


def study_cells(seed: int = 0) -> tuple[list[Cell], dict[str, float], dict[str, dict]]:
    """Three data sets of five sizes: the probe wins small cells, partial large ones; full is dear."""
    rng = np.random.default_rng(seed)
    cells, errors, measured = [], {}, {}
    for dataset in ("x", "y", "z"):
        for per_class in (10, 30, 100, 400, 1000):
            probe = 0.5 + 0.08 * math.log10(per_class) + float(rng.normal(0, 0.005))
            fine = probe + (0.1 if per_class >= 100 else -0.05) + float(rng.normal(0, 0.01))
            accuracy = {"feature_extraction": probe, "partial": fine, "full": fine - 0.005}
            name = f"{dataset}/{per_class}/m"
            cells.append(
                Cell(
                    dataset,
                    Signals(per_class, 4, probe, probe, -0.5, 0.2),
                    accuracy,
                    {"feature_extraction": 1.0, "partial": 2.0 * per_class, "full": 30.0 * per_class},
                    name,
                    checked=dict(accuracy),
                )
            )
            errors[name] = 0.01
            measured[name] = {"seconds": 1.0}
    return cells, errors, measured


def test_the_fitted_rule_decides_as_the_study_judged_it():
    """bench/nearest_fit.py fits k, weight and margin leaving data sets out, then keeps every cell as data:
    the advisor's choice from that file is, for each held-out data set, the pick the study judges."""
    from bench.nearest_fit import Setting, choose_setting, fit_nearest_rule, make_table, nearest_picks, settings
    from bench.transfer_analysis import leave_one_dataset_out

    cells, errors, measured = study_cells()
    recipes = RECIPES
    picks, rules = leave_one_dataset_out(
        cells, recipes, lambda train: fit_nearest_rule(train, recipes, errors, measured)
    )
    for dataset, fold in rules.items():
        train = [c for c in cells if c.dataset != dataset]
        tables = {
            m: make_table(train, errors, measured, ["images_per_class", "probe_accuracy"], m, list(recipes))
            for m in (0.0, 0.5, 1.0, 1.5, 2.0)
        }
        chosen, _ = choose_setting(
            nearest_picks,
            tables,
            np.arange(len(train)),
            settings((0.0, 0.5, 1.0, 1.5, 2.0), (3, 5, 8, 12, 20), (0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)),
        )
        assert isinstance(chosen, Setting)
        assert (fold["fit"]["k"], fold["fit"]["cpu_weight"]) == (chosen.parameter, chosen.weight)
        assert [c["cell"] for c in fold[NEAREST_CELLS]["cells"]] == [c.name for c in train]
    assert {picks[c.name] for c in cells if c.name.split("/")[1] in ("10", "30")} == {"feature_extraction"}
    assert {picks[c.name] for c in cells if c.name.split("/")[1] in ("400", "1000")} == {"partial"}
    whole = fit_nearest_rule(cells, recipes, errors, measured)
    json.dumps(whole)
    assert whole["validation_check"] and not reads_gain(whole)
    assert whole["fit"]["best_settings"][0]["cpu_share_of_grid"] <= 0.15


def test_one_data_set_cannot_be_held_out_and_fits_the_simplest_setting():
    from bench.nearest_fit import fit_nearest_rule

    cells, errors, measured = study_cells()
    only_x = [c for c in cells if c.dataset == "x"]
    fitted = fit_nearest_rule(only_x, RECIPES, errors, measured)
    assert (fitted["fit"]["k"], fitted["fit"]["cpu_weight"], fitted["fit"]["settings_tried"]) == (3, 0.0, 0)
