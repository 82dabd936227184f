"""Deployments on a real `prefect server start`: schedule, a process worker, and the concurrency limit."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_tool
from tests.flows.conftest import BIN, prefect, stop_process_group, wait_for_runs

pytestmark = pytest.mark.slow


@pytest.fixture
def data_repo(dvc_repo, image_tree):
    image_tree({"cat": 8, "dog": 8}, root=dvc_repo / "images")
    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["ingest"].update({"source": "folder", "path": "images", "per_class": None})
    params["preprocess"]["image_size"] = 16
    params["prepare"]["min_per_class"] = 3
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dvc_repo


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
