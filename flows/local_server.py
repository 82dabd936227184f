"""A short-lived `bentoml serve` child process on a free loopback port: the deploy step's preflight of a
candidate model (flows/service_control.py), and the servers of the tests and benchmarks.

Started in its own process group and always stopped (SIGTERM, then SIGKILL) by the context manager,
so no worker outlives the caller. The long-lived service is flows/service_control.py's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from transferline.env import QUIET_ENV

SERVICE_TARGET = "serving.service:Classifier"


class ServerFailed(RuntimeError):
    """The service exited or did not become ready in time; the message carries its log tail."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /readyz answered 200; ServerFailed if the process died or time ran out."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                raise ServerFailed(f"bentoml serve exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.2)
        raise ServerFailed(f"not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout_s)


def start_server(
    cwd: Path, log_path: Path, env: dict[str, str], target: str = SERVICE_TARGET, port: int | None = None
) -> LocalServer:
    """Start `bentoml serve TARGET` on 127.0.0.1 (not waiting for readiness)."""
    port = port or free_port()
    bentoml = Path(sys.executable).parent / "bentoml"
    full_env = {**os.environ, **QUIET_ENV, **env}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return LocalServer(process, port, log_path)


@contextlib.contextmanager
def running_server(
    cwd: Path, log_path: Path, env: dict[str, str], target: str = SERVICE_TARGET, ready_timeout_s: float = 90.0
) -> Iterator[LocalServer]:
    """A ready server for the duration of the block, stopped afterwards whatever happens."""
    server = start_server(cwd, log_path, env, target)
    try:
        server.wait_ready(ready_timeout_s)
        yield server
    finally:
        server.stop()
