"""Swapping the served model in a running service, in every worker, without a failed request.

BentoML runs the service in `serve.workers` processes and routes each request to one of them, so an
admin request reaches one worker only. The workers coordinate through a small control directory of
their own `bentoml serve` process (their common parent; see `control_dir`):

- `pointer.json`: the swap in progress or last done: {generation, phase, tag, serving}. Only the worker
  handling POST /admin/swap writes it, under `swap.lock` (a second swap meanwhile gets 409).
- `worker-<n>.json`: what worker n serves and how far it got: {generation, state, tag, prepared, error}.

Every worker runs a `SwapFollower` thread that watches the pointer (a stat every POLL_S) and answers
in its status file. A swap is two-phase, like a transaction:

1. prepare: the handling worker loads, checks and warms the model itself first (a model that cannot be
   served is refused right there, with the reason, and nothing else happens); then every worker loads
   and warms it beside the model it keeps serving, and reports `prepared` or `failed`.
2. commit, if all prepared: each worker replaces its current-model reference (one assignment) and
   reports `serving`. Otherwise abort: every worker drops what it loaded and keeps the old model.

So a swap either reaches every worker or none, and workers disagree only between their polls of the
commit (POLL_S apart; 80-110 ms from commit to the last confirmation on a busy 2-core machine,
bench/results/swap.md). Requests in flight keep the model object they started with
(serving/served_model.py). A worker that (re)starts serves the pointer's `serving` tag, so a worker
restarted by BentoML after a swap does not come back with the old model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transferline import atomic
from transferline.errors import TransferlineError

log = logging.getLogger("transferline.serving")

POLL_S = 0.05  # how often a worker looks at the pointer: the longest two workers can disagree after a commit
PREPARE_TIMEOUT_S = 40.0  # every worker must have loaded and warmed the model by then (BentoML's traffic timeout: 60)
COMMIT_TIMEOUT_S = 10.0
PREPARE, COMMIT, ABORT = "prepare", "commit", "abort"
SERVING, PREPARED, FAILED, ABORTED = "serving", "prepared", "failed", "aborted"
CONTROL_ROOT = "transferline-serve"


class SwapBusy(TransferlineError):
    """Another swap is running in this service."""


class SwapFailed(TransferlineError):
    """A worker could not take the new model (every worker kept the old one), or did not confirm in time."""

    def __init__(self, message: str, status: int, workers: list[dict]) -> None:
        super().__init__(message)
        self.status = status
        self.workers = workers


def process_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), '' where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def control_dir(parent: int | None = None) -> Path:
    """This service's control directory: named after the `bentoml serve` process that started the workers (their
    parent), with its start time, so two services never share one and a reused PID never finds an old one."""
    parent = os.getppid() if parent is None else parent
    return Path(tempfile.gettempdir()) / CONTROL_ROOT / f"{parent}-{process_start_time(parent)}"


def prepare_control_dir(directory: Path) -> None:
    """Create the directory, and remove those of services that are gone (their process or start time differs)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for other in directory.parent.iterdir():
        pid, _, started = other.name.partition("-")
        if other != directory and pid.isdigit() and process_start_time(int(pid)) != started:
            shutil.rmtree(other, ignore_errors=True)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_pointer(directory: Path) -> dict | None:
    return read_json(directory / "pointer.json")


def write_pointer(directory: Path, generation: int, phase: str, tag: str, serving: str) -> None:
    pointer = {"generation": generation, "phase": phase, "tag": tag, "serving": serving, "at": time.time()}
    atomic.write_json(directory / "pointer.json", pointer)


def startup_tag(directory: Path, default: str) -> str:
    """What a starting worker serves: the tag every worker serves since the last swap, else `default`."""
    pointer = read_pointer(directory)
    return pointer["serving"] if pointer else default


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_statuses(directory: Path, workers: int) -> list[dict]:
    """One entry per expected worker (1..workers): its status file, or `state: unknown` when it has none or
    the process that wrote it is gone."""
    found = []
    for index in range(1, workers + 1):
        status = read_json(directory / f"worker-{index}.json")
        if status is None or not pid_alive(int(status.get("pid", 0))):
            status = {"worker": index, "state": "unknown", "tag": None, "generation": None}
        found.append(status)
    return found


@contextlib.contextmanager
def swap_lock(directory: Path) -> Iterator[None]:
    """Held for a whole swap; SwapBusy at once if another worker's (or this one's) swap holds it."""
    with open(directory / "swap.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SwapBusy("another model swap is in progress in this service; retry when it is done") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class SwapFollower:
    """A worker's side of the protocol: a daemon thread that prepares, commits or aborts as the pointer says.

    `current()` gives the model the worker serves, `load(tag)` builds a checked, warmed one (raising on a
    model that cannot be served), and `switch(model)` makes it the current one.
    """

    def __init__(
        self,
        directory: Path,
        worker: int,
        current: Callable[[], Any],
        load: Callable[[str], Any],
        switch: Callable[[Any], None],
    ) -> None:
        self.directory, self.worker = directory, worker
        self._current, self._load, self._switch = current, load, switch
        self._seen: tuple[int, str] | None = None  # (generation, phase) last acted on
        self._pending: dict[int, Any] = {}  # generation -> the model prepared for it
        self._offered: dict[int, Any] = {}  # generation -> a model this worker's swap handler already loaded
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-swap", daemon=True)

    def start(self) -> None:
        self._report(0, SERVING)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def offer(self, generation: int, model: Any) -> None:
        """The swap handler loaded `model` for `generation` in this worker already: prepare with it."""
        self._offered[generation] = model

    def _run(self) -> None:
        stamp = None
        while not self._stop.wait(POLL_S):
            try:
                found = os.stat(self.directory / "pointer.json")
            except FileNotFoundError:
                continue
            if (found.st_ino, found.st_mtime_ns) == stamp:  # every write is a new file (atomic rename)
                continue
            stamp = (found.st_ino, found.st_mtime_ns)
            pointer = read_pointer(self.directory)
            if pointer is not None:
                try:
                    self.step(pointer)
                except Exception:  # the thread must outlive any surprise; the swap handler sees the missing report
                    log.exception("worker %d: acting on the swap pointer failed", self.worker)

    def step(self, pointer: dict) -> None:
        """Act once on the pointer's generation and phase (repeated pointers are ignored)."""
        generation, phase, tag = pointer["generation"], pointer["phase"], pointer["tag"]
        if self._seen == (generation, phase):
            return
        self._seen = (generation, phase)
        if phase == PREPARE:
            self._prepare(generation, tag)
        elif phase == COMMIT:
            model = self._pending.pop(generation, None)
            if model is None and self._current().tag != tag:  # joined after the prepare: load now
                model = self._load(tag)
            if model is not None and model is not self._current():
                self._switch(model)
            self._forget(generation)
            self._report(generation, SERVING)
        elif phase == ABORT:
            self._forget(generation)
            self._report(generation, ABORTED)

    def _prepare(self, generation: int, tag: str) -> None:
        model = self._offered.pop(generation, None)
        if model is None and self._current().tag == tag:
            model = self._current()
        if model is None:
            try:
                model = self._load(tag)
            except Exception as exc:
                log.error("worker %d cannot prepare %s: %s", self.worker, tag, exc)
                self._report(generation, FAILED, error=f"{type(exc).__name__}: {exc}")
                return
        self._pending[generation] = model
        self._report(generation, PREPARED, prepared=tag)

    def _forget(self, generation: int) -> None:
        for stale in [g for g in (*self._pending, *self._offered) if g <= generation]:
            self._pending.pop(stale, None)
            self._offered.pop(stale, None)

    def _report(self, generation: int, state: str, prepared: str | None = None, error: str | None = None) -> None:
        current = self._current()
        status = {
            "worker": self.worker,
            "pid": os.getpid(),
            "generation": generation,
            "state": state,
            "tag": current.tag,
            "prepared": prepared,
            "error": error,
            "loaded_at": current.loaded_at,
            "at": time.time(),
        }
        atomic.write_json(self.directory / f"worker-{self.worker}.json", status)


def wait_for(directory: Path, workers: int, done: Callable[[dict], bool], timeout_s: float) -> tuple[bool, list[dict]]:
    """Poll the workers' statuses until `done` holds for every one of them, or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = worker_statuses(directory, workers)
        if all(done(status) for status in statuses):
            return True, statuses
        if time.monotonic() >= deadline:
            return False, statuses
        time.sleep(POLL_S / 2)


def coordinate_swap(
    directory: Path,
    workers: int,
    tag: str,
    serving: str,
    offer: Callable[[int], None],
    prepare_timeout_s: float = PREPARE_TIMEOUT_S,
    commit_timeout_s: float = COMMIT_TIMEOUT_S,
) -> dict:
    """Run one two-phase swap from `serving` to `tag` across `workers` workers (call under `swap_lock`, after the
    calling worker loaded the model; `offer(generation)` hands it to that worker's follower). Returns the
    timings and every worker's final status; raises SwapFailed when the swap could not reach every worker."""
    previous = read_pointer(directory)
    generation = (previous["generation"] if previous else 0) + 1
    offer(generation)
    start = time.monotonic()
    write_pointer(directory, generation, PREPARE, tag, serving)

    def answered(status: dict) -> bool:
        return status.get("generation") == generation and status["state"] in (PREPARED, FAILED)

    _, statuses = wait_for(directory, workers, answered, prepare_timeout_s)
    prepare_s = time.monotonic() - start
    unready = [s for s in statuses if not (s.get("generation") == generation and s["state"] == PREPARED)]
    if unready:
        write_pointer(directory, generation, ABORT, tag, serving)
        wait_for(directory, workers, lambda s: s.get("generation") == generation and s["state"] == ABORTED, 2.0)
        silent = f"no answer in {prepare_timeout_s:.0f} s"
        reasons = "; ".join(f"worker {s['worker']}: {s.get('error') or silent}" for s in unready)
        raise SwapFailed(
            f"swap to {tag} aborted, every worker keeps serving {serving}: {reasons}",
            503,
            worker_statuses(directory, workers),
        )
    write_pointer(directory, generation, COMMIT, tag, tag)
    switch_start = time.monotonic()

    def switched(status: dict) -> bool:
        return status.get("generation") == generation and status["state"] == SERVING and status["tag"] == tag

    confirmed, statuses = wait_for(directory, workers, switched, commit_timeout_s)
    if not confirmed:
        late = ", ".join(str(s["worker"]) for s in statuses if not switched(s))
        raise SwapFailed(
            f"swap to {tag} committed, but worker(s) {late} did not confirm within {commit_timeout_s:.0f} s "
            "(a worker that restarts serves the new model)",
            504,
            statuses,
        )
    return {
        "model_tag": tag,
        "previous": serving,
        "generation": generation,
        "prepare_s": round(prepare_s, 3),
        "switch_s": round(time.monotonic() - switch_start, 3),
        "workers": statuses,
    }
