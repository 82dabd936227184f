"""The benchmark report: figures judged against their targets, failures shown, and a real quick load run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import cpu_description, interleaved
from bench.load_bench import versus_plain_app
from bench.report import build_report, render_markdown, scale_figures
from bench.tune_bench import study_rates

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


def test_a_partial_run_replaces_its_own_figures_and_keeps_the_others_with_when_they_were_measured():
    from bench.report import merge_report

    earlier = build_report(
        MACHINE,
        {
            "flow": {"seconds": 60.0, "results": flow_results(noop_flow_s=45.0)},
            "tune": {"seconds": 3.0, "error": "RuntimeError: no prepared data"},
        },
        quick=False,
    )
    later_machine = {**MACHINE, "date": "later", "cpu": "other cpu"}
    now = build_report(later_machine, {"flow": {"seconds": 20.0, "results": flow_results(noop_flow_s=12.0)}}, False)
    merged = merge_report(earlier, now)
    assert merged["benchmarks"]["tune"]["measured"] == {"cpu": "cpu", "date": "d"}
    assert merged["benchmarks"]["flow"]["measured"] == {"cpu": "other cpu", "date": "later"}
    noop = [f for f in merged["figures"] if f["name"].startswith("no-op flow")]
    assert [f["value"] for f in noop] == [11.0]  # the new figure only, never both
    assert merged["total_seconds"] == 23.0
    assert list(merged["benchmarks"]) == ["flow", "tune"]  # the report's order, whatever ran last
    markdown = render_markdown(merged)
    assert "| tune | 3 s | failed: RuntimeError: no prepared data | d, cpu |" in markdown
    assert "| flow | 20 s | ok | later, other cpu |" in markdown
    assert "Figures from 2 runs" in markdown


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
        "service vs plain FastAPI + ORT app",
        "service p99 vs plain app p99",
    }
    versus = load["versus_plain_app"]
    assert versus["apps"]["plain_app"]["errors"] == 0 and versus["apps"]["plain_app"]["requests"] > 0
    assert len(versus["throughput_ratio_per_round"]) == load["setup"]["compare"]["rounds"] >= 3
    assert (tmp_path / "RESULTS.md").read_text().startswith("# Benchmark results")
    assert [path.stat().st_mtime_ns if path.exists() else None for path in committed] == before


def test_quick_swap_benchmark_deploys_and_rolls_back_under_load_without_a_failed_request(tmp_path):
    """`python -m bench --quick swap`: 32 clients through a swap and a swap back, a restart as the baseline."""
    env = {**os.environ, "TRANSFERLINE_BENCH_RESULTS_DIR": str(tmp_path)}
    committed = [PROJECT_ROOT / "bench" / "RESULTS.json", PROJECT_ROOT / "bench" / "results" / "swap.json"]
    before = [path.stat().st_mtime_ns if path.exists() else None for path in committed]
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "swap"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    swap = json.loads((tmp_path / "swap.json").read_text())
    assert swap["failed"] == 0, f"{swap['failed']} failed, statuses {swap['failed_statuses']}: {swap['during_swaps']}"
    assert swap["tag_order_violations"] == []
    assert swap["before"]["requests"] > 0 and swap["during_swaps"]["requests"] > 0
    assert all(count > 0 for count in swap["answers_per_tag"].values())
    assert set(swap["swaps"]) == {"deploy", "rollback"}
    assert swap["restart_baseline"]["failed"] > 0  # the baseline did lose requests: the comparison is real
    report = json.loads((tmp_path / "RESULTS.json").read_text())
    assert {f["benchmark"] for f in report["figures"]} == {"swap"} and len(report["figures"]) == 4
    assert (tmp_path / "swap.md").read_text().startswith("# Model swap")
    assert [path.stat().st_mtime_ns if path.exists() else None for path in committed] == before


def test_the_machine_record_names_the_cpu_and_its_vector_instruction_sets():
    cpuinfo = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni amx_tile amx_bf16 amx_int8\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu\n"
    )
    model, flags = cpu_description(cpuinfo)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert flags == ["amx_bf16", "amx_int8", "amx_tile", "avx2", "avx512_vnni", "avx512f", "fma"]
    assert cpu_description("processor\t: 0\n") == (None, [])


def test_interleaved_measurements_alternate_the_order_and_report_median_and_range():
    calls: list[str] = []

    def cell(name: str, values: list[float]):
        def measure() -> float:
            calls.append(name)
            return values.pop(0)

        return measure

    found = interleaved({"a": cell("a", [3.0, 1.0, 2.0]), "b": cell("b", [5.0, 7.0, 6.0])}, repeats=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert found["a"] | {"values": None} == {"median": 2.0, "min": 1.0, "max": 3.0, "values": None}
    assert found["b"]["median"] == 6.0


def test_the_search_speed_up_counts_the_one_off_feature_pass():
    cached = [{"wall_seconds": 0.2}] * 20
    study = study_rates(features_seconds=7.0, cached=cached, recomputed={"median_trial_seconds": 6.8})
    assert study["cached_seconds_feature_pass_included"] == pytest.approx(11.0)
    assert study["speedup"] == pytest.approx(20 * 6.8 / 11.0)  # ~12.4x, not the per-trial 34x
    assert study["cached_trials_per_minute"] == pytest.approx(60 * 20 / 11.0)


def wrk_round(requests_per_s: float, p99_ms: float, errors: int = 0) -> dict:
    return {
        "requests": int(requests_per_s * 10),
        "duration_us": 10_000_000,
        "p50_us": 50_000,
        "p99_us": int(p99_ms * 1000),
        "non_2xx": errors,
        "socket_errors": 0,
    }


def test_the_service_is_judged_against_the_plain_app_on_throughput_and_p99():
    comparison = {
        "service": [wrk_round(700, 250), wrk_round(712, 223), wrk_round(704, 288)],
        "plain_app": [wrk_round(668, 153), wrk_round(676, 155), wrk_round(670, 154)],
    }
    versus = versus_plain_app(comparison)
    assert versus["throughput_ratio"] == pytest.approx(704 / 670)
    assert versus["checks"]["throughput_vs_plain_app"]["met"] is False  # 1.05x < 1.2x
    assert versus["checks"]["p99_vs_plain_app_ms"]["value"] == 250.0
    assert versus["checks"]["p99_vs_plain_app_ms"]["met"] is False  # 250 ms > 154 ms
    faster = versus_plain_app({"service": [wrk_round(900, 100)] * 3, "plain_app": comparison["plain_app"]})
    assert all(check["met"] for check in faster["checks"].values())


def test_onnx_runtime_is_judged_against_the_best_eager_configuration_with_its_spread():
    def cell(median: float, low: float, high: float) -> dict:
        return {"median": median, "min": low, "max": high}

    results = {
        "model": {"kind": "trained"},
        "repeats": 5,
        "best_eager": {"batch_1": "pytorch_eager_channels_last", "batch_32": "pytorch_eager"},
        "targets": {"ort_fp32_vs_best_eager_batch_1": 1.5, "int8_accuracy_loss_points": 1.0},
        "ratios": {
            "ort_fp32_vs_best_eager_batch_1": cell(1.3, 1.1, 1.6),
            "ort_fp32_vs_best_eager_batch_32": cell(1.1, 0.9, 1.2),
            "int8_accuracy_loss_points": 0.33,
        },
    }
    report = build_report(MACHINE, {"export": {"seconds": 1.0, "results": results}}, quick=False)
    batch_1, batch_32, int8 = report["figures"]
    assert batch_1["value"] == 1.3 and batch_1["met"] is False and "range 1.10-1.60x over 5 rounds" in batch_1["name"]
    assert batch_1["baseline"].startswith("pytorch_eager_channels_last") and "trained model" in batch_1["name"]
    assert batch_32["met"] is None and batch_32["baseline"].startswith("pytorch_eager,")
    assert int8["value"] == 0.33 and int8["met"] is True


def test_the_int8_speed_target_is_judged_at_the_service_s_thread_count():
    def cell(median: float) -> dict:
        return {"median": median, "min": median - 0.05, "max": median + 0.05}

    results = {
        "model": {"kind": "trained"},
        "repeats": 5,
        "threads": 2,
        "service_threads": 1,
        "best_eager": {"batch_1": "pytorch_eager", "batch_32": "pytorch_eager"},
        "targets": {"ort_fp32_vs_best_eager_batch_1": 1.5, "ort_int8_vs_fp32_batch_1_service_threads": 1.5},
        "ratios": {
            "ort_fp32_vs_best_eager_batch_1": cell(4.0),
            "ort_fp32_vs_best_eager_batch_32": cell(2.0),
            "ort_int8_vs_fp32_batch_1_service_threads": cell(1.45),
            "ort_int8_vs_fp32_batch_1": cell(1.6),
        },
    }
    report = build_report(MACHINE, {"export": {"seconds": 1.0, "results": results}}, quick=False)
    _, _, served, two_threads = report["figures"]
    assert served["value"] == 1.45 and served["met"] is False and "1 thread(s) as each service worker" in served["name"]
    assert two_threads["value"] == 1.6 and two_threads["met"] is None and "2 threads" in two_threads["name"]


def test_repro_runs_are_grouped_by_inputs_and_say_whether_the_cpus_agree(tmp_path, monkeypatch):
    from bench.repro_bench import load_runs, record_run, runs_markdown

    monkeypatch.setenv("TRANSFERLINE_BENCH_RESULTS_DIR", str(tmp_path))

    def run_record(cpu: str, sha: str, mode="portable", code="c1") -> Path:
        path = tmp_path / f"{cpu}-{sha}-{code}.json"
        environment = {
            "cpu": {"model": cpu, "isa": ["avx2"]},
            "reproducible": mode,
            "pinned": True,
            "threads": 2,
            "versions": {"torch": "2.14.1"},
        }
        document = {
            "environment": environment,
            "data_version": "d1",
            "params_digest": "p1",
            "code_digest": code,
            "model_sha256": sha,
        }
        path.write_text(json.dumps(document))
        return path

    record_run(run_record("AMD EPYC", "a" * 64))
    record_run(run_record("Intel Xeon", "b" * 64))
    record_run(run_record("Intel Xeon", "a" * 64))  # a re-run on the same CPU replaces its row
    record_run(run_record("Intel Xeon", "c" * 64, mode=True))
    record_run(run_record("AMD EPYC", "d" * 64, code="c2"))  # other training code: a group of its own
    runs = load_runs()
    assert [(r["cpu"], r["model_sha256"][0], r["mode"]) for r in runs] == [
        ("AMD EPYC", "a", "portable"),
        ("Intel Xeon", "a", "portable"),
        ("Intel Xeon", "c", True),
        ("AMD EPYC", "d", "portable"),
    ]
    table = "\n".join(runs_markdown(runs))
    assert "| d1 | p1 | c1 | portable | Intel Xeon | 2.14.1 | `aaaaaaaaaaaaaaaa` | **yes** |" in table
    assert "| d1 | p1 | c1 | True | Intel Xeon | 2.14.1 | `cccccccccccccccc` | (first) |" in table
    assert "| d1 | p1 | c2 | portable | AMD EPYC | 2.14.1 | `dddddddddddddddd` | (first) |" in table


def test_the_scale_report_keeps_the_parts_not_run_and_says_where_each_part_was_measured(tmp_path):
    """`python -m bench.scale_bench --only ddp`: the search and remote rows stay, with the machine they came from."""
    from bench.scale_bench import kept_parts, markdown

    runs = {"1": {"trials": 8, "trials_per_minute": 400.0}, "2": {"trials": 8, "trials_per_minute": 200.0}}
    trials = {kind: {"postgresql": runs, "sqlite": runs} for kind in ("head_only", "fine_tune")}
    remote = {"files": 4, "megabytes": 16, "push_s": 1.6, "pull_s": 1.6, "push_mb_s": 10.0, "pull_mb_s": 9.7}
    machine = {"cpu": "AMD EPYC", "cores": 2, "date": "2026-12-01T23:40:34+00:00"}
    (tmp_path / "scale.json").write_text(
        json.dumps({"machine": machine, "quick": True, "trials": trials, "remote": remote, "ddp": {"old": 1}})
    )
    figures, measured = kept_parts(tmp_path / "scale.json", ("ddp",))
    assert figures == {"trials": trials, "remote": remote}
    assert measured["trials"] == {"cpu": "AMD EPYC", "cores": 2, "date": machine["date"], "quick": True}
    one = {"processes": 1, "batchnorm": "global", "threads_per_process": 2, "images_per_s": 60.0, "wall_s": 17.0}
    one["images_per_s_values"] = [60.0, 58.0]
    thin = {**one, "threads_per_process": 1, "images_per_s": 45.0, "images_per_s_values": [45.0, 44.0]}
    two = {**one, "processes": 2, "threads_per_process": 1, "images_per_s": 54.0, "wall_s": 19.0}
    own = {**two, "batchnorm": "per_process", "images_per_s": 57.0}
    ddp = {"image_size": 64, "train_images": 252, "epochs": 4, "batch_size": 32}
    ddp["runs"] = {"1": one, "1_one_thread": thin, "2": two, "2_per_process": own}
    now = {"cpu": "Intel Xeon", "cores": 2, "date": "2026-12-02T01:00:00+00:00", "quick": False}
    ratios = {"ratio": 0.9, "ratio_per_process_batchnorm": 0.95, "ratio_one_thread": 0.75}
    results = {"measured": {**measured, "ddp": now}, **figures, "ddp": {**ddp, **ratios}}
    text = markdown(results)
    assert "- search trials: AMD EPYC, 2 cores, 2026-12-01 (quick run" in text
    assert "- DDP training: Intel Xeon, 2 cores, 2026-12-02\n" in text
    assert "| head-only (8) | postgresql | 400.0 /min | 200.0 /min | 0.50x |" in text
    assert "| `dvc push` | 4 files, 16 MB | 1.6 | 10.0 |" in text
    assert "| 1 x 2 | - | 60.0 (60, 58) | 1.00x | 17 s |" in text and "| 1 x 1 | - | 45.0 (45, 44) | 0.75x |" in text
    assert "| 2 x 1 | global batch (default) | 54.0 (60, 58) | 0.90x | 19 s |" in text
    assert "| 2 x 1 | each process's rows | 57.0 (60, 58) | 0.95x | 19 s |" in text
    assert "global batch (the default, which makes 2 processes train the model one process trains) 0.90x" in text
    figures_now = [figure.name for figure in scale_figures(results)]
    assert figures_now[-2:] == [
        "DDP training images/s, 2 processes vs 1 (gloo, CPU, global-batch BatchNorm)",
        "DDP training images/s, 2 processes vs 1 (gloo, CPU, per-process BatchNorm)",
    ]
    assert len(figures_now) == 7
