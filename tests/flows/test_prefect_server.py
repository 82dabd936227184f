"""Deployments on a real `prefect server start`: schedule, a process worker, and the concurrency limit."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import QUIET_ENV, run_tool

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ,
        **QUIET_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_ENABLED": "false",
        "BENTOML_HOME": str(home / "bentoml"),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    log = open(home / "server.log", "w")  # noqa: SIM115 - closed in the teardown
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                break
        assert server.poll() is None, (home / "server.log").read_text()[-2000:]
        time.sleep(0.5)
    else:
        raise AssertionError("prefect server did not start: " + (home / "server.log").read_text()[-2000:])
    yield env
    os.killpg(server.pid, 15)
    server.wait(timeout=30)
    log.close()


def prefect(env, *args, check=True):
    result = subprocess.run([str(BIN / "prefect"), *args], env=env, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)}: {result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def data_repo(dvc_repo, image_tree):
    image_tree({"cat": 8, "dog": 8}, root=dvc_repo / "images")
    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["ingest"].update({"source": "folder", "path": "images", "per_class": None})
    params["preprocess"]["image_size"] = 16
    params["prepare"]["min_per_class"] = 3
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dvc_repo


def wait_for_runs(env, run_ids, timeout=240):
    """Poll the server's REST API (not an in-process client, whose settings may point elsewhere)."""
    api = env["PREFECT_API_URL"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json() for run_id in run_ids]
        if all(run["state"] and run["state"]["type"] in FINAL_STATES for run in runs):
            return runs
        time.sleep(2)
    raise AssertionError(f"runs not finished: {[(r['name'], r['state']) for r in runs]}")


def stop_process_group(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if the worker is still shutting down after `grace_s` (it may be
    finishing a flow-run subprocess on a busy machine); how long that takes is not under test."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)


def test_scheduled_deployment_worker_and_concurrency_limit(prefect_server, data_repo, tmp_path):
    env = prefect_server
    prefect(env, "work-pool", "create", "transferline-test", "--type", "process")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.deploy",
            "--work-pool",
            "transferline-test",
            "--cron",
            "0 3 * * *",
            "--watch-cron",
            "*/30 * * * *",
            "--repo",
            str(data_repo),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    inspected = prefect(env, "deployment", "inspect", "transferline-data-watch/data-watch").stdout
    assert "*/30 * * * *" in inspected and "'limit': 1" in inspected.replace('"', "'")

    worker_log = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "transferline-test", "--type", "process"],
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        run_ids = []
        for _ in range(2):
            out = prefect(
                env,
                "deployment",
                "run",
                "transferline-data-watch/data-watch",
                "--param",
                "retrain=false",
                "--param",
                f"repo={data_repo}",
            ).stdout
            run_ids.append(next(line.split()[-1] for line in out.splitlines() if "UUID" in line))
        runs = wait_for_runs(env, run_ids)
    finally:
        stop_process_group(worker)
        worker_log.close()
    worker_output = (tmp_path / "worker.log").read_text()[-3000:]
    assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"], worker_output
    assert "retraining not requested" in runs[0]["state"]["message"]
    first, second = sorted(runs, key=lambda r: datetime.fromisoformat(r["start_time"]))
    overlap_free = datetime.fromisoformat(second["start_time"]) >= datetime.fromisoformat(first["end_time"])
    assert overlap_free, "two runs of the same deployment overlapped"
    assert (data_repo / "data" / "prepared" / "manifest.csv").is_file()
    run_tool(["dvc", "status"], data_repo)
