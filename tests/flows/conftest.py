"""A real `prefect server start`, one per test session, shared by the tests that need deployments and workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import QUIET_ENV

BIN = Path(sys.executable).parent
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RETRYABLE = {429, 502, 503}  # what Prefect's own client retries


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """The server's environment (PREFECT_API_URL, its own PREFECT_HOME and BENTOML_HOME); it starts in ~10-30 s,
    so the session starts it once. Tests share it: each uses its own work pool and its own repository."""
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


def api_call(method: str, url: str, attempts: int = 6, **kwargs) -> httpx.Response:
    """One call to the server's REST API (not an in-process client, whose settings may point elsewhere).
    On a loaded machine the server answers 503 while its SQLite database is busy, and means it to be
    retried: like Prefect's client, back off and try again."""
    for attempt in range(attempts):
        response = httpx.request(method, url, timeout=30, **kwargs)
        if response.status_code not in RETRYABLE or attempt == attempts - 1:
            return response
        time.sleep(min(2.0**attempt, 10.0))
    raise AssertionError("unreachable")


def wait_for_runs(env, run_ids, timeout=240):
    """Poll the server until every run is in a final state; the runs."""
    api = env["PREFECT_API_URL"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [api_call("GET", f"{api}/flow_runs/{run_id}").json() for run_id in run_ids]
        if all(run["state"] and run["state"]["type"] in FINAL_STATES for run in runs):
            return runs
        time.sleep(2)
    raise AssertionError(f"runs not finished: {[(r['name'], r['state']) for r in runs]}")


def stop_process_group(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if the worker is still shutting down after `grace_s`. Callers stop a worker
    once its runs have finished; an idle Prefect worker that gets SIGTERM may still wait out its polling
    loop (30 s and more were seen), and how long that takes is not under test."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)
