"""Running one DVC stage from a Prefect task, so the flow and `dvc repro` share one cache and dvc.lock.

DVC decides whether the stage is stale; the task reports whether it ran or was skipped, streams
DVC's output into Prefect's logs (its "git add dvc.lock" / autostage hints, which do not apply to a flow
run, only at debug level), and classifies failures: a stage that exits with status 2 met an
expected, explained error (bad data or params) that a retry cannot fix; anything else may be
transient and is retried.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from transferline.env import tool_env

PIPELINE_STAGES = ("ingest", "prepare", "train", "evaluate", "export", "gate")


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    ran: bool
    seconds: float


class StageFailed(RuntimeError):
    """`dvc repro` of a stage failed; `user_error` is True when the stage explained why (exit 2)."""

    def __init__(self, stage: str, returncode: int, tail: str) -> None:
        self.stage = stage
        self.returncode = returncode
        self.tail = tail
        self.user_error = "exited with 2" in tail
        super().__init__(f"stage '{stage}' failed (dvc exit {returncode}): {last_error_line(tail)}")


def last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line
    return lines[-1] if lines else "no output"


GIT_HINT_HEADERS = ("To track the changes with git, run:", "To enable auto staging, run:")


class GitHintFilter:
    """Tells DVC's git hints (a header, blank lines, tab-indented commands) from the stage's own output."""

    def __init__(self) -> None:
        self.in_hint = False

    def is_hint(self, line: str) -> bool:
        text = line.strip()
        if text in GIT_HINT_HEADERS:
            self.in_hint = True
        elif text and not (self.in_hint and line.startswith(("\t", " "))):
            self.in_hint = False
        return self.in_hint or not text


def _ignore(_line: str) -> None:
    return None


def repro_stage(
    stage: str,
    repo: Path,
    log: Callable[[str], None] = print,
    debug: Callable[[str], None] = _ignore,
) -> StageOutcome:
    """`dvc repro --single-item STAGE`; upstream stages are the flow's earlier tasks. Output lines go to `log`,
    DVC's git hints and blank lines to `debug`."""
    args = ["dvc", "repro", "--single-item", stage]
    start = time.perf_counter()
    process = subprocess.Popen(
        args, cwd=repo, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines = []
    hints = GitHintFilter()
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.rstrip("\n")
        lines.append(line)
        (debug if hints.is_hint(line) else log)(line)
    returncode = process.wait()
    output = "\n".join(lines)
    if returncode != 0:
        raise StageFailed(stage, returncode, "\n".join(lines[-40:]))
    ran = f"Running stage '{stage}'" in output
    return StageOutcome(stage, ran, time.perf_counter() - start)


class PushFailed(RuntimeError):
    """`dvc push` failed: the remote is unreachable, refuses the credentials, or is not configured."""


def push(repo: Path, log: Callable[[str], None] = print, remote: str | None = None) -> str:
    """`dvc push` of every output dvc.lock records (data and models) to the default remote, or `remote`;
    returns DVC's summary line ("N files pushed" / "Everything is up to date.")."""
    args = ["dvc", "push", *(["--remote", remote] if remote else [])]
    result = subprocess.run(args, cwd=repo, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    for line in lines:
        log(line)
    if result.returncode != 0:
        raise PushFailed(f"dvc push failed (exit {result.returncode}): {last_error_line(result.stdout)}")
    return lines[-1].strip() if lines else "pushed"
