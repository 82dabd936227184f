"""bench/seed_spread.py --quick on the tiny data: per-seed models, their mean and sd, and the accuracy-table row."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys

import yaml

from bench.seed_spread import DEFAULT_NAME
from tests.conftest import PROJECT_ROOT, QUIET_ENV

ROW_NAME = f"{DEFAULT_NAME}, seed spread"


def test_quick_seed_spread_writes_mean_and_sd_and_appends_its_row_to_the_accuracy_table(prepared, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    committed = PROJECT_ROOT / "bench" / "results" / "train_accuracy.json"
    shutil.copy(committed, results / "train_accuracy.json")
    before = committed.stat().st_mtime_ns
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"batch_size": 8, "early_stopping_patience": None}}))
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(PROJECT_ROOT), "TRANSFERLINE_BENCH_RESULTS_DIR": str(results)}
    command = [sys.executable, "-m", "bench.seed_spread", "--quick", "--seeds", "2", "--prepared", str(prepared)]
    command += ["--params", str(params), "--work-dir", str(tmp_path / "work"), "--append-accuracy-row"]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    spread = json.loads((results / "seed_spread.json").read_text())
    assert [r["seed"] for r in spread["runs"]] == [0, 1] and spread["recipe"]["epochs"] == 1
    accuracies = [r["test_accuracy"] for r in spread["runs"]]
    assert spread["test_accuracy"] == {"mean": statistics.fmean(accuracies), "sd": statistics.stdev(accuracies)}
    assert spread["runs"][0]["model_sha256"] != spread["runs"][1]["model_sha256"]  # the seed reached the training
    assert spread["environment"]["pinned"] is True  # trained in a pinned process, as the stage trains
    assert spread["machine"]["cpu_instruction_sets"] and "±" in (results / "seed_spread.md").read_text()

    table = json.loads((results / "train_accuracy.json").read_text())
    previous = json.loads(committed.read_text())["runs"]
    assert set(table["runs"]) == {*previous, ROW_NAME}  # added, nothing else lost
    row = table["runs"][ROW_NAME]
    assert row["test_accuracy"] == spread["test_accuracy"]["mean"]
    assert row["test_accuracy_sd"] == spread["test_accuracy"]["sd"]
    assert ROW_NAME in (results / "train_accuracy.md").read_text()
    # the table keeps the date and CPU of its full run; the row added says when and where it was measured
    assert table["machine"] == json.loads(committed.read_text())["machine"]
    assert row["measured"]["cpu"] == spread["machine"]["cpu"]
    assert row["measured"]["date"] >= spread["machine"]["date"] > table["machine"]["date"]  # ISO dates, in order
    assert f"{ROW_NAME} alone on {row['measured']['date']}" in (results / "train_accuracy.md").read_text()
    assert committed.stat().st_mtime_ns == before  # the committed results were not touched


def test_a_named_recipe_gets_its_own_results_and_row_and_auto_records_what_it_chose(prepared, tmp_path):
    """`--set strategy=auto --name auto`: the advisor's pick gets the same error bar, in its own files, beside
    the default's row; each seed says which recipe auto kept. A changed recipe without a name is refused."""
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(PROJECT_ROOT / "bench" / "results" / "train_accuracy.json", results / "train_accuracy.json")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"batch_size": 8, "early_stopping_patience": None}}))
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(PROJECT_ROOT), "TRANSFERLINE_BENCH_RESULTS_DIR": str(results)}
    command = [sys.executable, "-m", "bench.seed_spread", "--quick", "--seeds", "2", "--prepared", str(prepared)]
    command += ["--params", str(params), "--work-dir", str(tmp_path / "work"), "--set", "strategy=auto"]
    unnamed = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert unnamed.returncode == 2 and "--name" in unnamed.stderr
    named = [*command, "--name", "auto", "--append-accuracy-row"]
    result = subprocess.run(named, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    assert not (results / "seed_spread.json").exists()  # the default's spread is not replaced
    spread = json.loads((results / "seed_spread_auto.json").read_text())
    assert spread["overrides"] == {"strategy": "auto"} and spread["recipe"]["strategy"] == "auto"
    advice = json.loads((tmp_path / "work_auto" / "seed0" / "models" / "advice.json").read_text())
    kept = advice["validation"]["kept"] if advice["validation"] else advice["recipe"]  # the check, if it ran
    assert spread["runs"][0]["chosen"] == kept
    report = (results / "seed_spread_auto.md").read_text()
    assert report.startswith("# Seed spread of auto") and f"chose {kept}" in report
    table = json.loads((results / "train_accuracy.json").read_text())
    assert table["runs"]["auto, seed spread"]["test_accuracy"] == spread["test_accuracy"]["mean"]
