"""The committed `auto` rule judged on data sets it was not fitted on: it proposes from each new cell's
signals, the validation check keeps the fine-tune or the probe, and a cell it was fitted on is refused."""

from __future__ import annotations

import argparse
import json

import pytest

from bench.transfer_design import GRID, RECIPES
from bench.transfer_holdout import COMMITTED, judge_rule, markdown
from transferline.model.advisor import SIGNALS
from transferline.model.nearest_cells import NEAREST_CELLS

RULE = {
    "tree": {
        "signal": "pretrained_gain",
        "threshold": 0.2,
        # each leaf's expected gain over the probe (0.5 in every cell below)
        "le": {"recipe": "feature_extraction", "gain_over_probe": [0.1, 0.3]},
        "gt": {"recipe": "partial_half", "gain_over_probe": [0.3, 0.45]},
    },
    "validation_check": True,
    "validation_margin_se": 0.0,
    "fitted_on": ["old/10/m"],
}


def cell_runs(dataset: str, tests: dict[str, tuple[float, float]]) -> list[dict]:
    """Two seeds of every recipe auto chooses from in one cell: recipe -> (val, test), 0.5 where not given."""
    return [
        {
            "dataset": dataset,
            "size": 10,
            "backbone": "m",
            "recipe": recipe,
            "seed": seed,
            "val_accuracy": tests.get(recipe, (0.5, 0.5))[0],
            "val_images": 50,
            "test_accuracy": tests.get(recipe, (0.5, 0.5))[1],
            "test_images": 10_000,  # one SE of an accuracy near 0.9: 0.003
            "cpu_seconds": 1.0 if recipe == "feature_extraction" else 10.0,
            "cpu": "a test CPU",
            "threads": 2,
        }
        for recipe in [*RECIPES, "fastai"]
        for seed in (0, 1)
    ]


def state_of(gains: dict[str, float], tests: dict[str, dict[str, tuple[float, float]]]) -> dict:
    runs = [run for dataset in gains for run in cell_runs(dataset, tests[dataset])]
    signals = {
        f"{dataset}/10/m": {**dict.fromkeys(SIGNALS, 0.5), "pretrained_gain": gain, "seconds": 1.0}
        for dataset, gain in gains.items()
    }
    return {"protocol": "held-out test set v1", "runs": runs, "signals": signals}


def test_the_committed_rule_proposes_from_each_new_cells_signals_under_its_validation_check():
    state = state_of(
        {"near": 0.6, "far": 0.1},
        {
            # near: a large gain, so half frozen is proposed; it beats the probe on val and is the best
            "near": {"feature_extraction": (0.80, 0.80), "partial_half": (0.95, 0.92), "full": (0.90, 0.91)},
            # far: a small gain, so the probe is proposed, but a quarter frozen was far better
            "far": {"feature_extraction": (0.80, 0.70), "partial_quarter": (0.90, 0.90)},
        },
    )
    judged = judge_rule(state, RULE)
    by_cell = {c["cell"]: c for c in judged["cells"]}
    assert by_cell["near/10/m"]["proposed"] == "partial_half" and by_cell["near/10/m"]["outcome"] == pytest.approx(0.92)
    assert by_cell["far/10/m"]["proposed"] == "feature_extraction" and by_cell["far/10/m"]["best"] == "partial_quarter"
    assert [m["cell"] for m in judged["misses"]] == ["far/10/m"]
    auto = judged["verdicts"][COMMITTED]
    assert auto["cells"] == 2 and auto["within_one_se"] == pytest.approx(0.5)
    # CPU: near pays the signals (1), the fine-tune (10) and the probe (1); far the signals and the probe
    grid = 2 * (1.0 + 4 * 10.0)  # the grid's five recipes, without the 5-epoch one
    assert auto["cpu_share_of_grid"] == pytest.approx((12.0 + 2.0) / grid)
    assert judged["verdicts"]["always partial_quarter"]["within_one_se"] == pytest.approx(0.5)
    assert set(judged["per_dataset"]) == {"near", "far"}
    # the ranges the advice states, 0.8-0.95 and 0.6-0.8, hold the outcomes 0.92 and 0.70
    assert judged["expected_range"] == {
        "cells": 2,
        "inside": 2,
        "below": 0,
        "above": 0,
        "median_width": pytest.approx(0.175),
        "narrowest": pytest.approx(0.15),
        "widest": pytest.approx(0.2),
    }


def test_a_fine_tune_that_loses_to_the_probe_on_validation_ships_the_probe():
    state = state_of({"near": 0.6}, {"near": {"feature_extraction": (0.90, 0.85), "partial_half": (0.80, 0.93)}})
    (cell,) = judge_rule(state, RULE)["cells"]
    assert cell["proposed"] == "partial_half" and cell["outcome"] == pytest.approx(0.85)


def test_a_cell_the_rule_was_fitted_on_is_refused():
    state = state_of({"old": 0.6}, {"old": {}})
    with pytest.raises(ValueError, match="fitted on old/10/m"):
        judge_rule(state, RULE)


def test_the_report_lists_every_held_out_cell_and_each_policy():
    state = state_of({"near": 0.6}, {"near": {"partial_half": (0.95, 0.92)}})
    judged = judge_rule(state, RULE)
    meta = {
        "datasets": ["near"],
        "machine": {"cpu": "x", "cores": 2},
        "measured_on": "x, 2 threads a run",
        "grid_cpu_seconds": 82.0,
        "pictures": [],
        "results": "transfer_holdout_near",
    }
    text = markdown(judged, RULE, None, meta)
    assert "| near/10/m | 0.60 | 0.50 | partial_half | 0.920 | partial_half | 0.920 | 0.0 |" in text
    assert f"| {COMMITTED} | 1 | 100% |" in text and "| fastai fine_tune | 1 |" in text
    assert "Runs: x, 2 threads a run." in text


def test_a_report_gives_back_the_rule_it_judged_and_anything_else_is_refused(tmp_path):
    from bench.transfer_holdout import load_rule

    report = tmp_path / "transfer_holdout.json"
    report.write_text(json.dumps({"verdicts": {}, "rule": RULE}))
    assert load_rule(report) == RULE
    rule_file = tmp_path / "advisor_rule.json"
    rule_file.write_text(json.dumps(RULE))
    assert load_rule(rule_file) == RULE
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"verdicts": {}}))
    with pytest.raises(ValueError, match="neither a rule nor"):
        load_rule(other)


def test_the_command_refuses_data_sets_the_rule_was_fitted_on_before_running_anything(tmp_path, capsys):
    from bench.transfer_holdout import main

    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps({**RULE, "fitted_on": ["cifar10/10/mobilenet_v2"]}))
    with pytest.raises(SystemExit):
        main(["--datasets", "cifar10", "--rule", str(rule_file), "--work", str(tmp_path / "work")])
    assert "fitted on 1 cells of cifar10: not held out" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_by_default_the_command_runs_the_data_sets_the_rule_was_not_fitted_on(tmp_path, capsys):
    from bench.transfer_holdout import HOLDOUT_DATASETS, held_out_of, main

    rule = {**RULE, "fitted_on": ["cifar10/10/mobilenet_v2", "cifar10/400/efficientnet_lite0"]}
    assert held_out_of(rule, ["cifar10", "emoji"]) == ["emoji"]
    every = {**RULE, "fitted_on": [f"{name}/10/m" for name in HOLDOUT_DATASETS]}
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps(every))
    with pytest.raises(SystemExit):
        main(["--rule", str(rule_file), "--work", str(tmp_path / "work")])
    assert "fitted on every data set here" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_each_round_of_held_out_data_sets_is_judged_and_reported_on_its_own():
    from bench.transfer_holdout import only_datasets, results_name

    assert results_name(["emoji"]) == "transfer_holdout_emoji"
    assert results_name(["emoji", "cifar10"]) == "transfer_holdout_cifar10_emoji"
    state = state_of({"near": 0.6, "far": 0.1}, {"near": {}, "far": {}})
    near = only_datasets(state, ["near"])
    assert {r["dataset"] for r in near["runs"]} == {"near"} and list(near["signals"]) == ["near/10/m"]
    assert len(state["runs"]) == 2 * len(near["runs"])
    # a round's rule fitted on an earlier round's data set still judges its own round
    rule = {**RULE, "fitted_on": ["far/10/m"]}
    assert [c["cell"] for c in judge_rule(near, rule)["cells"]] == ["near/10/m"]
    with pytest.raises(ValueError, match="fitted on far"):
        judge_rule(state, rule)


def test_the_rule_pays_for_the_random_init_pass_only_if_it_splits_on_the_pretrained_gain():
    state = state_of({"near": 0.6}, {"near": {"partial_half": (0.95, 0.92)}})
    # half of the 1 s of signals' CPU went to the random-init pass (its share of their wall time)
    state["signals"]["near/10/m"] |= {"wall_seconds": 2.0, "timings": {"features": 1.0, "random_features": 1.0}}
    grid = sum(1.0 if recipe == "feature_extraction" else 10.0 for recipe in GRID)
    on_gain = judge_rule(state, RULE)["verdicts"][COMMITTED]["cpu_share_of_grid"]
    assert on_gain == pytest.approx((10.0 + 1.0 + 1.0) / grid)
    on_probe = {**RULE, "tree": {**RULE["tree"], "signal": "probe_accuracy", "threshold": 0.4}}
    assert judge_rule(state, on_probe)["verdicts"][COMMITTED]["cpu_share_of_grid"] == pytest.approx(
        (10.0 + 1.0 + 0.5) / grid
    )


def test_a_report_is_judged_again_from_the_runs_recorded_for_its_own_data_sets(tmp_path):
    from bench.transfer_holdout import recorded_runs

    later_round = tmp_path / "runs.json"
    later_round.write_text(json.dumps(state_of({"far": 0.1}, {"far": {}})))
    committed = tmp_path / "transfer_holdout_near.json"
    committed.write_text(json.dumps(state_of({"near": 0.6}, {"near": {}})))
    state = recorded_runs((later_round, committed), ["near"])
    assert {r["dataset"] for r in state["runs"]} == {"near"} and list(state["signals"]) == ["near/10/m"]
    assert recorded_runs((later_round, committed), ["other"])["runs"] == []


def test_a_rounds_curves_are_its_own_files_and_leave_the_studys_curves_alone(tmp_path, monkeypatch):
    """A held-out data set later joins the study with more seeds: the round's seed-0 curves must not
    overwrite the study's picture of the same data set."""
    from bench.transfer_holdout import report

    monkeypatch.setenv("TRANSFERLINE_BENCH_RESULTS_DIR", str(tmp_path))
    study_curve = tmp_path / "transfer_study_near.png"
    study_curve.write_bytes(b"the study's curves")
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps(RULE))
    written = report(state_of({"near": 0.6}, {"near": {}}), argparse.Namespace(rule=rule_file, datasets=["near"]))
    assert study_curve.read_bytes() == b"the study's curves"
    assert (tmp_path / "transfer_holdout_near.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![transfer_holdout_near.png](transfer_holdout_near.png)" in written.read_text()


def test_a_later_rule_judged_on_a_rounds_runs_writes_beside_the_rounds_own_report(tmp_path, monkeypatch):
    """`--suffix` judges another rule on a round's recorded runs: its report gets its own name, and the
    round's report, the verdict of the rule committed when the round ran, stays as it was."""
    from bench.transfer_holdout import report, results_name

    assert results_name(["near"]) == "transfer_holdout_near"
    assert results_name(["near", "far"], "later_rule") == "transfer_holdout_far_near_later_rule"
    monkeypatch.setenv("TRANSFERLINE_BENCH_RESULTS_DIR", str(tmp_path))
    rounds_own = tmp_path / "transfer_holdout_near.json"
    rounds_own.write_text('{"the round": "as judged then"}')
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps(RULE))
    namespace = argparse.Namespace(rule=rule_file, datasets=["near"], suffix="later_rule")
    written = report(state_of({"near": 0.6}, {"near": {}}), namespace)
    assert written.name == "transfer_holdout_near_later_rule.md"
    assert json.loads((tmp_path / "transfer_holdout_near_later_rule.json").read_text())["datasets"] == ["near"]
    assert rounds_own.read_text() == '{"the round": "as judged then"}'


def test_report_only_judges_the_runs_another_report_recorded_when_named(tmp_path, monkeypatch, capsys):
    """`--report-only --runs FILE` judges the runs FILE recorded (another suffix's, some made again), not
    the round's own; a file with no runs of the data set is refused, named."""
    from bench.transfer_holdout import main

    monkeypatch.setenv("TRANSFERLINE_BENCH_RESULTS_DIR", str(tmp_path))
    (tmp_path / "transfer_holdout_mnist.json").write_text(json.dumps(state_of({"mnist": 0.1}, {"mnist": {}})))
    remade = state_of({"mnist": 0.6}, {"mnist": {"partial_half": (0.95, 0.92)}})
    (tmp_path / "remade.json").write_text(json.dumps(remade))
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps(RULE))
    common = ["--datasets", "mnist", "--rule", str(rule_file), "--work", str(tmp_path / "work"), "--report-only"]
    main([*common, "--runs", str(tmp_path / "remade.json"), "--suffix", "later"])
    judged = json.loads((tmp_path / "transfer_holdout_mnist_later.json").read_text())
    assert judged["runs"] == remade["runs"] and judged["signals"]["mnist/10/m"]["pretrained_gain"] == 0.6
    (tmp_path / "other.json").write_text(json.dumps(state_of({"near": 0.6}, {"near": {}})))
    with pytest.raises(SystemExit):
        main([*common, "--runs", str(tmp_path / "other.json"), "--suffix", "none"])
    assert f"none of {tmp_path / 'other.json'} holds any" in capsys.readouterr().err


def test_a_nearest_cells_rule_is_judged_from_its_cells_and_read_back_from_a_report(tmp_path):
    """The committed form of the rule: each new cell gets what its nearest study cells favour, it pays no
    random-init pass (it reads no pretrained gain), and a report that recorded it gives it back."""
    from bench.transfer_holdout import load_rule
    from transferline.model.nearest_cells import NEAREST_CELLS

    def study_cell(name: str, probe: float, loss: dict[str, float]) -> dict:
        return {
            "cell": name,
            "signals": {"images_per_class": 10, "probe_accuracy": probe},
            "loss": loss,
            "cpu_share": dict.fromkeys(loss, 0.1),
            "gain_over_probe": dict.fromkeys(loss, 0.05),
        }

    rule = {
        NEAREST_CELLS: {
            "signals": ["images_per_class", "probe_accuracy"],
            "k": 1,
            "cpu_weight": 0.0,
            "cells": [
                study_cell("low/10/m", 0.2, {"feature_extraction": 0.0, "partial_quarter": 0.1}),
                study_cell("high/10/m", 0.9, {"feature_extraction": 0.1, "partial_quarter": 0.0}),
            ],
        },
        "recipes": {"feature_extraction": {}, "partial_quarter": {}},
        "validation_check": True,
        "validation_margin_se": 0.0,
        "fitted_on": ["low/10/m", "high/10/m"],
    }
    state = state_of(
        {"new": 0.6},
        {"new": {"feature_extraction": (0.80, 0.70), "partial_quarter": (0.90, 0.90)}},
    )
    for signals in state["signals"].values():
        signals.update(probe_accuracy=0.8, seconds=4.0, wall_seconds=4.0, timings={"random_features": 1.0})
    judged = judge_rule(state, rule)
    assert judged["cells"][0]["proposed"] == "partial_quarter" and judged["misses"] == []
    auto = judged["verdicts"][COMMITTED]
    # the signals less the random-init pass (3), the fine-tune (10) and the probe (1), of a grid of 41
    assert auto["within_one_se"] == 1.0 and auto["cpu_share_of_grid"] == pytest.approx(14.0 / 41.0)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"rule": rule}))
    assert load_rule(report) == rule
    report.write_text(json.dumps({"rule": {"recipes": {}}}))
    with pytest.raises(ValueError, match="neither a rule nor"):
        load_rule(report)


def test_a_report_names_the_rule_file_it_judged_and_the_signals_it_reads():
    """The committed rule is named as such; a rival judged on the same runs by its own file, so a suffixed
    report never passes another rule off as the committed one."""
    from bench.transfer_holdout import display_path, rule_words
    from bench.transfer_study import RULE_FILE

    rule = {NEAREST_CELLS: {"signals": ["images_per_class", "probe_accuracy"]}}
    committed = rule_words(rule, display_path(RULE_FILE))
    assert committed.startswith("`transferline/model/advisor_rule.json` as committed")
    assert committed.endswith("nearest cells on images_per_class, probe_accuracy")
    rival = rule_words(rule, "bench/results/advisor_rule_six_signals.json")
    assert rival.startswith("`bench/results/advisor_rule_six_signals.json`") and "as committed" not in rival
    assert rule_words({"tree": {}}, None).endswith("as committed when these runs were judged")
