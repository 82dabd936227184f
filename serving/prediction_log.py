"""The prediction log: one JSON line per answered image, written off the request path, in size-bounded files.

A request only appends a small dict to an in-memory buffer (a deque append: no lock, no thread woken); a
daemon thread wakes every FLUSH_INTERVAL_S, encodes what gathered and appends it in one write. Waking
the writer for each request would cost a thread switch per answer (about a tenth of a worker's Python
time under load, bench/results/load.md). If the writer falls behind so far that the buffer holds
QUEUE_SIZE entries, new entries are dropped and counted rather than slowing or failing the request:
the log is for monitoring, the answer comes first.
Each worker process writes its own file (`predictions-<pid>.jsonl`), so lines never interleave, and
rotates it at `max_bytes` keeping `backups` older files: the log's disk use is bounded by
workers x (backups + 1) x max_bytes.

A line holds: time, model tag, top labels and probabilities, OOD score and flag, a compact embedding,
the request's size in bytes; the image itself only when `serve.log_images` is set (base64).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transferline.cli import cli_parser, run_command

log = logging.getLogger("transferline.serving.prediction_log")

LOGGED_LABELS = 3  # top labels kept per entry
QUEUE_SIZE = 10_000  # entries waiting to be written; beyond it new entries are dropped (and counted)
FLUSH_INTERVAL_S = 0.2  # how often the writer wakes; entries reach the file at most this much later
FILE_PREFIX = "predictions-"


class PredictionLog:
    """Append-only JSONL writer on its own thread, with size-based rotation per process."""

    def __init__(self, directory: Path, max_bytes: int, backups: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.backups = backups
        self.dropped = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()  # set by flush and close: write now instead of at the next tick
        self._flushed = threading.Condition()
        self._written = 0  # entries taken from the buffer and on disk (or dropped on a write error)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._file = None
        self._path = self.directory / f"{FILE_PREFIX}{os.getpid()}.jsonl"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def record(self, entry: dict[str, Any]) -> None:
        """Buffer one entry; never blocks the caller and wakes no thread."""
        if len(self._pending) >= QUEUE_SIZE:
            self.dropped += 1
            return
        self._pending.append(entry)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is buffered, then stop the thread."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None

    def flush(self, timeout: float = 5.0) -> None:
        """Block until everything recorded so far is on disk (for tests and shutdown)."""
        target = self._written + len(self._pending)
        self._wake.set()
        with self._flushed:
            self._flushed.wait_for(lambda: self._written >= target, timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            stopping = self._stopping
            self._drain()
            if stopping:
                self._close_file()
                return

    def _drain(self) -> None:
        """Write the entries buffered when it starts (later ones wait for the next tick), then flush once."""
        taken = len(self._pending)
        for _ in range(taken):
            entry = self._pending.popleft()
            try:
                self._write(json.dumps(entry, separators=(",", ":")) + "\n")
            except (OSError, TypeError, ValueError) as exc:  # a full disk must not kill the thread silently
                self.dropped += 1
                log.warning("prediction log entry not written: %s", exc)
        if taken and self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                log.warning("prediction log not flushed: %s", exc)
        with self._flushed:
            self._written += taken
            self._flushed.notify_all()

    def _write(self, line: str) -> None:
        data = line.encode()
        if self._file is None:
            self._file = open(self._path, "ab")  # noqa: SIM115 - kept open across writes
        if self._file.tell() + len(data) > self.max_bytes and self._file.tell() > 0:
            self._rotate()
        self._file.write(data)

    def _rotate(self) -> None:
        self._close_file()
        for index in range(self.backups - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{index}")
            if older.exists():
                older.replace(self._path.with_name(f"{self._path.name}.{index + 1}"))
        if self.backups > 0:
            self._path.replace(self._path.with_name(f"{self._path.name}.1"))
        else:
            self._path.unlink(missing_ok=True)
        self._file = open(self._path, "ab")  # noqa: SIM115

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_entries(directory: Path) -> Iterator[dict[str, Any]]:
    """Every line of every worker's current and rotated files, oldest files first; a torn last line
    (a worker killed mid-write) is skipped."""
    files = sorted(Path(directory).glob(f"{FILE_PREFIX}*.jsonl*"), key=lambda p: p.stat().st_mtime)
    for path in files:
        with path.open("rb") as handle:
            for raw in handle:
                try:
                    yield json.loads(raw)
                except ValueError:
                    continue


def summarize(entries: list[dict[str, Any]], since: float | None = None) -> dict[str, Any]:
    """Requests, OOD rate and predicted-class mix per model over entries at or after `since` (epoch s)."""
    window = [e for e in entries if since is None or e.get("time", 0) >= since]
    by_model: dict[str, dict[str, Any]] = {}
    for entry in window:
        stats = by_model.setdefault(entry.get("model_tag", "?"), {"predictions": 0, "ood": 0, "classes": {}})
        stats["predictions"] += 1
        stats["ood"] += bool(entry.get("out_of_distribution"))
        top = entry["labels"][0] if entry.get("labels") else "?"
        stats["classes"][top] = stats["classes"].get(top, 0) + 1
    for stats in by_model.values():
        stats["ood_rate"] = stats["ood"] / stats["predictions"]
        stats["class_mix"] = {k: v / stats["predictions"] for k, v in sorted(stats["classes"].items())}
        del stats["classes"]
    times = [e["time"] for e in window if "time" in e]
    return {
        "predictions": len(window),
        "first": min(times) if times else None,
        "last": max(times) if times else None,
        "models": by_model,
    }


def format_summary(summary: dict[str, Any]) -> str:
    if not summary["predictions"]:
        return "no predictions in this window"
    lines = [f"{summary['predictions']} predictions"]
    for tag, stats in summary["models"].items():
        mix = ", ".join(f"{label} {share:.0%}" for label, share in stats["class_mix"].items())
        lines.append(f"  {tag}: {stats['predictions']} predictions, OOD {stats['ood_rate']:.1%}; {mix}")
    return "\n".join(lines)


def summary_command(args: argparse.Namespace) -> None:
    from serving.settings import load_serve_params

    directory = args.log_dir or load_serve_params().log_dir
    since = time.time() - args.hours * 3600 if args.hours else None
    print(format_summary(summarize(list(read_entries(directory)), since)))


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("Summarise the prediction log: predictions, OOD rate and class mix per model.")
    parser.add_argument("--log-dir", type=Path, default=None, help="default: serve.log_dir")
    parser.add_argument("--hours", type=float, default=None, help="only the last N hours (default: everything)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(summary_command, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
