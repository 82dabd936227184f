"""`python -m flows.service_control start` serves where the settings say, environment overrides included.

The deploy step and `make demo` start the long-lived service this way; the port in params.yaml must lose
to TRANSFERLINE_SERVE_PORT, for the process started and for the address probed alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flows.local_server import free_port
from tests.serving.conftest import PROJECT_ROOT, ServingModels, server_env

pytestmark = pytest.mark.slow


def service_control(repo: Path, env: dict[str, str], command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.service_control", command, "--repo", str(repo)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_start_serves_on_the_port_from_the_environment(serving_models: ServingModels, tmp_path: Path):
    in_params, in_env = free_port(), free_port()
    (tmp_path / "params.yaml").write_text(f"serve:\n  port: {in_params}\n")
    env = {**os.environ, **server_env(serving_models.home), "TRANSFERLINE_SERVE_PORT": str(in_env)}
    env["TRANSFERLINE_SERVE_WORKERS"] = "1"
    env.pop("TRANSFERLINE_PARAMS")  # the repo's own params.yaml, as in a project checkout
    try:
        started = service_control(tmp_path, env, "start")
        assert started.returncode == 0, started.stderr + (tmp_path / ".transferline/service/serve.log").read_text()
        assert f"service ready at http://127.0.0.1:{in_env} " in started.stdout
        assert httpx.get(f"http://127.0.0.1:{in_env}/readyz", timeout=5).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{in_params}/readyz", timeout=5)
    finally:
        stopped = service_control(tmp_path, env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{in_env}/readyz", timeout=5)
