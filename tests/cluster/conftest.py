"""One real local cluster for the whole test session: PostgreSQL in a temporary folder on a free port, a Prefect
server on it, a process work pool and two workers, started by `python -m transferline.cluster up` and stopped
by `down`. Starting it costs most of the module's time, so every test shares it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, tiny_pipeline_repo
from tests.tune.conftest import tiny_prepared  # noqa: F401 - the tiny prepared data, a session fixture

POOL = "transferline-test"


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # what a client needs: PREFECT_API_URL, TRANSFERLINE_STUDY_STORAGE, ...

    @property
    def api(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def storage(self) -> str:
        return self.env["TRANSFERLINE_STUDY_STORAGE"]

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "transferline.cluster", *args, "--dir", str(self.root)],
            env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def python(self, *args: str, cwd: Path = PROJECT_ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="session")
def cluster():
    # under /tmp itself, not pytest's private folder: as root, PostgreSQL runs as `postgres` and must reach it
    top = Path(tempfile.mkdtemp(prefix="transferline-cluster-"))
    top.chmod(0o755)
    env = {
        **os.environ,
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # workers pick up runs within 2 s (default 10)
        "BENTOML_HOME": str(top / "bentoml"),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    handle = Cluster(top / "cluster", env)
    up = handle.cli("up", "--workers", "2", "--pool", POOL, "--json")
    if up.returncode != 0:
        handle.cli("down")
        raise AssertionError(f"cluster up failed ({up.returncode}):\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    handle.env.update(json.loads(up.stdout)["env"])
    handle.env["PREFECT_HOME"] = str(top / "client")
    yield handle
    down = handle.cli("down")
    shutil.rmtree(top, ignore_errors=True)
    assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
def checkouts(cluster, tmp_path_factory) -> dict[str, Path]:
    """Two working copies of the tiny pipeline, each with its own pipeline deployment on the pool (and the
    search-trials deployment)."""
    root = tmp_path_factory.mktemp("checkouts")
    repos = {name: tiny_pipeline_repo(root / name) for name in ("copy-a", "copy-b")}
    for name, repo in repos.items():
        deploy = cluster.python(
            "-m", "flows.deploy", "--work-pool", POOL, "--repo", str(repo), "--name", name, "--no-watch", "--cron", ""
        )
        assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
        assert f"deployment transferline-pipeline/{name} created" in deploy.stdout
    assert "deployment transferline-tune-trials/trials created" in deploy.stdout
    return repos
