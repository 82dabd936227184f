"""`strategy: auto` end to end on tiny data: the transfer study's quick mode fits a rule, the train stage
measures the signals, follows the rule, and records its advice beside the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import make_tiny_params
from transferline.errors import ParamsError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The study's quick mode, run for real: tiny generated data sets, every recipe, one epoch each."""
    out = tmp_path_factory.mktemp("study")
    env = {**os.environ, "TRANSFERLINE_BENCH_RESULTS_DIR": str(out), "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.transfer_study", "--quick", "--work", str(out / "work")],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_the_quick_study_reports_every_cell_and_fits_a_rule(study: Path):
    report = json.loads((study / "transfer_study.json").read_text())
    cells = {c["cell"] for c in report["cells"]}
    assert cells == {"tiny_a/6/mobilenet_v2", "tiny_b/6/mobilenet_v2"}
    for cell in report["cells"]:
        assert set(cell["accuracy"]) >= {"feature_extraction", "partial_quarter", "partial_half", "full"}
        assert cell["auto_pick"] in cell["accuracy"]
    assert set(report["verdicts"]) >= {"auto (leave one data set out)", "always full", "fastai fine_tune"}
    assert set(report["kendall_tau"]) == {
        "images_per_class",
        "num_classes",
        "probe_accuracy",
        "knn_accuracy",
        "logme",
        "pretrained_gain",
    }
    rule = json.loads((study / "advisor_rule.json").read_text())
    assert "tree" in rule and rule["cost"]["mobilenet_v2"]["partial"] > 0
    for name in ("transfer_study.md", "transfer_study_tiny_a.png", "transfer_study_tiny_b.png"):
        assert (study / name).stat().st_size > 0
    assert (study / "transfer_study_tiny_a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_auto_follows_the_rule_and_records_its_advice(study: Path, run_train, tmp_path: Path):
    rule = json.loads((study / "advisor_rule.json").read_text())
    # a rule whose root splits on the probe: every tiny data set scores above 0, so the "gt" branch fires
    rule["tree"] = {
        "signal": "probe_accuracy",
        "threshold": 0.0,
        "le": {"recipe": "feature_extraction", "gain_over_probe": [0, 0], "cells": 1},
        "gt": {"recipe": "partial_half", "gain_over_probe": [-0.1, 0.05], "cells": 2},
    }
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps(rule))
    metrics = run_train(make_tiny_params(strategy="auto", advisor_rule=rule_file))
    assert metrics["strategy"] == "partial"
    advice = json.loads((tmp_path / "out" / "models" / "advice.json").read_text())
    assert advice["recipe"] == "partial_half"
    assert advice["path"][0].startswith("probe_accuracy ") and "> 0" in advice["path"][0]
    assert advice["params"]["strategy"] == "partial" and advice["params"]["frozen_blocks"] > 0
    low, high = advice["expected_accuracy"]
    assert low <= high and 0 <= low <= 1
    assert 0 <= advice["signals"]["probe_accuracy"] <= 1 and advice["signals"]["num_classes"] == 3
    meta = json.loads((tmp_path / "out" / "models" / "model.json").read_text())
    assert meta["strategy"] == "partial" and meta["advice"]["recipe"] == "partial_half"
    # a second run gives the same models/ bytes: no timing reaches the advice or the model's description
    run_train(make_tiny_params(strategy="auto", advisor_rule=rule_file), out="again")
    for name in ("advice.json", "model.json", "model.pt"):
        assert (tmp_path / "out" / "models" / name).read_bytes() == (tmp_path / "again" / "models" / name).read_bytes()


def test_auto_without_a_rule_says_how_to_get_one(run_train, tmp_path: Path):
    with pytest.raises(ParamsError, match=r"bench\.transfer_study"):
        run_train(make_tiny_params(strategy="auto", advisor_rule=tmp_path / "missing.json"))


def test_a_cell_stopped_midway_is_left_out_of_the_verdicts():
    """A resumed study holds cells with only some recipes run; judging a policy there would compare it
    against a best that was never measured."""
    from bench.transfer_analysis import build_cells

    signals = {name: {"seconds": 1.0, **dict.fromkeys(_signal_names(), 0.5)} for name in ("a/10/m", "b/10/m")}
    records = [
        {"dataset": d, "size": 10, "backbone": "m", "recipe": r, "test_accuracy": 0.5, "cpu_seconds": 1.0}
        for d, recipes in (("a", ("full", "head")), ("b", ("full",)))
        for r in recipes
    ]
    assert [c.name for c in build_cells(records, signals)] == ["a/10/m", "b/10/m"]
    assert [c.name for c in build_cells(records, signals, required={"full", "head"})] == ["a/10/m"]


def _signal_names() -> tuple[str, ...]:
    from transferline.model.advisor import SIGNALS

    return tuple(SIGNALS)


def test_the_hindsight_bound_picks_the_cheapest_recipe_within_one_standard_error():
    """The report's cost floor: the cheapest recipe still within one SE of the best, not the best itself."""
    from bench.transfer_analysis import cheapest_within_one_se, judge_policy
    from transferline.model.advisor import Cell, Signals

    signals = Signals(10, 2, 0.5, 0.5, 0.0, 0.1)
    cells = [
        Cell("a", signals, {"head": 0.80, "full": 0.82, "partial": 0.70}, {"head": 1, "full": 10, "partial": 5}, "a"),
        Cell("b", signals, {"head": 0.60, "full": 0.90, "partial": 0.89}, {"head": 1, "full": 10, "partial": 5}, "b"),
    ]
    picks = cheapest_within_one_se(cells, {"a": 0.03, "b": 0.02})
    assert picks == {"a": "head", "b": "partial"}
    verdict = judge_policy(cells, picks, {"a": 0.03, "b": 0.02}, {})
    assert verdict["within_one_se"] == 1.0
    assert verdict["cpu_share_of_grid"] == 6 / 32
