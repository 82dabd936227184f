"""The flows on a real local cluster (PostgreSQL, a Prefect server on it, two process workers): two checkouts'
pipelines at the same time, a study's trials shared over both workers, a killed worker replaced and its study
resumed, and `down` stopping all it started. The cluster is one per session (tests/cluster/conftest.py)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import optuna
import pytest
import yaml

from tests.cluster.conftest import POOL, Cluster
from tests.conftest import PROJECT_ROOT, run_tool
from tests.tune.conftest import TINY_TRAIN
from transferline.search.tuning import sqlalchemy_url

pytestmark = pytest.mark.slow
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
TUNE_TRIALS = "transferline-tune-trials/trials"


def create_run(cluster: Cluster, deployment: str, parameters: dict) -> str:
    """A flow run of `deployment` through the REST API, as `prefect deployment run` makes it."""
    found = httpx.get(f"{cluster.api}/deployments/name/{deployment}", timeout=30)
    assert found.status_code == 200, found.text
    created = httpx.post(
        f"{cluster.api}/deployments/{found.json()['id']}/create_flow_run", json={"parameters": parameters}, timeout=30
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def read_run(cluster: Cluster, run_id: str) -> dict:
    return httpx.get(f"{cluster.api}/flow_runs/{run_id}", timeout=30).json()


def wait_for_runs(cluster: Cluster, run_ids: list[str], timeout_s: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = [read_run(cluster, run_id) for run_id in run_ids]
        if all(run["state"] and run["state"]["type"] in FINAL_STATES for run in runs):
            return runs
        time.sleep(2)
    raise AssertionError(f"runs not finished: {[(r['name'], r['state']['type']) for r in runs]}")


def worker_logs(cluster: Cluster) -> str:
    return "\n".join(path.read_text()[-1500:] for path in sorted((cluster.root / "logs").glob("worker-*.log")))


def test_up_starts_every_component_and_a_second_up_restarts_nothing(cluster):
    status = cluster.status()
    assert status["postgres"]["running"] and status["server"]["running"], status
    assert [worker["running"] for worker in status["workers"].values()] == [True, True], status
    assert status["pool"] == POOL
    assert cluster.storage.startswith("postgresql://") and cluster.api.startswith("http://127.0.0.1:")
    assert httpx.get(f"{cluster.api}/health", timeout=10).status_code == 200
    again = cluster.cli("up", "--json")
    assert again.returncode == 0, again.stderr
    assert cluster.status() == status  # same processes, same addresses


def test_two_checkouts_run_their_pipelines_at_the_same_time(cluster, checkouts):
    l2 = {"copy-a": [0.01], "copy-b": [0.3]}
    run_ids = [
        create_run(
            cluster,
            f"transferline-pipeline/{name}",
            {"repo": str(repo), "deploy": False, "overrides": {"train.probe_l2": l2[name]}},
        )
        for name, repo in checkouts.items()
    ]
    runs = wait_for_runs(cluster, run_ids)
    assert [run["state"]["type"] for run in runs] == ["COMPLETED", "COMPLETED"], worker_logs(cluster)
    first, second = ((datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"])) for r in runs)
    assert first[0] < second[1] and second[0] < first[1], f"the runs did not overlap: {first}, {second}"
    assert len({run["infrastructure_pid"] for run in runs}) == 2  # two flow-run processes
    for name, repo in checkouts.items():
        lock = yaml.safe_load((repo / "dvc.lock").read_text())
        assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["probe_l2"] == l2[name]
        assert (repo / "models" / "model.pt").is_file()
        assert "up to date" in run_tool(["dvc", "status"], repo).stdout


def study_files(root: Path, space: dict, train: dict) -> list[str]:
    """params.yaml and search space for a study on the tiny data; returns their flows.tune arguments."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["train"] = {**params["train"], **TINY_TRAIN, **train}
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    return ["--params", str(root / "params.yaml"), "--space", str(root / "space.yaml"), "--work-dir", str(root)]


def tune_command(cluster: Cluster, files: list[str], prepared: Path, name: str, trials: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "flows.tune", *files, "--prepared", str(prepared), "--storage", cluster.storage,
        "--study-name", name, "--sampler", "random", "--pruner", "none", "--trials", str(trials),
        "--workers", "2", "--deployment", TUNE_TRIALS, *extra,
    ]  # fmt: skip


@functools.cache
def storage(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per database for the whole module, however often it polls."""
    return optuna.storages.RDBStorage(sqlalchemy_url(url))


def load_study(cluster: Cluster, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage(cluster.storage))


HEAD_ONLY = {"train.probe_l2": {"type": "float", "low": 1.0e-3, "high": 1.0, "log": True}}
FINE_TUNING = {"train.strategy": ["partial"], "train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True}}


def test_a_study_on_postgresql_runs_its_trials_on_both_workers(cluster, checkouts, tiny_prepared, tmp_path):
    files = study_files(tmp_path / "study", HEAD_ONLY, {})
    result = subprocess.run(
        tune_command(cluster, files, tiny_prepared, "two-workers", 4),
        env=cluster.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + worker_logs(cluster)
    assert "best trial" in result.stdout
    trials = load_study(cluster, "two-workers").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4  # none failed, none beyond the 4 asked for
    assert len({t.params["train.probe_l2"] for t in trials}) == 4  # no trial ran twice
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # two processes shared them


def worker_of(cluster: Cluster, pid: int) -> tuple[str, int]:
    """The cluster worker (name, PID) whose process tree holds `pid`, from the cluster's PID files."""
    workers = {json.loads(f.read_text())["pid"]: f.stem for f in (cluster.root / "pids").glob("worker-*.pid")}
    while pid > 1:
        if pid in workers:
            return workers[pid], pid
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    raise AssertionError("the trial's process is not under a cluster worker")


def only_running(study: optuna.Study, number: int) -> bool:
    return all(t.number == number for t in study.trials if t.state.name == "RUNNING")


def test_a_killed_worker_is_replaced_and_the_study_resumes(cluster, checkouts, tiny_prepared, tmp_path):
    name, trials, grace = "killed-worker", 5, 10
    files = study_files(tmp_path / "study", FINE_TUNING, {"epochs": 8, "warmup_epochs": 0.0})
    command = tune_command(cluster, files, tiny_prepared, name, trials, "--grace-period", str(grace))
    driver = subprocess.Popen(
        command, env=cluster.env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        victim = None
        while victim is None and time.monotonic() < deadline:  # a trial between its first and last epoch
            time.sleep(0.2)
            try:
                study = load_study(cluster, name)
            except KeyError:
                continue
            running = [t for t in study.trials if t.state.name == "RUNNING" and t.intermediate_values]
            victim = running[0] if running else None
        assert victim is not None, "no trial got to its first epoch"
        trial_pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
        killed_worker, worker_pid = worker_of(cluster, trial_pid)
        os.kill(trial_pid, signal.SIGKILL)  # the machine is gone: its flow run and its worker at once
        os.killpg(worker_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert load_study(cluster, name).trials[victim.number].state.name == "RUNNING", "killed after it ended"
        # the surviving worker ends its share; the first command would wait for the lost flow run: stop it
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not only_running(load_study(cluster, name), victim.number):
            time.sleep(1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)

    up = cluster.cli("up", "--json")  # restarts what died
    assert up.returncode == 0, up.stderr
    replaced = cluster.status()["workers"][killed_worker]
    assert replaced["running"] and replaced["pid"] != worker_pid
    time.sleep(max(0.0, grace + 1 - (time.monotonic() - killed_at)))  # the victim's heartbeat is now stale
    resumed = subprocess.run(command, env=cluster.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:] + worker_logs(cluster)

    study = load_study(cluster, name)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == trials, states
    assert [t.number for t in study.trials if t.state.name == "FAIL"] == [victim.number], states  # the kill only
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == victim.params
    assert len(study.trials) == trials + 1  # nothing ran twice, nothing beyond the target


def test_down_stops_everything_it_started(cluster):
    status = cluster.status()
    pids = [status["server"]["pid"], *(worker["pid"] for worker in status["workers"].values())]
    down = cluster.cli("down")
    assert down.returncode == 0, down.stderr
    assert "worker-1, worker-2, server, postgres" in down.stdout
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    after = cluster.status()
    assert not after["postgres"]["running"] and not after["server"]["running"]
    assert not any(worker["running"] for worker in after["workers"].values())
    assert not list((cluster.root / "pids").glob("*.pid"))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{cluster.api}/health", timeout=5)
