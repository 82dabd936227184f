"""One run at a time in a working copy: the lock every flow that writes to the checkout takes.

The pipeline, the data watch and the retraining run a drift check starts all run `dvc repro` in the same
checkout, and DVC refuses a second repro while one holds its lock: a watch that fired during a training
run used to fail on that lock. So every run that writes to a checkout first takes that checkout's lock,
`.transferline/run.lock`: a pipeline run that finds it taken waits its turn; a watch ends Completed with
"skipped: run 'NAME' in progress" (flows/data_watch.py, flows/drift.py).

Why a kernel lock on a file in the checkout (`flock`) rather than a Prefect concurrency limit:
- the limit is the working copy itself, so it is shared by construction by every deployment of the
  checkout, by runs started by hand (`python -m flows.pipeline`) and by runs of Prefect's temporary local
  server (`make demo`), which a global concurrency limit on one server does not see;
- the kernel releases it the moment its holder's process ends, however it ends (SIGKILL, OOM, a lost
  worker): no stale slot waits for a lease to expire or a server restart, and a record left by a dead
  holder is simply overwritten by the next one;
- over a shared file system, workers on several machines see one lock (Linux NFS maps `flock` to
  POSIX locks), where a PID check could not tell a dead holder from one on another machine.
Two checkouts have two lock files, so their runs go side by side. The per-deployment concurrency limits
(flows/deploy.py) stay: they keep a deployment's queued runs waiting on the server, not in a process.

The holder writes who it is into the lock file (flow run name and id, flow, PID, host, since when), so
a run that finds the copy busy can say which run it waits for or skipped for. Locks are per open file,
so a process that took the lock and asks for it again would wait for itself: that raises instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = Path(".transferline") / "run.lock"
RECORD_WAIT_S = 2.0  # a holder writes its record right after taking the lock; a reader finding none looks again

_held: set[Path] = set()
_held_guard = threading.Lock()


@dataclass(frozen=True)
class Holder:
    """Who holds a working copy: the flow run (name, id, flow) and its process."""

    run: str
    run_id: str | None
    flow: str | None
    pid: int
    host: str
    since: str

    @classmethod
    def this_run(cls) -> Holder:
        """The current flow run, or this process when called outside one."""
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        run = context.flow_run if context is not None else None
        return cls(
            run=run.name if run is not None else f"pid {os.getpid()}",
            run_id=str(run.id) if run is not None else None,
            flow=context.flow.name if run is not None and context.flow is not None else None,
            pid=os.getpid(),
            host=socket.gethostname(),
            since=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def describe(self) -> str:
        """The words of skip and wait messages: 'NAME' in progress (flow run ID, FLOW, pid P on HOST since T)."""
        details = [f"flow run {self.run_id}" if self.run_id else None, self.flow]
        details.append(f"pid {self.pid} on {self.host} since {self.since}" if self.pid else None)
        known = [detail for detail in details if detail]
        return f"'{self.run}' in progress" + (f" ({', '.join(known)})" if known else "")

    def skipped(self) -> str:
        return f"skipped: run {self.describe()}"


UNKNOWN_HOLDER_RUN = "unknown (no record in the lock file)"


class WorkingCopyLock:
    """The lock file of one checkout; `take` returns None when taken, else the run that holds it."""

    def __init__(self, repo: Path) -> None:
        self.path = (Path(repo).resolve() / LOCK_FILE).resolve()
        self._fd: int | None = None

    def take(self) -> Holder | None:
        """Take the lock without waiting: None once taken (and this run's record written), else the holder."""
        with _held_guard:
            if self.path in _held:
                raise RuntimeError(f"this process already holds {self.path}: a run must not wait for itself")
        if not self.path.parent.parent.is_dir():
            raise FileNotFoundError(f"no working copy at {self.path.parent.parent}")
        self.path.parent.mkdir(exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + RECORD_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # busy; no record means its holder has just taken it (and is writing one) or is letting go
                holder = self._record()
                if holder is not None or time.monotonic() > deadline:
                    os.close(fd)
                    return holder or Holder(UNKNOWN_HOLDER_RUN, None, None, 0, "?", "?")
                time.sleep(0.05)
        if not self._same_file(fd):  # removed (say by `git clean -X`) between our open and flock: try again
            os.close(fd)
            return self.take()
        record = json.dumps(asdict(Holder.this_run())).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        with _held_guard:
            _held.add(self.path)
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # a free lock carries no record
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None
        with _held_guard:
            _held.discard(self.path)

    def holder(self) -> Holder | None:
        """Who holds the lock now, without keeping it: None if it is free."""
        busy = self.take()
        self.release()
        return busy

    def _record(self) -> Holder | None:
        """The holder's record, or None while there is none (or half of one) in the file."""
        try:
            return Holder(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == self.path.stat().st_ino
        except FileNotFoundError:
            return False


@contextlib.contextmanager
def working_copy_or_skip(repo: Path) -> Iterator[Holder | None]:
    """For the block, the checkout's lock if it is free (yields None), else nothing held (yields the holder):
    the watches' way, which skip rather than wait."""
    lock = WorkingCopyLock(repo)
    busy = lock.take()
    try:
        yield busy
    finally:
        lock.release()


@contextlib.contextmanager
def working_copy_turn(
    repo: Path, on_wait: Callable[[Holder], None] = lambda holder: None, poll_s: float = 1.0
) -> Iterator[float]:
    """Hold the checkout's lock for the block, waiting for it as long as it takes (yields the seconds waited);
    `on_wait` hears of each run found holding it: the pipeline's way, which queues rather than skips."""
    lock = WorkingCopyLock(repo)
    start = time.monotonic()
    last: Holder | None = None
    while (busy := lock.take()) is not None:
        if busy != last:
            on_wait(busy)
            last = busy
        time.sleep(poll_s)
    try:
        yield time.monotonic() - start
    finally:
        lock.release()
