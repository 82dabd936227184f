"""Checkpoint and resume: a stopped or killed run continues where it was; changed params start over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import PROJECT_ROOT, QUIET_ENV


def read_model(out: Path) -> tuple[dict, dict]:
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    return state, json.loads((out / "models" / "model.json").read_text())


def read_run_record(metrics_dir: Path) -> dict:
    return json.loads((metrics_dir / "train_run.json").read_text())


def test_a_run_stopped_after_epoch_1_resumes_at_epoch_2_and_ends_where_an_unbroken_run_ends(
    run_train, tiny_params, tmp_path
):
    params = tiny_params(strategy="full", epochs=3)
    stopped = run_train(params, out="broken", stop_after_epoch=1)
    assert stopped == {"interrupted": True, "epochs_done": 1, "resumed_from_epoch": 0}
    checkpoint = torch.load(tmp_path / "broken" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and [r["epoch"] for r in checkpoint["history"]] == [1]
    assert not (tmp_path / "broken" / "models").exists()

    resumed = run_train(params, out="broken")
    assert resumed["resumed_from_epoch"] == 1 and resumed["epochs_run"] == 3
    state, meta = read_model(tmp_path / "broken")
    assert read_run_record(tmp_path / "broken" / "metrics")["resumed_from_epoch"] == 1
    # DVCLive curves are complete: the resumed run replays epoch 1 from the checkpoint
    curve = (tmp_path / "broken" / "dvclive" / "plots" / "metrics" / "val" / "accuracy.tsv").read_text().splitlines()
    assert curve[0].startswith("step") and len(curve) == 1 + 3
    # finished: the weights files are gone, a small record stays (a small DVC out)
    assert sorted(p.name for p in (tmp_path / "broken" / "checkpoints").iterdir()) == ["state.json"]
    assert json.loads((tmp_path / "broken" / "checkpoints" / "state.json").read_text())["status"] == "complete"

    unbroken = run_train(params, out="unbroken")
    assert unbroken["resumed_from_epoch"] == 0
    reference, reference_meta = read_model(tmp_path / "unbroken")
    assert meta["best_epoch"] == reference_meta["best_epoch"]
    assert resumed["val_accuracy"] == unbroken["val_accuracy"]
    for key, value in reference.items():
        # same seeds, RNG states restored: the same numbers (tolerance only for kernel-level float noise)
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_written_for_other_params_is_not_resumed(run_train, tiny_params, tmp_path, caplog):
    run_train(tiny_params(strategy="full", epochs=3), stop_after_epoch=1)
    metrics = run_train(tiny_params(strategy="full", epochs=3, lr=5e-4))
    assert metrics["resumed_from_epoch"] == 0 and metrics["epochs_run"] == 3
    assert "ignoring checkpoint" in caplog.text and "other params or data" in caplog.text


def test_device_and_thread_count_do_not_invalidate_a_checkpoint(run_train, tiny_params):
    run_train(tiny_params(strategy="partial", frozen_blocks=15, epochs=2), stop_after_epoch=1)
    metrics = run_train(tiny_params(strategy="partial", frozen_blocks=15, epochs=2, device="cpu", num_threads=2))
    assert metrics["resumed_from_epoch"] == 1


def write_project(root: Path, prepared: Path, epochs: int) -> None:
    """A working directory with params.yaml and the tiny prepared data, as `dvc repro` would leave it."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(prepared, target_is_directory=True)
    params = {
        "train": {
            "strategy": "full",
            "epochs": epochs,
            "warmup_epochs": 1,
            "batch_size": 4,
            "early_stopping_patience": None,
            "num_threads": 1,
        }
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def start_stage(root: Path) -> subprocess.Popen:
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def checkpoint_state(directory: Path) -> dict:
    path = directory / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_resumes_from_the_last_checkpoint(prepared, tmp_path):
    """Killed half-way through an epoch (timed from the epochs before it), not at a checkpoint boundary."""
    root = tmp_path / "project"
    write_project(root, prepared, epochs=30)
    checkpoints = root / "checkpoints" / "train"
    process = start_stage(root)
    deadline = time.monotonic() + 120
    seen: dict[int, float] = {}  # epoch -> when its checkpoint appeared
    killed_at = None
    try:
        while time.monotonic() < deadline and process.poll() is None and killed_at is None:
            state = checkpoint_state(checkpoints)
            if state.get("status") == "running":
                seen.setdefault(state["epoch"], time.monotonic())
                epoch = state["epoch"]
                if epoch - 1 in seen:
                    epoch_s = seen[epoch] - seen[epoch - 1]
                    time.sleep(max(0.0, seen[epoch] + epoch_s / 2 - time.monotonic()))  # the middle of the next epoch
                    if checkpoint_state(checkpoints)["epoch"] == epoch:
                        process.send_signal(signal.SIGKILL)
                        killed_at = epoch
                    continue
            time.sleep(0.005)
    finally:
        if process.poll() is None and killed_at is None:
            process.kill()
        output = process.communicate(timeout=60)[0]
    assert killed_at is not None, f"never saw two checkpoints:\n{output}"
    assert process.returncode == -signal.SIGKILL
    assert not (root / "models").exists()
    saved = torch.load(checkpoints / "last.pt", weights_only=True)
    # the epoch in progress left no checkpoint: the one on disk is whole (atomic) and is the last finished epoch's
    assert saved["epoch"] == killed_at < 30, (saved["epoch"], killed_at)
    assert [record["epoch"] for record in saved["history"]] == list(range(1, killed_at + 1))

    rerun = start_stage(root)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    assert f"resuming from the checkpoint of epoch {killed_at}/30" in output
    meta = json.loads((root / "models" / "model.json").read_text())
    assert read_run_record(root / "metrics")["resumed_from_epoch"] == killed_at and meta["training"]["epochs_run"] == 30
    assert json.loads((root / "metrics" / "train.json").read_text())["epochs_run"] == 30
    # finished: only the small record is left in the DVC out, nothing a killed writer might have left
    assert sorted(p.name for p in checkpoints.iterdir()) == ["state.json"]
    assert json.loads((checkpoints / "state.json").read_text())["status"] == "complete"
