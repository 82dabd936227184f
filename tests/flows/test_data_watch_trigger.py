"""The data-watch deployment on a real Prefect server with a process worker: unchanged raw data starts nothing;
a raw-data change starts a run of the retraining deployment that says why, and that run trains and deploys."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.data_watch import RETRAIN_TAGS
from flows.service_control import controller_from_params
from tests.conftest import PROJECT_ROOT, write_class_images
from tests.flows.conftest import BIN, api_call, free_port, prefect, stop_process_group, wait_for_runs
from tests.serving.conftest import registry_cli
from transferline.evaluation.lineage import dvc_out_hash

pytestmark = pytest.mark.slow

POOL = "transferline-watch-test"
NEVER_SOON = "0 3 29 2 *"  # no scheduled run may start while the test runs: only the data watch starts one


def run_data_watch(env: dict[str, str]) -> dict:
    """One run of the data-watch deployment, to its end; its flow run as the REST API returns it."""
    out = prefect(env, "deployment", "run", "transferline-data-watch/data-watch").stdout
    run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    return wait_for_runs(env, [run_id], timeout=300)[0]


def retrain_runs(api: str) -> list[dict]:
    """Flow runs of the retraining deployment that the data watch started (its tags), from the REST API."""
    deployment = api_call("GET", f"{api}/deployments/name/transferline-pipeline/retrain").json()
    body = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}, "tags": {"all_": list(RETRAIN_TAGS)}}}
    response = api_call("POST", f"{api}/flow_runs/filter", json=body)
    response.raise_for_status()
    return response.json()


@pytest.fixture
def watched_repo(trained_tiny_pipeline: Path, tmp_path: Path):
    """A copy of the trained tiny pipeline whose model is the champion (so the champion was trained on its raw
    data), served, when a retraining deploys, on a free port by one worker process."""
    repo = tmp_path / "repo"
    shutil.copytree(trained_tiny_pipeline, repo, symlinks=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["serve"].update({"port": free_port(), "workers": 1})  # no stage reads `serve`: nothing goes stale
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bentoml_home = tmp_path / "bentoml"
    out = registry_cli(
        bentoml_home, "register", "--export-dir", str(repo / "export"), "--gate-dir", str(repo / "gate"), cwd=repo
    ).stdout
    registry_cli(bentoml_home, "promote", out.strip().splitlines()[-1])
    yield repo, bentoml_home
    controller_from_params(repo).stop()


def test_a_raw_data_change_starts_the_retraining_deployment(prefect_server, watched_repo, tmp_path):
    repo, bentoml_home = watched_repo
    env = {**prefect_server, "BENTOML_HOME": str(bentoml_home)}
    api = env["PREFECT_API_URL"]
    prefect(env, "work-pool", "create", POOL, "--type", "process")
    deploy = [sys.executable, "-m", "flows.deploy", "--work-pool", POOL, "--repo", str(repo)]
    result = subprocess.run(
        [*deploy, "--cron", NEVER_SOON, "--watch-cron", NEVER_SOON],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr
    trained_on = dvc_out_hash(repo, "ingest", "data/raw")

    worker_log = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        unchanged = run_data_watch(env)
        assert unchanged["state"]["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
        assert unchanged["state"]["message"] == f"raw data unchanged ({trained_on}): no retraining"
        assert retrain_runs(api) == []

        write_class_images(repo / "images", {"cat": 18, "dog": 18, "fox": 18})  # two new images per class
        changed = run_data_watch(env)
        current = dvc_out_hash(repo, "ingest", "data/raw")
        assert current != trained_on
        reason = f"raw data changed: {trained_on} -> {current}"
        assert changed["state"]["type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
        assert changed["state"]["message"].startswith(f"{reason}: triggered transferline-pipeline/retrain run ")

        (started,) = retrain_runs(api)  # exactly one, created by the data watch, with the reason recorded
        assert changed["state"]["message"].endswith(started["id"])
        assert started["name"] == f"retrain: {reason}"
        assert started["parameters"] == {"repo": str(repo), "reason": reason}
        (finished,) = wait_for_runs(env, [started["id"]], timeout=600)
    finally:
        stop_process_group(worker)
        worker_log.close()
    worker_output = (tmp_path / "worker.log").read_text()[-5000:]
    assert finished["state"]["type"] == "COMPLETED", worker_output
    assert finished["state"]["message"].startswith("deployed "), finished["state"]["message"]
    champion = registry_cli(bentoml_home, "champion").stdout.strip()
    assert finished["state"]["message"].startswith(f"deployed {champion}: ")
