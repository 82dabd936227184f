"""Data-stage benchmarks: `prepare` throughput on the default data, and a no-op `dvc repro`.

prepare runs once untimed (the raw files then sit in the page cache, as on any second run), then
1 worker and all cores alternate for PREPARE_REPEATS rounds; each is reported as the median with its
spread, and the speed-up as the ratio of the medians.

Run from the project root after `make demo` (or any `dvc repro`): the default data must be in
data/raw. Writes bench/results/prepare.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from bench.common import interleaved, median_seconds, run_tool, write_results
from stages import prepare
from transferline.config import PrepareParams, PreprocessParams, load_section

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOOP_TARGET_S = 3.0
PREPARE_REPEATS = 3


def prepare_once(workers: int) -> tuple[int, float]:
    """One `prepare` of the default raw data into a throwaway folder: (files, seconds)."""
    params = load_section("prepare", PrepareParams, PROJECT_ROOT / "params.yaml")
    preprocess = load_section("preprocess", PreprocessParams, PROJECT_ROOT / "params.yaml")
    raw = PROJECT_ROOT / "data" / "raw"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        metrics = prepare.run(params, preprocess, raw, Path(tmp) / "out", Path(tmp) / "m.json", workers)
        return metrics["files"], time.perf_counter() - start


def prepare_throughput(worker_counts: tuple[int, ...], repeats: int) -> dict[int, dict]:
    """Warm run first (untimed), then every worker count once per round, interleaved: images/s median + spread."""
    files, _ = prepare_once(worker_counts[-1])
    cells = {str(workers): (lambda workers=workers: files / prepare_once(workers)[1]) for workers in worker_counts}
    measured = interleaved(cells, repeats)
    return {
        workers: {
            "workers": workers,
            "images": files,
            "repeats": repeats,
            "seconds": files / measured[str(workers)]["median"],
            "images_per_s": measured[str(workers)]["median"],
            "images_per_s_spread": measured[str(workers)],
        }
        for workers in worker_counts
    }


def noop_repro(repeats: int) -> dict:
    run_tool(["dvc", "repro"], PROJECT_ROOT)  # bring everything up to date first (not timed)
    seconds = median_seconds(lambda: run_tool(["dvc", "repro"], PROJECT_ROOT), repeats)
    stages = run_tool(["dvc", "stage", "list", "--name-only"], PROJECT_ROOT).stdout.split()
    return {"stages": stages, "median_s": seconds, "repeats": repeats, "target_s": NOOP_TARGET_S}


def range_of(cell: dict) -> str:
    found = cell["images_per_s_spread"]
    return f", range {found['min']:.0f}-{found['max']:.0f}"


def run(quick: bool = False) -> dict:
    logging.getLogger("transferline").setLevel(logging.WARNING)
    if not (PROJECT_ROOT / "data" / "raw").is_dir():
        run_tool(["dvc", "repro", "ingest"], PROJECT_ROOT)
    cores = os.cpu_count() or 1
    throughput = prepare_throughput((1, cores) if cores > 1 else (1,), PREPARE_REPEATS)
    serial, parallel = throughput[1], throughput[cores]
    noop = noop_repro(repeats=1 if quick else 3)
    results = {"prepare_serial": serial, "prepare_parallel": parallel, "noop_repro": noop}
    speedup = parallel["images_per_s"] / serial["images_per_s"]
    verdict = "met" if noop["median_s"] <= NOOP_TARGET_S else "NOT met"
    markdown = "\n".join(
        [
            "# Data stages",
            "",
            f"Default data: {serial['images']} images (Fashion-MNIST subset, params.yaml defaults).",
            "",
            "| measurement | value |",
            "|---|---|",
            f"| prepare, 1 worker | {serial['images_per_s']:.0f} images/s "
            f"({serial['seconds']:.2f} s){range_of(serial)} |",
            f"| prepare, {parallel['workers']} workers | {parallel['images_per_s']:.0f} images/s "
            f"({parallel['seconds']:.2f} s){range_of(parallel)}, {speedup:.2f}x serial |",
            f"| no-op `dvc repro` ({len(noop['stages'])} stages: {', '.join(noop['stages'])}) | "
            f"{noop['median_s']:.2f} s median of {noop['repeats']} "
            f"(target <= {NOOP_TARGET_S:.0f} s: {verdict}) |",
            "",
            "prepare decodes and validates every file, hashes it, and resizes it into the uint8 cache. "
            f"Warm cache (one untimed run first); median of {serial['repeats']} interleaved runs per worker count.",
            "",
        ]
    )
    write_results("prepare", results, markdown)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)
