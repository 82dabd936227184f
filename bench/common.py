"""What the benchmarks share: a machine description, timing, and writing results atomically."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from transferline import atomic
from transferline.env import tool_env
from transferline.model.run_environment import cpu_description

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """Where results go: bench/results/, or $TRANSFERLINE_BENCH_RESULTS_DIR (smoke runs must not overwrite them)."""
    return Path(os.environ.get("TRANSFERLINE_BENCH_RESULTS_DIR") or RESULTS_DIR)


def machine() -> dict:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu = cpu_description()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu["model"],
        "isa": cpu["isa"],  # the flags that decide which kernels oneDNN, MKL and ATen pick
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {
            name: version(name)
            for name in ("torch", "torchvision", "dvc", "prefect", "bentoml", "onnxruntime-gpu", "numpy")
        },
    }


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_tool(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, check=True)


def write_results(name: str, results: dict, markdown: str) -> Path:
    target = results_dir()
    target.mkdir(parents=True, exist_ok=True)
    atomic.write_json(target / f"{name}.json", {"machine": machine(), **results})
    atomic.write_text(target / f"{name}.md", markdown)
    return target / f"{name}.md"
