"""Run the benchmarks and write one report: bench/RESULTS.md and bench/RESULTS.json.

Each benchmark also writes its details under bench/results/. The pipeline state (`dvc repro`, as
`make demo` leaves it) is brought up to date first, outside the timed benchmarks. A benchmark that
fails is reported as failed, the others still run, and the exit status is non-zero.

Usage: python -m bench [--quick] [name ...]   (names: see BENCHMARKS; default: all; naming some updates
       their entries in the last full report, each entry saying when and on which CPU it was measured)
       python -m bench --readme                 (rewrite README.md's figures from bench/RESULTS.json)
$TRANSFERLINE_BENCH_RESULTS_DIR sends every file (report included) elsewhere, for smoke runs.

README.md quotes the figures of the last report between two markers; whenever bench/RESULTS.json is
written, that table is rewritten from it, so the README never quotes a figure the report does not hold
(tests/test_readme_figures.py checks it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from bench.common import machine, results_dir, run_tool
from bench.report import build_report, merge_report, render_markdown, targets_by_cpu, with_readme_table
from transferline import atomic

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = {
    "prepare": ("bench.prepare_bench", {}),
    "train": ("bench.train_bench", {"parts": ("throughput", "probe")}),
    "export": ("bench.export_bench", {}),
    "serving": ("bench.serving_bench", {}),
    "load": ("bench.load_bench", {}),
    "swap": ("bench.swap_bench", {}),
    "tune": ("bench.tune_bench", {}),
    "flow": ("bench.flow_bench", {}),
    "repro": ("bench.repro_bench", {}),
    "seed_spread": ("bench.seed_spread", {}),
    "monitoring": ("bench.monitoring_bench", {}),
    "scale": ("bench.scale_bench", {}),
}
NEEDS_PIPELINE = {"prepare", "train", "export", "tune", "flow", "repro", "seed_spread", "monitoring"}


def report_dir() -> Path:
    return results_dir() if os.environ.get("TRANSFERLINE_BENCH_RESULTS_DIR") else PROJECT_ROOT / "bench"


def run_one(name: str, quick: bool) -> dict:
    module, kwargs = BENCHMARKS[name]
    start = time.perf_counter()
    try:
        results = importlib.import_module(module).run(quick=quick, **kwargs)
    except Exception as error:  # one broken benchmark must not cost the others' figures
        traceback.print_exc()
        return {"seconds": time.perf_counter() - start, "error": f"{type(error).__name__}: {error}"}
    return {"seconds": time.perf_counter() - start, "results": results}


def write_readme_figures(report: dict) -> None:
    readme = PROJECT_ROOT / "README.md"
    atomic.write_text(readme, with_readme_table(readme.read_text(), report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run transferline's benchmarks and write one report.")
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], help="default: all")
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test of every benchmark")
    parser.add_argument("--readme", action="store_true", help="only rewrite README.md's figures from RESULTS.json")
    args = parser.parse_args(argv)
    if args.readme:
        write_readme_figures(json.loads((PROJECT_ROOT / "bench" / "RESULTS.json").read_text()))
        return 0
    names = args.names or list(BENCHMARKS)
    if NEEDS_PIPELINE & set(names):
        print("== pipeline state (dvc repro, not timed)", flush=True)
        run_tool(["dvc", "repro"], PROJECT_ROOT)
    runs = {}
    for name in names:
        print(f"== {name}", flush=True)
        runs[name] = run_one(name, args.quick)
        print(f"   {runs[name]['seconds']:.0f} s, {runs[name].get('error', 'ok')}", flush=True)
    report = build_report(machine(), runs, args.quick)
    target = report_dir()
    previous = target / "RESULTS.json"
    previous_report = json.loads(previous.read_text()) if previous.is_file() else None
    if previous_report is not None and previous_report.get("quick"):
        previous_report = None
    if args.names and not args.quick and previous_report is not None:
        report = merge_report(previous_report, report)
    report["targets_by_cpu"] = targets_by_cpu(previous_report, report)
    atomic.write_json(target / "RESULTS.json", report)
    atomic.write_text(target / "RESULTS.md", render_markdown(report))
    if target == PROJECT_ROOT / "bench":
        write_readme_figures(report)
    print(render_markdown(report))
    return 1 if any("error" in run for run in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
