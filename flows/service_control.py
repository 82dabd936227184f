"""Starting, stopping, probing and swapping the long-lived `bentoml serve` process that the deploy step manages.

The service runs in its own session, so it outlives the flow run that (re)started it. Its PID,
port and log live in `.transferline/service/` under the project, so any later run, or
`make stop`, finds it.

A new champion reaches a running service by a model swap (POST /admin/swap, serving/swap.py): no
restart, no failed request. Only a change of the service's own code or serve settings needs a
restart: the service reports digests of both (GET /admin/status), and `put_in_service` compares them
with the checkout's (serving/code_digest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from flows.local_server import SERVICE_TARGET, ServerFailed, running_server
from serving.auth import TOKEN_ENV
from serving.code_digest import code_digest, settings_digest
from serving.settings import load_serve_params
from serving.swap_client import SwapError, request_swap, service_status
from transferline.env import tool_env
from transferline.errors import TransferlineError


def auth_headers() -> dict[str, str]:
    """The bearer token the service was started with, if any: probes must pass the same check as users."""
    token = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def probe_classify(url: str, image: bytes, filename: str) -> dict:
    """One real prediction from the service at `url`; ServiceFailed unless it answers 200."""
    response = httpx.post(f"{url}/classify", files={"image": (filename, image)}, headers=auth_headers(), timeout=30)
    if response.status_code != 200:
        raise ServiceFailed(f"classify answered {response.status_code}: {response.text[:300]}")
    return response.json()


class ServiceFailed(TransferlineError):
    """The service did not become ready, or answered wrongly."""


@dataclass(frozen=True)
class ServiceController:
    repo: Path
    host: str
    port: int
    ready_timeout_s: float = 120.0

    @property
    def state_dir(self) -> Path:
        return self.repo / ".transferline" / "service"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pid(self) -> int | None:
        try:
            pid = int((self.state_dir / "pid").read_text())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / "serve.log", "ab")  # noqa: SIM115 - handed to the child process
        bentoml = str(Path(sys.executable).parent / "bentoml")
        process = subprocess.Popen(
            [bentoml, "serve", SERVICE_TARGET, "--host", self.host, "--port", str(self.port)],
            cwd=self.repo,
            env=tool_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        (self.state_dir / "pid").write_text(str(process.pid))
        self.wait_ready(process)
        return process.pid

    def wait_ready(self, process: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise ServiceFailed(f"service exited with {process.returncode} before ready: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise ServiceFailed(f"service not ready after {self.ready_timeout_s:.0f} s: {self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        (self.state_dir / "pid").unlink(missing_ok=True)

    def restart(self) -> int:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.state_dir / "serve.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def classify(self, image: bytes, filename: str = "image.png") -> dict:
        return probe_classify(self.url, image, filename)

    def metadata(self) -> dict:
        return json.loads(httpx.get(f"{self.url}/metadata", headers=auth_headers(), timeout=10).text)

    def status(self) -> dict:
        """GET /admin/status: each worker's model and the digests of the code and settings the service runs."""
        return service_status(self.url)

    def swap(self, tag: str) -> dict:
        """Swap the running service to `tag` in every worker; ServiceFailed with the service's reason if it did
        not (it then still serves its previous model)."""
        try:
            return request_swap(self.url, tag)
        except SwapError as exc:
            raise ServiceFailed(str(exc)) from exc

    def changed_since_start(self, status: dict) -> list[str]:
        """What differs between the running service and this checkout: 'code' (serving/, transferline/) and/or
        'settings' (the serve section with its environment overrides)."""
        mine = {
            "code": code_digest(self.repo),
            "settings": settings_digest(load_serve_params(root=self.repo)),
        }
        return [name for name, digest in mine.items() if status.get(f"{name}_digest") != digest]

    def put_in_service(self, tag: str) -> str:
        """Make the service here serve `tag`, the registry's champion: a swap when the running service runs this
        checkout's code and settings; a restart when either changed (or it predates swaps); a start when
        nothing answers. Returns which of these happened, in words."""
        try:
            status = self.status()
        except httpx.HTTPError:
            self.restart()  # also clears a stale pid left by a crashed service
            return "started (nothing was answering)"
        except SwapError as exc:
            if exc.status != 404:
                raise ServiceFailed(str(exc)) from exc
            self.restart()
            return "restarted (the running service predates model swaps)"
        changed = self.changed_since_start(status)
        if changed:
            self.restart()
            return f"restarted (service {' and '.join(changed)} changed since it started)"
        result = self.swap(tag)
        if result.get("unchanged"):
            return f"already serving it in {len(result['workers'])} worker(s)"
        return (
            f"swapped from {result['previous']} in {len(result['workers'])} worker(s), no restart "
            f"(all workers ready in {result['prepare_s']:.2f} s, switched in {result['switch_s']:.2f} s)"
        )

    def preflight(self, tag: str, image: bytes, filename: str) -> dict:
        """Serve model `tag` beside the live service (free loopback port, one worker), check that it gets
        ready and answers `image` with its own tag, then stop it. The live service is not touched, so a
        candidate that cannot serve never costs the champion a second of downtime."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**tool_env(), "TRANSFERLINE_MODEL_TAG": tag, "TRANSFERLINE_SERVE_WORKERS": "1"}
        log = self.state_dir / "preflight.log"
        try:
            with running_server(self.repo, log, env, SERVICE_TARGET, self.ready_timeout_s) as server:
                answer = probe_classify(server.url, image, filename)
        except ServerFailed as exc:
            raise ServiceFailed(f"candidate service {exc}") from exc
        if answer.get("model_tag") != tag:
            raise ServiceFailed(f"candidate service answered with model {answer.get('model_tag')!r}, expected {tag!r}")
        return answer


def controller_from_params(repo: Path, environ: dict[str, str] | None = None) -> ServiceController:
    """The controller for the address the service itself reads: params.yaml's `serve` section with the
    TRANSFERLINE_SERVE_* overrides (serving/settings.py), validated."""
    settings = load_serve_params(environ=environ, root=repo.resolve())
    return ServiceController(repo.resolve(), settings.host, settings.port)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Manage the background `bentoml serve` of the champion model.")
    parser.add_argument("command", choices=["start", "stop", "restart", "ensure", "status"])
    parser.add_argument("--repo", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    try:
        controller = controller_from_params(args.repo)
        if args.command == "stop":
            controller.stop()
            print("service stopped")
        elif args.command == "status":
            pid = controller.pid()
            print(f"running (pid {pid}) at {controller.url}" if pid else "not running")
            if pid:
                with contextlib.suppress(httpx.HTTPError, SwapError):
                    for worker in controller.status()["workers"]:
                        print(f"  worker {worker['worker']}: {worker['tag']} ({worker['state']})")
            return 0 if pid else 1
        elif args.command == "ensure" and controller.is_running():
            controller.wait_ready()
            print(f"service already running at {controller.url} (pid {controller.pid()})")
        else:
            pid = controller.restart()
            print(f"service ready at {controller.url} (pid {pid}); logs: {controller.state_dir / 'serve.log'}")
    except TransferlineError as exc:  # ServiceFailed, or a bad serve setting (ParamsError)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
