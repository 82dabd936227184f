"""Detached processes tracked by PID files: started in their own session, stopped by process group.

A PID file records the process's start time too (from /proc), so `stop` never signals an unrelated
process that happens to have reused the PID after ours exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from transferline import atomic
from transferline.errors import TransferlineError


class ClusterError(TransferlineError):
    """A cluster component could not be started, reached or stopped."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(pid: int) -> bool:
    return _start_time(pid) is not None


def start_detached(
    args: Sequence[str], env: Mapping[str, str], log_path: Path, pid_path: Path, cwd: Path | None = None
) -> int:
    """Start `args` in a new session with output appended to `log_path`; record it in `pid_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(args), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    atomic.write_json(pid_path, {"pid": process.pid, "start": _start_time(process.pid), "args": list(args)})
    return process.pid


def running_pid(pid_path: Path) -> int | None:
    """The PID recorded in `pid_path` if that very process is still running."""
    try:
        record = json.loads(pid_path.read_text())
    except (OSError, ValueError):
        return None
    pid = int(record["pid"])
    return pid if record.get("start") is not None and _start_time(pid) == record["start"] else None


def stop_pid_file(pid_path: Path, grace_s: float = 30.0) -> bool:
    """SIGTERM the recorded process group, SIGKILL it after `grace_s`; True if something was running."""
    return bool(stop_pid_files([pid_path], grace_s))


def stop_pid_files(pid_paths: list[Path], grace_s: float = 30.0) -> list[Path]:
    """`stop_pid_file` for several at once: all are signalled first and share one grace period, so N
    processes that each take their full grace (an idle Prefect worker ignores SIGTERM) cost it once, not N
    times. Returns the files whose process was running."""
    running = {path: pid for path in pid_paths if (pid := running_pid(path)) is not None}
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    if not wait_until(lambda: not any(alive(pid) for pid in running.values()), grace_s):
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: not any(alive(pid) for pid in running.values()), 10)
    for pid in running.values():
        _reap(pid)
    for path in pid_paths:
        path.unlink(missing_ok=True)
    return list(running)


def _reap(pid: int) -> None:
    """Collect the exit status when the process was our own child (started in this interpreter)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no log at {path})"
