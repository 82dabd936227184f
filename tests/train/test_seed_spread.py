"""bench/seed_spread.py --quick on the tiny data: per-seed models, their mean and sd, and the accuracy-table row."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys

import yaml

from bench.seed_spread import ROW_NAME
from tests.conftest import PROJECT_ROOT, QUIET_ENV


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
    assert committed.stat().st_mtime_ns == before  # the committed results were not touched
