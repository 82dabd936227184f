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

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SIMD_FLAG_PREFIXES = ("avx2", "avx512", "amx", "fma")  # the /proc/cpuinfo flags a report names


def results_dir() -> Path:
    """Where results go: bench/results/, or $TRANSFERLINE_BENCH_RESULTS_DIR (smoke runs must not overwrite them)."""
    return Path(os.environ.get("TRANSFERLINE_BENCH_RESULTS_DIR") or RESULTS_DIR)


def cpu_description(cpuinfo: str) -> tuple[str | None, list[str]]:
    """The CPU model and the instruction sets that decide inference speed (AVX2, AVX-512, AMX), from /proc/cpuinfo.

    Figures from two machines are only comparable when these match: ONNX Runtime and PyTorch pick
    different kernels with and without AVX-512 VNNI or AMX.
    """
    model, flags = None, []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = sorted({flag for flag in value.split() if flag.startswith(SIMD_FLAG_PREFIXES)})
    return model, flags


def machine() -> dict:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        model, flags = cpu_description(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, flags = None, []
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": model or platform.processor() or platform.machine(),
        "cpu_instruction_sets": flags,
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


def spread(values: list[float]) -> dict:
    """Median, min and max of repeated measurements: a figure with its spread, never one lucky run."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def interleaved(cells: dict[str, Callable[[], float]], repeats: int) -> dict[str, dict]:
    """Measure every cell once per round, `repeats` rounds, order reversed every other round, so a busy
    moment on a shared machine falls on all of them alike; returns each cell's spread."""
    values: dict[str, list[float]] = {name: [] for name in cells}
    for round_index in range(repeats):
        order = list(cells) if round_index % 2 == 0 else list(reversed(cells))
        for name in order:
            values[name].append(cells[name]())
    return {name: spread(found) for name, found in values.items()}


def run_tool(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, check=True)


def write_results(name: str, results: dict, markdown: str) -> Path:
    target = results_dir()
    target.mkdir(parents=True, exist_ok=True)
    atomic.write_json(target / f"{name}.json", {"machine": machine(), **results})
    atomic.write_text(target / f"{name}.md", markdown)
    return target / f"{name}.md"
