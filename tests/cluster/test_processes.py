"""The cluster's bookkeeping without a cluster: PID files, trial slots shared out, storage URLs, addresses kept."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from flows.tune import share_slots
from transferline.cluster.local import ClusterSpec, LocalCluster
from transferline.cluster.postgres import PG_BIN_ENV, find_pg_bin
from transferline.cluster.processes import (
    ClusterError,
    alive,
    running_pid,
    start_detached,
    stop_pid_file,
    stop_pid_files,
)
from transferline.search.tuning import StudyConfig, open_storage, sqlalchemy_url


def test_a_detached_process_is_stopped_by_its_pid_file_with_its_process_group(tmp_path):
    pid_file = tmp_path / "pids" / "sleeper.pid"
    script = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    pid = start_detached([sys.executable, "-c", script], {}, tmp_path / "sleeper.log", pid_file)
    assert running_pid(pid_file) == pid
    child = None
    for _ in range(100):
        children = subprocess.run(["pgrep", "-g", str(pid), "sleep"], capture_output=True, text=True).stdout.split()
        if children:
            child = int(children[0])
            break
        subprocess.run(["sleep", "0.1"])
    assert child is not None and alive(child)
    assert stop_pid_file(pid_file, grace_s=10) is True
    assert not alive(pid) and not alive(child)  # the whole group went
    assert not pid_file.exists()
    assert stop_pid_file(pid_file) is False  # nothing left to stop


def test_processes_that_ignore_sigterm_share_one_grace_period_then_are_killed(tmp_path):
    """As an idle Prefect worker does: SIGTERM ignored. Stopped together, two such processes are killed
    after one grace period, not one each (`cluster down` with N workers waits once)."""
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    files = [tmp_path / f"stubborn-{i}.pid" for i in range(2)]
    pids = [start_detached([sys.executable, "-c", script], {}, tmp_path / f"{f.stem}.log", f) for f in files]
    time.sleep(1.0)  # past the interpreter's start-up, so the handler is in place
    grace_s = 4.0
    started = time.monotonic()
    assert stop_pid_files([*files, tmp_path / "never-started.pid"], grace_s=grace_s) == files
    elapsed = time.monotonic() - started
    assert not any(alive(pid) for pid in pids) and not any(f.exists() for f in files)
    assert grace_s <= elapsed < 2 * grace_s, elapsed


def test_a_pid_file_whose_process_was_replaced_is_not_signalled(tmp_path):
    """A recorded PID now used by another process (another start time): never signalled."""
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        pid_file = tmp_path / "stale.pid"
        pid_file.write_text(json.dumps({"pid": sleeper.pid, "start": 1, "args": ["old"]}))
        assert running_pid(pid_file) is None
        assert stop_pid_file(pid_file, grace_s=1) is False
        assert sleeper.poll() is None  # still running
    finally:
        sleeper.kill()
        sleeper.wait()


def test_trial_slots_are_dealt_out_without_overlap_or_gaps():
    assert share_slots(3, 5, 2) == [[3, 5, 7], [4, 6]]
    assert share_slots(0, 1, 4) == [[0]]  # no empty flow run
    assert share_slots(0, 0, 2) == []


def test_postgresql_urls_name_the_installed_driver():
    assert sqlalchemy_url("postgresql://u@h:5432/optuna") == "postgresql+psycopg://u@h:5432/optuna"
    assert sqlalchemy_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert sqlalchemy_url("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"


def test_an_unreachable_study_database_is_named_not_a_traceback(tmp_path):
    from transferline.cluster.processes import free_port
    from transferline.errors import DataError

    config = StudyConfig(storage=f"postgresql://nobody@127.0.0.1:{free_port()}/optuna", work_dir=str(tmp_path))
    with pytest.raises(DataError, match="cannot reach the study database"):
        open_storage(config)


def test_ports_pool_and_workers_are_kept_between_commands(tmp_path):
    first = LocalCluster(ClusterSpec(tmp_path, workers=3, pool="p", pg_port=15432, api_port=14200))
    first.root.mkdir(parents=True, exist_ok=True)
    (first.state_file).write_text(json.dumps({"pg_port": 15432, "api_port": 14200, "pool": "p", "workers": 3}))
    again = LocalCluster(ClusterSpec(tmp_path))
    assert (again.state.pg_port, again.state.api_port, again.state.pool, again.state.workers) == (15432, 14200, "p", 3)
    assert again.client_env() == {
        "PREFECT_API_URL": "http://127.0.0.1:14200/api",
        "TRANSFERLINE_STUDY_STORAGE": "postgresql://transferline@127.0.0.1:15432/optuna",
    }
    status = again.status()  # nothing was started: every part says so
    assert not status["postgres"]["running"] and not status["server"]["running"]
    assert again.down() == []


def test_a_postgresql_folder_without_pg_ctl_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(PG_BIN_ENV, str(tmp_path))
    with pytest.raises(ClusterError, match="holds no pg_ctl"):
        find_pg_bin()
