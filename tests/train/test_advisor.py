"""The advisor's rule: fitted to the study's regret, walked with reasons, and fitted into the time budget."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from transferline.errors import ParamsError
from transferline.model.advisor import (
    Cell,
    Recipe,
    Signals,
    check_margin,
    decide,
    fit_rule,
    reads_gain,
    signals_read,
    walk,
)

RECIPES = {
    "feature_extraction": {"strategy": "feature_extraction"},
    "partial": {"strategy": "partial", "frozen_fraction": 0.25, "epochs": 10, "lr": 0.002},
    "full": {"strategy": "full", "epochs": 10, "lr": 0.001},
}
COST = {"feature_extraction": 0.001, "partial": 0.004, "full": 0.01}


def signals(per_class: float, probe: float = 0.8, gain: float = 0.3) -> Signals:
    return Signals(per_class, 10, probe, probe - 0.02, -0.5, gain)


def cells() -> list[Cell]:
    """Small data: the probe wins; large data far from ImageNet (small pretrained gain): full wins;
    large data close to ImageNet: partial wins."""
    result = []
    for i, per_class in enumerate([10, 20, 30]):
        result.append(Cell(f"small{i}", signals(per_class), {"feature_extraction": 0.80, "partial": 0.75, "full": 0.7}))
    for i, per_class in enumerate([300, 400, 800]):
        result.append(
            Cell(f"near{i}", signals(per_class, gain=0.4), {"feature_extraction": 0.8, "partial": 0.9, "full": 0.88})
        )
        result.append(
            Cell(f"far{i}", signals(per_class, gain=0.05), {"feature_extraction": 0.6, "partial": 0.8, "full": 0.86})
        )
    return result


def test_the_fitted_rule_recovers_the_splits_that_lower_regret():
    rule = fit_rule(cells(), RECIPES)
    tree = rule["tree"]
    assert tree["signal"] == "images_per_class"
    assert 30 <= tree["threshold"] < 300
    assert tree["le"]["recipe"] == "feature_extraction"
    assert tree["gt"]["signal"] == "pretrained_gain"
    assert tree["gt"]["le"]["recipe"] == "full"
    assert tree["gt"]["gt"]["recipe"] == "partial"
    # every cell's pick is its best recipe: zero regret
    for cell in cells():
        node, _ = walk(tree, cell.signals)
        assert cell.regret(node["recipe"]) == 0
    json.dumps(rule)  # the rule is data


def test_a_split_that_does_not_lower_regret_is_not_made():
    flat = [
        Cell(f"d{i}", signals(10 * (i + 1)), {"feature_extraction": 0.7, "partial": 0.8, "full": 0.75})
        for i in range(6)
    ]
    rule = fit_rule(flat, RECIPES)
    assert rule["tree"]["recipe"] == "partial"


def _same_plan(fast: tuple, reference: tuple) -> bool:
    if fast[0] != reference[0]:
        return False
    if fast[0] == "leaf":
        return np.array_equal(fast[1], reference[1])
    return fast[1:4] == reference[1:4] and _same_plan(fast[4], reference[4]) and _same_plan(fast[5], reference[5])


def test_the_two_level_search_finds_the_recursive_searchs_tree_to_the_bit():
    """The depth-2 search scores every top threshold's sides at once (the study nests thousands of fits);
    it must return the recursive search's plan and loss exactly, ties included: equal losses, repeated
    signal values, subsets of the rows, a single recipe, leaves of one to four cells."""
    from transferline.model.advisor import _TreeSearch

    rng = np.random.default_rng(7)
    splits = 0
    for trial in range(300):
        cells, recipes, signals = int(rng.integers(3, 50)), int(rng.integers(1, 7)), int(rng.integers(1, 7))
        losses = rng.random((cells, recipes)) * rng.choice([1.0, 0.01])
        if trial % 3 == 0:
            losses = np.round(losses, 2)  # equal sums along different splits
        if trial % 2:
            values = rng.random((cells, signals))
        else:
            values = rng.integers(0, int(rng.integers(2, 12)), (cells, signals)).astype(float)
        search = _TreeSearch(losses, values, int(rng.integers(1, 5)))
        rows = np.arange(cells) if trial % 4 else rng.permutation(cells)[: max(2, cells - 3)]
        fast, fast_loss = search.best(rows, 2)
        reference, reference_loss = search._best_recursive(rows, 2)
        assert fast_loss == reference_loss and _same_plan(fast, reference), trial
        splits += fast[0] == "split" and (fast[4][0] == "split" or fast[5][0] == "split")
    assert splits > 100  # most trials found a two-level tree, so the fast path did the work


def test_decide_explains_the_branch_and_the_expected_range():
    rule = fit_rule(cells(), RECIPES)
    advice = decide(signals(500, probe=0.7, gain=0.5), rule, 20, 5000, COST, None)
    assert advice.recipe == "partial"
    assert advice.params == {"strategy": "partial", "lr": 0.002, "frozen_blocks": 5, "epochs": 10, "warmup_epochs": 1.0}
    assert advice.path[0].startswith("images_per_class 500 >")
    assert advice.path[1].startswith("pretrained_gain 0.5 >")
    # partial gained 0.10 over the probe (0.8 -> 0.9) in every cell of its leaf
    assert advice.expected_accuracy == pytest.approx((0.8, 0.8))
    assert advice.estimated_seconds == pytest.approx(10 * 5000 * 0.004)
    assert "partial" in advice.summary()


def test_a_short_budget_cuts_epochs_then_falls_back_to_feature_extraction():
    rule = fit_rule(cells(), RECIPES)
    far = signals(500, gain=0.01)
    cut = decide(far, rule, 20, 1000, COST, budget_seconds=50)  # 10 s per full epoch: 5 epochs fit
    assert cut.recipe == "full" and cut.params["epochs"] == 5 and "5 epochs" in cut.notes[0]
    fallback = decide(far, rule, 20, 1000, COST, budget_seconds=20)  # 3 epochs need 30 s
    assert fallback.recipe == "feature_extraction" and "feature extraction instead" in fallback.notes[0]
    assert fallback.params == {"strategy": "feature_extraction", "lr": pytest.approx(2e-3)}


def test_a_rule_naming_an_unknown_signal_is_refused():
    rule = {"tree": {"signal": "vibes", "threshold": 1, "le": {"recipe": "full"}, "gt": {"recipe": "full"}}}
    with pytest.raises(ParamsError, match="unknown signal 'vibes'"):
        walk(rule["tree"], signals(10))


def test_a_rule_names_the_signals_it_reads_and_an_unmeasured_gain_is_shown_as_such():
    """auto measures the pretrained gain (a second forward pass) only for a rule that splits on it: such a
    rule walked without it is refused by name; any other decides, and the advice shows the gain as None."""
    fitted = fit_rule(cells(), RECIPES)
    assert signals_read(fitted["tree"]) == {"images_per_class", "pretrained_gain"} and reads_gain(fitted)
    without_gain = replace(signals(800), pretrained_gain=None)
    with pytest.raises(ParamsError, match="reads pretrained_gain, which was not measured"):
        decide(without_gain, fitted, 17, 8000, COST, None)
    probe_only = {
        "tree": {
            "signal": "probe_accuracy",
            "threshold": 0.5,
            "le": {"recipe": "feature_extraction", "gain_over_probe": [0.0, 0.0], "cells": 2},
            "gt": {"recipe": "partial", "gain_over_probe": [0.0, 0.1], "cells": 2},
        },
        "recipes": RECIPES,
    }
    assert signals_read(probe_only["tree"]) == {"probe_accuracy"} and not reads_gain(probe_only)
    advice = decide(without_gain, probe_only, 17, 8000, COST, None)
    assert advice.recipe == "partial" and advice.signals["pretrained_gain"] is None
    assert json.loads(json.dumps(advice.to_dict()))["signals"]["pretrained_gain"] is None


def test_the_gain_is_needed_only_where_the_data_sets_path_through_the_rule_splits_on_it():
    """A rule reading the pretrained gain only for small data sets: a large one walks past that split, so
    auto need not pay the random-init pass for it, and decides without the gain; a small one needs it."""
    rule = {
        "tree": {
            "signal": "images_per_class",
            "threshold": 80.0,
            "le": {
                "signal": "pretrained_gain",
                "threshold": 0.3,
                "le": {"recipe": "feature_extraction", "gain_over_probe": [0.0, 0.0], "cells": 2},
                "gt": {"recipe": "partial", "gain_over_probe": [0.0, 0.1], "cells": 2},
            },
            "gt": {"recipe": "full", "gain_over_probe": [0.0, 0.1], "cells": 2},
        },
        "recipes": RECIPES,
    }
    assert reads_gain(rule)  # somewhere in the tree
    large, small = (replace(signals(n), pretrained_gain=None) for n in (800, 20))
    assert not reads_gain(rule, large) and reads_gain(rule, small)
    assert decide(large, rule, 17, 8000, COST, None).recipe == "full"
    with pytest.raises(ParamsError, match="reads pretrained_gain, which was not measured"):
        decide(small, rule, 17, 200, COST, None)
    unknown = {"tree": {"signal": "vibes", "threshold": 1, "le": {"recipe": "full"}, "gt": {"recipe": "full"}}}
    with pytest.raises(ParamsError, match="unknown signal 'vibes'"):
        reads_gain(unknown, large)


def test_the_validation_check_keeps_fine_tuning_only_where_it_beats_the_probe():
    rule = {**fit_rule(cells(), RECIPES), "validation_check": True}
    advice = decide(signals(500, probe=0.7, gain=0.5), rule, 20, 5000, COST, None)
    assert advice.recipe == "partial" and advice.validation_check
    kept = advice.checked(0.75, 200)
    assert kept.recipe == "partial" and kept.params == advice.params
    assert kept.notes[-1] == "validation check: partial reached 0.7500 on val, the probe 0.7000: partial kept"
    assert kept.validation == {
        "fine_tuned_val_accuracy": 0.75,
        "figure": "best_epoch",
        "best_epoch_val_accuracy": 0.75,
        "probe_val_accuracy": 0.7,
        "val_images": 200,
        "margin_se": 0.0,
        "margin": 0.0,
        "proposed": "partial",
        "kept": "partial",
    }
    for worse_or_tied in (0.65, 0.7):  # a tie keeps the probe: it is the cheaper, less fitted model
        fallback = advice.checked(worse_or_tied, 200)
        assert fallback.recipe == "feature_extraction"
        assert fallback.params == {"strategy": "feature_extraction", "lr": pytest.approx(2e-3)}
        assert fallback.validation["proposed"] == "partial" and fallback.validation["kept"] == "feature_extraction"
        assert fallback.expected_accuracy == (0.7, 0.7)
        assert "validation check: partial reached" in fallback.summary()


def test_the_check_weighs_the_fine_tune_against_the_head_it_would_ship_instead():
    """The feature_extraction head reads several depths (train.probe_layers) and may beat the last-layer probe
    among the signals: the check compares the fine-tune with the head that ships if it loses."""
    rule = {**fit_rule(cells(), RECIPES), "validation_check": True}
    advice = decide(signals(500, probe=0.7, gain=0.5), rule, 20, 5000, COST, None)
    assert advice.checked(0.75, 200).recipe == "partial"  # against the signals' probe, 0.70
    fallback = advice.checked(0.75, 200, probe_val_accuracy=0.8)
    assert fallback.recipe == "feature_extraction" and fallback.expected_accuracy == (0.8, 0.8)
    assert fallback.validation["probe_val_accuracy"] == 0.8
    assert fallback.notes[-1].endswith("the probe 0.8000: feature extraction kept")


def test_a_rule_with_a_validation_margin_keeps_fine_tuning_only_beyond_it_in_standard_errors():
    """The margin is in standard errors of the difference on the validation split, sqrt(0.5 / n) each: one
    SE is 0.05 on 200 images and 0.25 on 8, where a fine-tune's lead is mostly luck."""
    rule = {**fit_rule(cells(), RECIPES), "validation_check": True, "validation_margin_se": 1.0}
    advice = decide(signals(500, probe=0.7, gain=0.5), rule, 20, 5000, COST, None)
    assert advice.validation_margin_se == 1.0
    assert check_margin(1.0, 200) == pytest.approx(0.05) and check_margin(1.0, 8) == pytest.approx(0.25)
    assert check_margin(0.0, 0) == 0.0
    with pytest.raises(ValueError, match="needs validation images"):
        check_margin(1.0, 0)
    assert advice.checked(0.74, 200).recipe == "feature_extraction"  # better, but by less than the margin
    assert advice.checked(0.75, 200).recipe == "feature_extraction"  # by exactly the margin: still the probe
    kept = advice.checked(0.76, 200)
    assert kept.recipe == "partial" and kept.validation["margin"] == pytest.approx(0.05)
    assert kept.validation["margin_se"] == 1.0 and kept.validation["val_images"] == 200
    assert kept.notes[-1] == (
        "validation check: partial reached 0.7600 on val, the probe 0.7000 (margin 0.0500: 1 SE on 200 images): "
        "partial kept"
    )
    # the same lead on 8 validation images is well within one SE: the probe stays
    assert advice.checked(0.875, 8).recipe == "feature_extraction"


def test_a_rule_without_the_check_and_a_feature_extraction_pick_ask_for_none():
    plain = fit_rule(cells(), RECIPES)
    assert not decide(signals(500, probe=0.7, gain=0.5), plain, 20, 5000, COST, None).validation_check
    checked = {**plain, "validation_check": True}
    assert not decide(signals(10), checked, 20, 100, COST, None).validation_check  # the probe itself


def test_a_checked_fit_scores_each_proposal_by_what_the_check_leaves():
    """Large data where fine-tuning wins on average but the check often falls back to the probe: fitted to
    the regret after the check, the leaf's expected gain is the checked outcome's, not the raw recipe's."""
    large = [
        Cell(
            f"d{i}",
            signals(400 + i),
            {"feature_extraction": 0.8, "partial": 0.9, "full": 0.85},
            checked={"feature_extraction": 0.8, "partial": 0.84, "full": 0.85},
        )
        for i in range(4)
    ]
    assert fit_rule(large, RECIPES)["tree"]["recipe"] == "partial"
    checked = fit_rule(large, RECIPES, checked=True)
    assert checked["tree"]["recipe"] == "full"
    assert checked["tree"]["gain_over_probe"] == pytest.approx([0.05, 0.05])


def test_recipe_overrides_resolve_the_frozen_share_and_carry_the_head_init():
    plain = Recipe("partial", frozen_fraction=0.5, epochs=10).overrides(19, 10)
    assert plain == {"strategy": "partial", "lr": 2e-3, "frozen_blocks": 10, "epochs": 10, "warmup_epochs": 1.0}
    from_probe = Recipe("partial", frozen_fraction=0.5, head_init="probe").overrides(19, 10)
    assert from_probe == {**plain, "head_init": "probe"}
    assert Recipe("feature_extraction").overrides(19, 10) == {"strategy": "feature_extraction", "lr": 2e-3}


def test_a_rule_comparing_the_last_epoch_judges_the_fine_tune_by_it_not_by_its_best_epoch():
    """The best epoch's validation accuracy is the highest of several noisy figures on the same images, so a
    fine-tune that peaked once by luck beats the probe on it; its last epoch was not selected."""
    rule = {**fit_rule(cells(), RECIPES), "validation_check": True, "validation_figure": "last_epoch"}
    advice = decide(signals(500, probe=0.7, gain=0.5), rule, 20, 5000, COST, None)
    assert advice.validation_figure == "last_epoch"
    lucky = advice.checked(0.75, 20, last_val_accuracy=0.55)
    assert lucky.recipe == "feature_extraction"
    assert lucky.validation["figure"] == "last_epoch" and lucky.validation["fine_tuned_val_accuracy"] == 0.55
    assert lucky.validation["best_epoch_val_accuracy"] == 0.75
    assert lucky.notes[-1] == (
        "validation check: partial reached 0.5500 on val at its last epoch (best epoch 0.7500), the probe 0.7000: "
        "feature extraction kept"
    )
    assert advice.checked(0.80, 20, last_val_accuracy=0.75).recipe == "partial"
    with pytest.raises(ValueError, match="compares the last epoch"):
        advice.checked(0.80, 20)


def test_a_rule_without_a_validation_figure_compares_the_best_epoch_and_an_unknown_one_is_refused():
    rule = {**fit_rule(cells(), RECIPES), "validation_check": True}
    advice = decide(signals(500, probe=0.7, gain=0.5), rule, 20, 5000, COST, None)
    assert advice.validation_figure == "best_epoch"
    assert advice.checked(0.75, 20, last_val_accuracy=0.55).recipe == "partial"
    with pytest.raises(ParamsError, match="validation_figure 'median' is none of best_epoch, last_epoch"):
        decide(signals(500, probe=0.7, gain=0.5), {**rule, "validation_figure": "median"}, 20, 5000, COST, None)
