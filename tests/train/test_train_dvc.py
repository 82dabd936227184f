"""The train stage through real `dvc repro` in a throwaway git+DVC repository, on tiny data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import QUIET_ENV, run_tool

pytestmark = pytest.mark.slow


def set_params(repo: Path, **sections: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def tiny_repo(dvc_repo: Path, write_tiny_images) -> Path:
    write_tiny_images(dvc_repo / "images")
    set_params(
        dvc_repo,
        ingest={"source": "folder", "path": "images", "per_class": None},
        preprocess={"image_size": 32},
        prepare={"min_per_class": 3},
        train={"epochs": 3, "warmup_epochs": 1, "batch_size": 8, "early_stopping_patience": None, "num_threads": 1},
    )
    return dvc_repo


def test_dvc_repro_trains_then_skips_and_reports_metrics_and_plots(tiny_repo):
    repo = tiny_repo
    first = run_tool(["dvc", "repro", "train"], repo)
    assert "Running stage 'train'" in first.stdout
    meta = json.loads((repo / "models" / "model.json").read_text())
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["backbone"] == "mobilenet_v2"
    dataset = json.loads((repo / "data" / "prepared" / "dataset.json").read_text())
    assert meta["data_version"] == dataset["data_version"] and meta["preprocess"]["image_size"] == 32
    assert meta["weights"]["kind"] == "torchvision"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]
    outs = {o["path"] for o in lock["outs"]}
    assert {"models", "data/features", "checkpoints/train", "metrics/train.json", "metrics/train_run.json"} <= outs
    assert lock["params"]["params.yaml"]["train"]["epochs"] == 3

    second = run_tool(["dvc", "repro", "train"], repo)
    assert "Stage 'train' didn't change, skipping" in second.stdout

    metrics = json.loads(run_tool(["dvc", "metrics", "show", "--json"], repo).stdout)
    shown = json.dumps(metrics)
    assert "metrics/train.json" in shown and "val_accuracy" in shown
    plots = run_tool(["dvc", "plots", "show", "--json"], repo)
    assert "dvclive/train/plots/metrics/val/accuracy.tsv" in plots.stdout

    set_params(repo, train={"strategy": "feature_extraction"})
    third = run_tool(["dvc", "repro", "train"], repo)
    assert "Running stage 'train'" in third.stdout
    key = json.loads((repo / "data" / "features" / "key.json").read_text())
    assert key["key"]["data_version"] == dataset["data_version"] and key["key"]["backbone"] == "mobilenet_v2"
    assert "up to date" in run_tool(["dvc", "status", "train"], repo).stdout


def test_dvc_repro_after_a_kill_resumes_the_persisted_checkpoint(tiny_repo):
    repo = tiny_repo
    run_tool(["dvc", "repro", "prepare"], repo)
    set_params(repo, train={"epochs": 12, "batch_size": 4})
    state_file = repo / "checkpoints" / "train" / "state.json"
    env = {**os.environ, **QUIET_ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        ["dvc", "repro", "train"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    killed_at = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if state.get("status") == "running" and state["epoch"] >= 1:
                os.killpg(process.pid, signal.SIGKILL)  # dvc and the stage it started
                killed_at = state["epoch"]
                break
        time.sleep(0.02)
    output = process.communicate(timeout=60)[0]
    assert killed_at is not None, output

    rerun = run_tool(["dvc", "repro", "train"], repo)
    log = rerun.stdout + rerun.stderr
    assert "resuming from the checkpoint of epoch" in log
    meta = json.loads((repo / "models" / "model.json").read_text())
    run_record = json.loads((repo / "metrics" / "train_run.json").read_text())
    assert run_record["resumed_from_epoch"] >= killed_at and meta["training"]["epochs_run"] == 12
    # the history spans the epochs before the kill (from the checkpoint) and after it
    assert [epoch["epoch"] for epoch in run_record["history"]] == list(range(1, 13))
    assert all(0.0 <= epoch["val_accuracy"] <= 1.0 for epoch in run_record["history"])


def test_dvc_lock_records_the_same_models_hash_when_another_cpu_retrains(tiny_repo):
    """`dvc repro -f train` as "an AVX2-only machine with one core" leaves the hash of models/ unchanged."""
    repo = tiny_repo
    set_params(repo, train={"num_threads": None, "epochs": 2, "reproducible": True})
    run_tool(["dvc", "repro", "train"], repo)

    def hashes() -> dict[str, str]:
        outs = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]["outs"]
        return {o["path"]: o["md5"] for o in outs}

    first = hashes()
    caps = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1"}
    env = {**os.environ, **QUIET_ENV, **caps, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    first_cpu = min(os.sched_getaffinity(0))
    forced = subprocess.run(
        ["dvc", "repro", "-f", "train"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {first_cpu}),
    )
    assert forced.returncode == 0, forced.stdout[-2000:] + forced.stderr[-3000:]
    assert "Running stage 'train'" in forced.stdout
    second = hashes()
    assert second["models"] == first["models"]  # evaluate and export, which depend on models, stay up to date
    assert second["metrics/train_run.json"] != first["metrics/train_run.json"]  # the record says it ran again
    assert json.loads((repo / "metrics" / "train_run.json").read_text())["environment"]["pinned"] is True
