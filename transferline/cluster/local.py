"""The local cluster: PostgreSQL, a Prefect server on it, a process work pool, and N workers.

Everything lives under one folder (default .transferline/cluster): `pg/` (the database cluster),
`prefect/` (the server's and workers' PREFECT_HOME), `logs/`, `pids/`, and `cluster.json` (ports and
URLs, so `down`, `status` and a second `up` find what the first one started). `up` is idempotent: it
starts only what is not running, so it also restarts a worker that died. `down` stops, by PID file,
exactly the processes `up` started, then PostgreSQL; the data stays for the next `up`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from transferline import atomic
from transferline.cluster.postgres import Postgres
from transferline.cluster.processes import (
    ClusterError,
    free_port,
    log_tail,
    running_pid,
    start_detached,
    stop_pid_file,
    stop_pid_files,
    wait_until,
)
from transferline.env import tool_env

PREFECT_DATABASE = "prefect"
STUDY_DATABASE = "optuna"
DEFAULT_ROOT = Path(".transferline/cluster")


@dataclass(frozen=True)
class ClusterSpec:
    """What to start; a port of None means a free one, chosen once and kept in cluster.json."""

    root: Path = DEFAULT_ROOT
    workers: int | None = None  # None: as many as last time, else 2
    pool: str | None = None  # None: the one of last time, else "transferline"
    worker_limit: int = 1  # flow runs per worker at a time: one training job per machine's cores
    pg_port: int | None = None
    api_port: int | None = None
    startup_timeout_s: float = 180.0


@dataclass
class ClusterState:
    pg_port: int
    api_port: int
    pool: str
    workers: int
    urls: dict[str, str] = field(default_factory=dict)


class LocalCluster:
    def __init__(self, spec: ClusterSpec) -> None:
        if spec.workers is not None and spec.workers < 0:
            raise ClusterError(f"--workers must be >= 0, got {spec.workers}")
        self.spec = spec
        self.root = Path(spec.root).resolve()
        self.state_file = self.root / "cluster.json"
        self.state = self._load_state()
        self.postgres = Postgres(self.root / "pg", self.state.pg_port)

    # ------------------------------------------------------------ addresses

    def _load_state(self) -> ClusterState:
        """Ports from cluster.json when there is one (a restart keeps its addresses), else from the spec."""
        saved: dict = {}
        with contextlib.suppress(OSError, ValueError):
            saved = json.loads(self.state_file.read_text())
        pg_port = self.spec.pg_port or saved.get("pg_port") or free_port()
        api_port = self.spec.api_port or saved.get("api_port") or free_port()
        workers = self.spec.workers if self.spec.workers is not None else saved.get("workers", 2)
        pool = self.spec.pool or saved.get("pool", "transferline")
        return ClusterState(pg_port, api_port, pool, workers)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.state.api_port}/api"

    @property
    def study_storage(self) -> str:
        return self.postgres.url(STUDY_DATABASE)

    def client_env(self) -> dict[str, str]:
        """What a client (flows, the prefect CLI) on this or another machine needs to use the cluster."""
        return {"PREFECT_API_URL": self.api_url, "TRANSFERLINE_STUDY_STORAGE": self.study_storage}

    def _env(self, **extra: str) -> dict[str, str]:
        return {
            **tool_env(),
            "PREFECT_HOME": str(self.root / "prefect"),
            "PREFECT_UI_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            **self.client_env(),
            **extra,
        }

    def _pid_file(self, name: str) -> Path:
        return self.root / "pids" / f"{name}.pid"

    def _log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def worker_names(self) -> list[str]:
        return [f"worker-{index}" for index in range(1, self.state.workers + 1)]

    # ------------------------------------------------------------ up / down / status

    def up(self) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        self.postgres.init()
        self.postgres.start()
        for database in (PREFECT_DATABASE, STUDY_DATABASE):
            self.postgres.create_database(database)
        self._start_server()
        self._create_pool()
        for name in self.worker_names():
            self._start_worker(name)
        for extra in sorted(set(self._recorded_workers()) - set(self.worker_names())):
            stop_pid_file(self._pid_file(extra))  # `up --workers N` after a larger N
        self._wait_for_workers()
        self.state.urls = {**self.client_env(), "prefect_database": self._prefect_database_url()}
        atomic.write_json(self.state_file, asdict(self.state))
        return self.status()

    def _prefect_database_url(self) -> str:
        return self.postgres.url(PREFECT_DATABASE, driver="postgresql+asyncpg")

    def _healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        return False

    def _start_server(self) -> None:
        if running_pid(self._pid_file("server")) is not None and self._healthy():
            return
        env = self._env(PREFECT_API_DATABASE_CONNECTION_URL=self._prefect_database_url())
        args = [self._prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(self.state.api_port)]
        pid = start_detached(args, env, self._log("server"), self._pid_file("server"))
        started = wait_until(
            lambda: self._healthy() or running_pid(self._pid_file("server")) != pid, self.spec.startup_timeout_s
        )
        if not (started and self._healthy()):
            stop_pid_file(self._pid_file("server"))
            raise ClusterError(
                f"the Prefect server did not get healthy at {self.api_url}: {log_tail(self._log('server'))}"
            )

    def _prefect(self) -> str:
        return str(Path(sys.executable).parent / "prefect")

    def _create_pool(self) -> None:
        inspect = subprocess.run(
            [self._prefect(), "work-pool", "inspect", self.state.pool], env=self._env(), capture_output=True, text=True
        )
        if inspect.returncode == 0:
            return
        created = subprocess.run(
            [self._prefect(), "work-pool", "create", self.state.pool, "--type", "process"],
            env=self._env(),
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            raise ClusterError(f"work pool {self.state.pool!r} not created: {created.stdout}{created.stderr}")

    def _start_worker(self, name: str) -> None:
        if running_pid(self._pid_file(name)) is not None:
            return
        args = [self._prefect(), "worker", "start", "--pool", self.state.pool, "--type", "process", "--name", name]
        args += ["--limit", str(self.spec.worker_limit)]
        start_detached(args, self._env(), self._log(name), self._pid_file(name))

    def online_workers(self) -> set[str]:
        """Names of the workers the server has heard from (a worker registers once it polls the pool)."""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            url = f"{self.api_url}/work_pools/{self.state.pool}/workers/filter"
            answer = httpx.post(url, json={}, timeout=5)
            if answer.status_code == 200:
                return {worker["name"] for worker in answer.json() if worker.get("status") == "ONLINE"}
        return set()

    def _wait_for_workers(self) -> None:
        wanted = set(self.worker_names())
        if not wait_until(lambda: wanted <= self.online_workers(), self.spec.startup_timeout_s, interval_s=1.0):
            missing = sorted(wanted - self.online_workers())
            tails = "\n".join(f"{name}: {log_tail(self._log(name), 800)}" for name in missing)
            raise ClusterError(f"workers not polling pool {self.state.pool!r}: {', '.join(missing)}\n{tails}")

    def _recorded_workers(self) -> list[str]:
        return sorted(path.stem for path in (self.root / "pids").glob("worker-*.pid"))

    def down(self) -> list[str]:
        """Stop the workers, the server, then PostgreSQL; returns what was running."""
        workers = self._recorded_workers()
        stopped = [p.stem for p in stop_pid_files([self._pid_file(name) for name in workers])]  # side by side
        if stop_pid_file(self._pid_file("server")):  # after the workers, which report to it as they stop
            stopped.append("server")
        if self.postgres.initialised() and self.postgres.stop():
            stopped.append("postgres")
        return stopped

    def status(self) -> dict:
        """Each component: running or not, with its PID and address."""
        pids = {name: running_pid(self._pid_file(name)) for name in ["server", *self.worker_names()]}
        return {
            "postgres": {"running": self.postgres.running(), "address": f"127.0.0.1:{self.state.pg_port}"},
            "server": {
                "running": pids["server"] is not None and self._healthy(),
                "pid": pids["server"],
                "address": self.api_url,
            },
            "pool": self.state.pool,
            "workers": {name: {"running": pids[name] is not None, "pid": pids[name]} for name in self.worker_names()},
            "env": self.client_env(),
        }

    def worker_pids(self) -> dict[str, int | None]:
        return {name: running_pid(self._pid_file(name)) for name in self.worker_names()}


def all_running(status: dict) -> bool:
    return (
        status["postgres"]["running"]
        and status["server"]["running"]
        and all(worker["running"] for worker in status["workers"].values())
    )
