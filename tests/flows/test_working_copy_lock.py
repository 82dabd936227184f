"""Runs that share a working copy never overlap: the lock on its own (real processes), then real flows on a real
Prefect server with a process worker, in a working copy whose stages are stand-ins (tests/flows/fake_pipeline.py):
a watch that finds a pipeline run in the copy ends Completed, "skipped: run 'NAME' in progress"; a second
pipeline run (here one outside the server, in Prefect's local mode) waits its turn; the drift check's deployment
starts the retraining deployment, whose run records why it was started."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from flows.dvc_stage import PIPELINE_STAGES
from flows.working_copy import LOCK_FILE, UNKNOWN_HOLDER_RUN, working_copy_or_skip, working_copy_turn
from tests.conftest import PROJECT_ROOT
from tests.flows.conftest import BIN, FINAL_STATES, api_call, prefect, stop_process_group, wait_for_runs
from tests.flows.fake_pipeline import fake_pipeline_repo, stage_spans, started, wait_until
from tests.flows.test_drift import log as log_predictions
from tests.serving.conftest import copy_home, serving_models  # noqa: F401 - a promoted synthetic champion

POOL = "transferline-working-copy-test"
NAME = "copy"  # deployments transferline-pipeline/copy, .../copy-data-watch, .../copy-drift-check
PIPELINE = f"transferline-pipeline/{NAME}"
DATA_WATCH = f"transferline-data-watch/{NAME}-data-watch"
DRIFT_CHECK = f"transferline-drift-check/{NAME}-drift-check"
NEVER_SOON = "0 3 29 2 *"  # no scheduled run may start while the tests run
WINDOW = 60  # logged predictions the drift check judges

HOLDER = """import sys, time
from pathlib import Path
from flows.working_copy import working_copy_turn
with working_copy_turn(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    Path(sys.argv[3]).write_text("done")
"""


def hold_in_process(repo: Path, seconds: float, done: Path) -> subprocess.Popen:
    """Another process holding the working copy for `seconds` (it writes `done` just before it lets go)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(repo), str(seconds), str(done)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_busy_copy_names_its_holder_and_a_killed_holder_frees_it(tmp_path):
    holder = hold_in_process(tmp_path, 600, tmp_path / "done")
    try:
        with working_copy_or_skip(tmp_path) as busy:
            assert busy is not None and busy.pid == holder.pid
            assert busy.skipped().startswith(f"skipped: run 'pid {holder.pid}' in progress (pid {holder.pid} on ")
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up runs: its record stays in the lock file
        holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    with working_copy_or_skip(tmp_path) as busy:
        assert busy is None  # the kernel let go with the process; its record is replaced by this one's
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a free copy carries no record


def test_a_waiting_run_gets_the_copy_when_its_holder_lets_go(tmp_path):
    done = tmp_path / "done"
    holder = hold_in_process(tmp_path, 1.0, done)
    heard = []
    with working_copy_turn(tmp_path, on_wait=heard.append, poll_s=0.05) as waited:
        assert done.is_file(), "the copy was granted while its holder was still at work"
    holder.wait()
    assert [h.pid for h in heard] == [holder.pid] and waited > 0


def test_a_holder_that_left_no_record_is_named_unknown(tmp_path):
    """A process holding the lock file without writing its record (not one of the flows): still a holder."""
    (tmp_path / LOCK_FILE).parent.mkdir()
    script = (
        "import fcntl, sys, time\n"
        "lock = open(sys.argv[1], 'w')\n"
        "fcntl.flock(lock, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with working_copy_or_skip(tmp_path) as busy:
            assert busy is not None and busy.skipped() == f"skipped: run '{UNKNOWN_HOLDER_RUN}' in progress"
    finally:
        holder.kill()
        holder.wait()


def test_a_process_never_waits_for_itself(tmp_path):
    nested = pytest.raises(RuntimeError, match="already holds")
    with working_copy_turn(tmp_path), nested, working_copy_or_skip(tmp_path):
        pass
    with working_copy_or_skip(tmp_path) as busy:
        assert busy is None


@dataclass
class CopyOnServer:
    repo: Path
    env: dict[str, str]
    champion: str
    worker_log: Path

    @property
    def api(self) -> str:
        return self.env["PREFECT_API_URL"]

    def start(self, deployment: str, **parameters) -> str:
        """A flow run of `deployment` through the REST API (what `prefect deployment run` calls); its id."""
        found = api_call("GET", f"{self.api}/deployments/name/{deployment}")
        assert found.status_code == 200, found.text
        created = api_call(
            "POST", f"{self.api}/deployments/{found.json()['id']}/create_flow_run", json={"parameters": parameters}
        )
        assert created.status_code == 201, created.text
        return created.json()["id"]

    def run(self, run_id: str) -> dict:
        return api_call("GET", f"{self.api}/flow_runs/{run_id}").json()

    def pipeline_runs(self) -> list[str]:
        deployment = api_call("GET", f"{self.api}/deployments/name/{PIPELINE}").json()
        body = {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}}
        return [run["id"] for run in api_call("POST", f"{self.api}/flow_runs/filter", json=body).json()]

    def unfinished_runs(self) -> list[str]:
        """Runs of this copy's pool not yet in a final state."""
        body = {
            "work_pools": {"name": {"any_": [POOL]}},
            "flow_runs": {"state": {"type": {"not_any_": sorted(FINAL_STATES)}}},
        }
        return [run["id"] for run in api_call("POST", f"{self.api}/flow_runs/filter", json=body).json()]

    def report(self, run_id: str) -> str:
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": ["pipeline-report"]}}}
        (artifact,) = api_call("POST", f"{self.api}/artifacts/filter", json=body).json()
        return artifact["data"]

    def worker_tail(self) -> str:
        return self.worker_log.read_text()[-4000:]


@pytest.fixture(scope="module")
def copy_on_server(prefect_server, serving_models, tmp_path_factory):  # noqa: F811 - the imported fixture
    """A stand-in working copy with its three deployments (pipeline, data watch, drift check) on their own pool,
    one process worker, a promoted champion, and a window of its logged predictions far from its reference."""
    root = tmp_path_factory.mktemp("working-copy")
    repo = fake_pipeline_repo(root / "repo")
    home = copy_home(serving_models, root / "bentoml")
    reference = np.load(serving_models.export_dir / "reference_logits.npy")
    rng = np.random.default_rng(3)
    shift = np.zeros(reference.shape[1])
    shift[:2] = (5.0, -5.0)
    far = reference[rng.integers(0, len(reference), WINDOW)] + rng.normal(0, 1, (WINDOW, reference.shape[1])) + shift
    log_predictions(repo / ".transferline" / "predictions", serving_models.v1, far, serving_models.export_dir)
    env = {**prefect_server, "BENTOML_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    prefect(env, "work-pool", "create", POOL, "--type", "process")
    deploy = [sys.executable, "-m", "flows.deploy", "--work-pool", POOL, "--repo", str(repo), "--name", NAME]
    result = subprocess.run(
        [*deploy, "--cron", NEVER_SOON, "--watch-cron", NEVER_SOON],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert f"deployment {DRIFT_CHECK} created" in result.stdout
    worker_log = root / "worker.log"
    with open(worker_log, "w") as log:
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield CopyOnServer(repo, env, serving_models.v1, worker_log)
    stop_process_group(worker)


@pytest.fixture
def copy(copy_on_server) -> Iterator[CopyOnServer]:
    """The shared copy, left as found: a test that fails midway must not leave runs working in it for the
    next test to meet (every hold is released by then, so they finish within seconds)."""
    yield copy_on_server
    wait_for_runs(copy_on_server.env, copy_on_server.unfinished_runs())


def local_mode(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """`env` for a run in Prefect's local mode: no server named, so the run starts a temporary one of its own."""
    local = {key: value for key, value in env.items() if key != "PREFECT_API_URL"}
    local.update({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"})
    return local


@contextlib.contextmanager
def held(repo: Path, stage: str) -> Iterator[None]:
    """While in the block, `stage` of any run in `repo` waits at its start."""
    (repo / "hold").mkdir(exist_ok=True)
    (repo / "hold" / stage).touch()
    try:
        yield
    finally:
        (repo / "hold" / stage).unlink()


@pytest.mark.slow
def test_a_watch_that_finds_a_pipeline_run_in_the_copy_skips_it(copy):
    ingests = started(copy.repo, "ingest")
    with held(copy.repo, "train"):
        holder_id = copy.start(PIPELINE)
        wait_until(lambda: started(copy.repo, "train") > 0 and copy.run(holder_id)["state"]["type"] == "RUNNING", 240,
                   "the pipeline run's train stage")  # fmt: skip
        watch_id = copy.start(DATA_WATCH)
        drift_id = copy.start(DRIFT_CHECK, window=WINDOW)
        watch, drift = wait_for_runs(copy.env, [watch_id, drift_id])
    holder = copy.run(holder_id)
    busy = f"skipped: run '{holder['name']}' in progress (flow run {holder_id}, transferline-pipeline, pid "
    assert watch["state"]["type"] == "COMPLETED", copy.worker_tail()
    assert watch["state"]["message"].startswith(busy), watch["state"]["message"]
    assert drift["state"]["type"] == "COMPLETED", copy.worker_tail()
    assert drift["state"]["message"].startswith(f"drift in the last {WINDOW} predictions of {copy.champion}")
    assert f"; retraining {busy}" in drift["state"]["message"]
    (finished,) = wait_for_runs(copy.env, [holder_id])
    assert finished["state"]["type"] == "COMPLETED", copy.worker_tail()
    assert finished["state"]["message"].startswith("gate failed, champion kept")
    assert started(copy.repo, "ingest") == ingests + 1  # the pipeline's: the watch ran no stage
    assert copy.pipeline_runs() == [holder_id]  # and the drift check started no retraining


@pytest.mark.slow
def test_two_pipeline_runs_in_one_copy_never_overlap(copy, tmp_path):
    """One run from the server's deployment, one from the command line in Prefect's local mode (its own
    temporary server, which knows nothing of the first run): the working copy still takes them in turn."""
    before = len(stage_spans(copy.repo))
    local_env = local_mode(copy.env, tmp_path)
    output = tmp_path / "local-run.log"
    with held(copy.repo, "train"):
        server_run = copy.start(PIPELINE)
        wait_until(lambda: started(copy.repo, "train") > 0 and copy.run(server_run)["state"]["type"] == "RUNNING",
                   240, "the server run's train stage")  # fmt: skip
        name = copy.run(server_run)["name"]
        with open(output, "w") as out:
            local = subprocess.Popen(
                [sys.executable, "-m", "flows.pipeline", "--repo", str(copy.repo), "--no-deploy"],
                env=local_env,
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        waiting = f"is busy: run '{name}' in progress (flow run {server_run}"
        try:
            wait_until(lambda: waiting in output.read_text() or local.poll() is not None, 180, "the local run to wait")
        except AssertionError:
            local.kill()
            raise
    assert local.wait(timeout=300) == 0, output.read_text()[-3000:]
    assert waiting in output.read_text()  # it found the server's run in the copy and waited for it
    assert "Completed: gate failed, champion kept" in output.read_text()
    (finished,) = wait_for_runs(copy.env, [server_run])
    assert finished["state"]["type"] == "COMPLETED", copy.worker_tail()
    spans = stage_spans(copy.repo)[before:]
    in_turn = [(run, stage) for run in (server_run, "local") for stage in PIPELINE_STAGES]
    assert [(span.run, span.stage) for span in spans] == in_turn
    overlaps = [(a, b) for a, b in itertools.pairwise(spans) if b.start < a.end]
    assert overlaps == []


@pytest.mark.slow
def test_in_local_mode_the_data_watch_lets_go_of_the_copy_before_it_retrains(copy, tmp_path):
    """Without a deployment to start, the watch runs the pipeline in its own process, which then takes the copy
    itself: the watch must have let go first (the champion here records no raw data, so it retrains)."""
    before = len(stage_spans(copy.repo))
    result = subprocess.run(
        [sys.executable, "-m", "flows.data_watch", "--repo", str(copy.repo)],
        env=local_mode(copy.env, tmp_path),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no champion was trained on it" in result.stdout
    assert "pipeline Completed: gate failed, champion kept" in result.stdout
    stages = [span.stage for span in stage_spans(copy.repo)[before:]]
    assert stages == ["ingest", "prepare", *PIPELINE_STAGES]


@pytest.mark.slow
def test_drift_starts_the_retraining_deployment_whose_run_says_why(copy):
    (drift,) = wait_for_runs(copy.env, [copy.start(DRIFT_CHECK, window=WINDOW)])
    message = drift["state"]["message"]
    assert drift["state"]["type"] == "COMPLETED", copy.worker_tail()
    assert message.startswith(f"drift in the last {WINDOW} predictions of {copy.champion}"), message
    assert f": triggered {PIPELINE} run " in message
    run_id = message.rsplit(" ", 1)[1]
    started_run = copy.run(run_id)
    reason = started_run["parameters"]["reason"]
    moved = reason.removeprefix("drift in ").split(", ")
    assert reason.startswith("drift in ") and "embedding_mmd" in moved
    assert started_run["name"] == f"retrain: {reason}"
    assert {"drift", *moved} <= set(started_run["tags"])
    assert started_run["parameters"]["repo"] == str(copy.repo)
    (finished,) = wait_for_runs(copy.env, [run_id])
    assert finished["state"]["type"] == "COMPLETED", copy.worker_tail()
    assert finished["state"]["message"].startswith(f"gate failed, champion kept ({copy.champion})")
    assert f"Started because: {reason}" in copy.report(run_id)


def test_tune_writes_the_best_values_only_when_the_copy_is_free(tmp_path):
    """`flows.tune --apply-best` rewrites params.yaml; a pipeline run in the copy reads it at every stage, so
    the write waits for the run to end."""
    from flows.tune import apply_in_turn

    params = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params)
    done = tmp_path / "done"
    holder = hold_in_process(tmp_path, 1.5, done)
    heard = []
    changed = apply_in_turn(params, {"train.lr": 0.0042}, heard.append)
    holder.wait()
    assert done.is_file() and done.stat().st_mtime <= params.stat().st_mtime  # written after the holder let go
    assert changed["train.lr"][1] == 0.0042 and "lr: 0.0042" in params.read_text()
    assert len(heard) == 1 and f"pid {holder.pid}" in heard[0]
