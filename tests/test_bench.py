"""The benchmark report: figures judged against their targets, failures shown, and a real quick load run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.report import build_report, render_markdown

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MACHINE = {"date": "d", "cpu": "cpu", "cores": 2, "python": "3.11", "versions": {"torch": "2.14.1"}}


def flow_results(noop_flow_s: float) -> dict:
    return {
        "noop": {"dvc_repro_s": 1.0, "flow_s": noop_flow_s, "overhead_s": noop_flow_s - 1.0},
        "full_small_data": {"dvc_repro_s": 40.0, "flow_s": 50.0, "overhead_s": 10.0},
        "noop_target_s": 30.0,
    }


def test_a_missed_target_and_a_failed_benchmark_are_reported_as_such():
    runs = {
        "flow": {"seconds": 60.0, "results": flow_results(noop_flow_s=45.0)},
        "tune": {"seconds": 3.0, "error": "RuntimeError: no prepared data"},
    }
    report = build_report(MACHINE, runs, quick=False)
    markdown = render_markdown(report)

    noop = next(f for f in report["figures"] if f["name"].startswith("no-op flow"))
    assert noop["met"] is False and noop["value"] == 44.0
    assert "Targets not met: flow: no-op flow run" in markdown
    assert report["benchmarks"]["tune"]["status"] == "failed: RuntimeError: no prepared data"
    assert not any(f["benchmark"] == "tune" for f in report["figures"])
    assert report["total_seconds"] == 63.0


def test_a_met_target_is_reported_met():
    report = build_report(MACHINE, {"flow": {"seconds": 1.0, "results": flow_results(noop_flow_s=12.0)}}, True)
    assert [f["met"] for f in report["figures"]] == [True, None]
    assert "Every target met." in render_markdown(report)


def test_quick_load_benchmark_serves_without_errors_and_writes_the_report(tmp_path):
    """`python -m bench --quick load`: a real service under 50 keep-alive clients, then the report."""
    env = {**os.environ, "TRANSFERLINE_BENCH_RESULTS_DIR": str(tmp_path)}
    committed = [PROJECT_ROOT / "bench" / "RESULTS.json", PROJECT_ROOT / "bench" / "results" / "load.json"]
    before = [path.stat().st_mtime_ns if path.exists() else None for path in committed]
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "load"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    load = json.loads((tmp_path / "load.json").read_text())
    assert load["errors"] == 0 and load["requests"] > 0
    assert load["checks"]["answers_after"]["met"] is True
    assert load["memory_mib"]["before"] > 50  # a real model in real worker processes was measured
    report = json.loads((tmp_path / "RESULTS.json").read_text())
    assert report["benchmarks"] == {"load": {"seconds": report["total_seconds"], "status": "ok"}}
    assert {f["name"].split(",")[0] for f in report["figures"]} == {
        "throughput",
        "p99 latency",
        "errors",
        "service memory growth over the run (PSS",
        "service memory growth over the run's second half (PSS",
    }
    assert (tmp_path / "RESULTS.md").read_text().startswith("# Benchmark results")
    assert [path.stat().st_mtime_ns if path.exists() else None for path in committed] == before
