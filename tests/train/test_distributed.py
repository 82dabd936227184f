"""Data-parallel training (DDP) with real torchrun and gloo: 2 processes on the tiny data set.

One optimisation step on 2 processes gives the parameters one process gets from the same global batch; a
hand-started torchrun, the stage's own launcher (`python -m stages.train` with train.distributed.nproc 2) and
`dvc repro` (the flow's command) give the same bytes, across a stop and a resume; a killed process makes the
launcher fail at once with a plain message, and the same command then resumes from the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import PROJECT_ROOT, QUIET_ENV, copy_pipeline, init_git_dvc, run_tool
from transferline.config import TrainParams
from transferline.model.backbones import build_model

pytestmark = pytest.mark.slow

# One global batch of 24 images per epoch (12 per process): epoch 1 is exactly one optimisation step. SGD,
# because its step is linear in the gradient: AdamW's first step is lr * sign(gradient) wherever the gradient is
# tiny, which turns float rounding into full-size differences and would test nothing but that.
ONE_BATCH = {
    "strategy": "full",
    "epochs": 2,
    "warmup_epochs": 0,
    "batch_size": 24,
    "optimizer": "sgd",
    "lr": 0.003,
    "early_stopping_patience": None,
    "distributed": {"nproc": 2},
}
LAUNCH_TIMEOUT_S = 240


def write_project(root: Path, prepared: Path, train: dict) -> Path:
    """A working directory as `dvc repro` leaves it for the train stage: data/prepared and params.yaml."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(prepared, target_is_directory=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    return root


def stage_env() -> dict[str, str]:
    return {**os.environ, **QUIET_ENV, "PYTHONPATH": str(PROJECT_ROOT), "OMP_WAIT_POLICY": "PASSIVE"}


def run_stage(root: Path, command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=root, env=stage_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc-per-node",
    "2",
    "-m",
    "stages.train",
]
STAGE = [sys.executable, "-m", "stages.train"]


@pytest.fixture(scope="module")
def after_one_step(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONE_BATCH by a hand-started torchrun, stopped after epoch 1: its checkpoint holds the weights after one step."""
    root = write_project(tmp_path_factory.mktemp("ddp") / "project", prepared, ONE_BATCH)
    started = run_stage(root, [*TORCHRUN, "--stop-after-epoch", "1"])
    # torchrun started the processes unpinned: each re-executed itself with the pinned math (1 thread each)
    assert "train.reproducible: restarting with" in started.stderr and "OMP_NUM_THREADS=1," in started.stderr
    return root


def initial_state(params: TrainParams) -> dict[str, torch.Tensor]:
    """The weights training starts from: the stage seeds the new head exactly so."""
    torch.manual_seed(params.seed)
    model, _ = build_model(params.backbone, 3, params.pretrained, params.weights_path)
    return model.state_dict()


def test_one_step_on_two_processes_gives_the_parameters_of_one_process_on_the_global_batch(
    after_one_step, run_train, tmp_path
):
    params = TrainParams(**ONE_BATCH)
    stopped = run_train(params, out="one", stop_after_epoch=1)
    assert stopped["interrupted"] is True and stopped["epochs_done"] == 1
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=True)
    two = torch.load(after_one_step / "checkpoints" / "train" / "last.pt", weights_only=True)
    assert one["epoch"] == two["epoch"] == 1
    assert two["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-5)
    before = initial_state(params)
    compared = 0
    for key, start in before.items():
        if not start.is_floating_point():
            continue
        step = one["model"][key] - start
        # within 5% of the tensor's largest step: float rounding moves a few elements by ~0.5% of it; BatchNorm
        # on each process's 12 images, or each process's own dropout masks, move nearly all of them by ~100%
        torch.testing.assert_close(
            two["model"][key], one["model"][key], rtol=0, atol=0.05 * step.abs().max().item() + 1e-6
        )
        compared += 1
    assert compared > 250  # every weight and BatchNorm statistic of MobileNetV2 and the head
    assert (one["model"]["head.weight"] - before["head.weight"]).abs().max() > 1e-3  # the step did move them


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_stage_resumes_a_two_process_run_with_the_usual_outputs_and_the_bytes_of_dvc_repro(
    after_one_step, prepared, tmp_path
):
    """The stage's launcher finishes what a hand-started torchrun began; `dvc repro`, as the flow runs it, makes
    the same run unbroken: same model bytes and curves (reproducible mode, each process re-executed pinned)."""
    root = tmp_path / "resumed"
    shutil.copytree(after_one_step, root, symlinks=True)
    resumed = run_stage(root, STAGE)
    assert "starting 2 processes: torchrun --standalone --nproc-per-node=2 -m stages.train" in resumed.stderr
    assert "resuming from the checkpoint of epoch 1/2" in resumed.stderr
    metrics = json.loads((root / "metrics" / "train.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["resumed_from_epoch"] == 1 and metrics["train_images_per_s"] > 0
    record = json.loads((root / "metrics" / "train_run.json").read_text())
    assert record["distributed"]["processes"] == 2 and record["distributed"]["backend"] == "gloo"
    assert record["distributed"]["images_per_process_per_step"] == 12
    environment = record["environment"]
    assert environment["pinned"] is True and environment["threads"] == 1  # 2 threads shared out over 2 processes
    assert record["model_sha256"] == digest(root / "models" / "model.pt")
    meta = json.loads((root / "models" / "model.json").read_text())
    assert meta["training"]["epochs_run"] == 2 and meta["classes"] == ["cat", "dog", "fox"]
    curve = (root / "dvclive" / "train" / "plots" / "metrics" / "val" / "loss.tsv").read_text()
    assert len(curve.splitlines()) == 1 + 2
    assert sorted(p.name for p in (root / "checkpoints" / "train").iterdir()) == ["state.json"]
    assert (root / "data" / "features" / "key.json").is_file()

    repo = tmp_path / "repo"
    copy_pipeline(repo)
    init_git_dvc(repo)
    shutil.copytree(prepared, repo / "data" / "prepared")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(ONE_BATCH)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = run_tool(["dvc", "repro", "--single-item", "train"], repo)
    assert "starting 2 processes" in repro.stderr and "data-parallel: 2 processes, global batch 24" in repro.stderr
    assert digest(repo / "models" / "model.pt") == digest(root / "models" / "model.pt")
    assert (repo / "dvclive" / "train" / "plots" / "metrics" / "val" / "loss.tsv").read_text() == curve
    unbroken = json.loads((repo / "models" / "model.json").read_text())
    assert unbroken["best_epoch"] == meta["best_epoch"]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def rank_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the processes the launcher started (their RANK variable)."""
    ranks = {}
    for pid in children(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        variables = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
        if "RANK" in variables:
            ranks[int(variables["RANK"])] = pid
    return ranks


def checkpoint_epoch(directory: Path) -> int:
    path = directory / "state.json"
    state = json.loads(path.read_text()) if path.is_file() else {}
    return state["epoch"] if state.get("status") == "running" else 0


def test_a_killed_process_fails_the_launch_at_once_with_a_plain_message_and_a_rerun_resumes(prepared, tmp_path):
    train = {"strategy": "full", "epochs": 5, "warmup_epochs": 1, "batch_size": 8, "early_stopping_patience": None}
    # per-process BatchNorm here: the other choice (resuming works alike for both)
    train["distributed"] = {"nproc": 2, "batchnorm": "per_process"}
    root = write_project(tmp_path / "project", prepared, train)
    checkpoints = root / "checkpoints" / "train"
    launcher = subprocess.Popen(
        STAGE, cwd=root, env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ranks: dict[int, int] = {}
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while checkpoint_epoch(checkpoints) < 2 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        ranks = rank_pids(launcher.pid)
        assert sorted(ranks) == [0, 1], f"no 2 processes running after 2 epochs: {ranks}"
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = launcher.communicate(timeout=60)  # a hang fails here
        seconds = time.monotonic() - killed
    finally:
        if launcher.poll() is None:  # it hung: stop it and what it started (its children, so ours)
            for pid in [*children(launcher.pid), launcher.pid]:
                os.kill(pid, signal.SIGKILL)
            launcher.communicate()
    assert launcher.returncode == 1, stderr[-3000:]
    assert seconds < 30, seconds
    saved = torch.load(checkpoints / "last.pt", weights_only=True)["epoch"]
    assert 2 <= saved < 5
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: data-parallel training failed: rank 1 (pid ")
    assert f"rank 1 (pid {ranks[1]}) was killed by SIGKILL" in message
    assert f"The checkpoint of epoch {saved} is in checkpoints/train: run the same command again" in message
    assert "Traceback" not in message and not (root / "models").exists()

    rerun = run_stage(root, STAGE)
    assert re.search(rf"resuming from the checkpoint of epoch {saved}/5", rerun.stderr)
    record = json.loads((root / "metrics" / "train_run.json").read_text())
    assert record["resumed_from_epoch"] == saved and record["distributed"]["processes"] == 2
    assert record["distributed"]["batchnorm"].startswith("statistics of each process's rows")
    assert json.loads((root / "metrics" / "train.json").read_text())["epochs_run"] == 5
    assert json.loads((checkpoints / "state.json").read_text())["status"] == "complete"


def test_a_checkpoint_resumes_under_any_process_count_unless_batchnorm_is_per_process():
    """Global-batch BatchNorm trains the same model on any count: the count is not part of what a checkpoint
    must match; per-process BatchNorm makes it part of the recipe."""
    from stages.train import checkpoint_recipe
    from transferline.model.checkpoints import run_digest
    from transferline.model.distributed import SINGLE, Ranks

    def digest(params: TrainParams, ranks: Ranks) -> str:
        return run_digest(checkpoint_recipe(params, ranks), "v1", {"image_size": 32}, ["a", "b"], 10)

    two, four = Ranks(0, 2, 0, 2), Ranks(0, 4, 0, 4)
    shared = TrainParams(distributed={"nproc": 2})
    assert digest(shared, two) == digest(shared, four) == digest(TrainParams(), SINGLE)
    own = TrainParams(distributed={"nproc": 2, "batchnorm": "per_process"})
    assert digest(own, two) != digest(own, four)
    assert digest(own, SINGLE) == digest(TrainParams(), SINGLE)  # one process: nothing is per process


def test_a_portable_two_process_training_runs_no_onednn_kernel_and_records_its_mode(prepared, tmp_path):
    """train.reproducible: portable under DDP: every rank re-executes itself with oneDNN off (ONEDNN_VERBOSE
    lists each primitive a process runs: none here; tests/train/test_portable_kernels.py shows the same check
    seeing oneDNN at work without portable mode), and the run record says so."""
    root = write_project(tmp_path / "project", prepared, {**ONE_BATCH, "epochs": 1, "reproducible": "portable"})
    result = subprocess.run(
        STAGE, cwd=root, env={**stage_env(), "ONEDNN_VERBOSE": "1"}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "starting 2 processes" in result.stderr
    output = (result.stdout + result.stderr).splitlines()
    assert not [line for line in output if line.startswith("onednn_verbose") and ",exec," in line]
    record = json.loads((root / "metrics" / "train_run.json").read_text())
    assert record["distributed"]["processes"] == 2
    environment = record["environment"]
    assert environment["reproducible"] == "portable" and environment["convolutions"] != "oneDNN"
    assert environment["pinned"] is True and environment["threads"] == 1
    assert record["model_sha256"] == digest(root / "models" / "model.pt")
