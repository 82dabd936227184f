"""Load test: many concurrent clients for a minute against the served model, with its memory before and after.

The service runs as `make demo` serves it (adaptive batching on, 2 workers, 1 ONNX Runtime thread each)
on 127.0.0.1; the client is the serving benchmark's `wrk` script (C, one thread, keep-alive, multipart
POST /classify of one JPEG). Memory is the proportional set size (PSS) summed over the service's whole
process tree, so shared pages count once: sampled after a warm-up at full load, every second during the
run, and after it. Measured: each worker's heap grows from ~180 to ~310-340 MiB over its first one to two
minutes under this load and then stays flat (ONNX Runtime's arena on or off, MALLOC_ARENA_MAX=2 or not;
the tree levels off at 680-740 MiB, after 48,000 requests as after 78,000). So a leak is judged on the second half
of the measured run, after two minutes of load: a leak grows there as fast as before, a warm-up does not.
That growth is bounded by MEMORY_GROWTH_BOUND_MIB; the growth over the whole run is reported too.

Then the baseline: the plain FastAPI + ONNX Runtime app a user would write instead (bench/plain_app.py:
two uvicorn workers, same model, same preprocessing, no batching) and the service take turns under the
same 50 clients, COMPARE_ROUNDS rounds each, the order reversed every other round, so background load
falls on both alike. Targets: the service's throughput at least THROUGHPUT_VS_PLAIN_TARGET times the
plain app's, and its p99 no worse (medians over the rounds).

Model: the pipeline's trained model when models/ + export/ hold one, else a random-init MobileNetV2
(bench/model_source.py); the report says which.

Writes bench/results/load.{json,md}. Usage: python -m bench.load_bench [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
from pathlib import Path

import httpx
import psutil

from bench.common import spread, write_results
from bench.model_source import build_store, model_source
from bench.plain_app import running_plain_app
from bench.serving_bench import WRK_SCRIPT, bench_image, require_wrk, run_wrk
from flows.local_server import LocalServer, free_port, running_server

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 50
SECONDS = 60.0
WARMUP_SECONDS = 60.0
WORKERS = 2
MEMORY_GROWTH_BOUND_MIB = 16.0
P99_BOUND_MS = 500.0
COMPARE_ROUNDS = 3
COMPARE_SECONDS = 20.0  # per round and app
THROUGHPUT_VS_PLAIN_TARGET = 1.2


def tree_pss_mib(root_pid: int) -> float:
    """PSS of a process and all its descendants, in MiB (processes that vanish meanwhile are left out)."""
    total = 0
    root = psutil.Process(root_pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


class MemorySampler:
    """Samples the tree's PSS once a second on a thread while the load runs; keeps the peak."""

    def __init__(self, root_pid: int, interval_s: float = 1.0) -> None:
        self.root_pid, self.interval_s = root_pid, interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(tree_pss_mib(self.root_pid))

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def answers_normally(server: LocalServer, image: Path) -> bool:
    """One ordinary prediction after the load: 200 with predictions."""
    with image.open("rb") as body:
        response = httpx.post(f"{server.url}/classify", files={"image": ("after.jpg", body, "image/jpeg")}, timeout=10)
    return response.status_code == 200 and bool(response.json().get("predictions"))


def compare_with_plain_app(
    wrk: str, script: Path, image: Path, service_url: str, plain_url: str, clients: int, rounds: int, seconds: float
) -> dict:
    """The service and the plain app take turns under the same load; each round's figures per app."""
    urls = {"service": service_url, "plain_app": plain_url}
    run_wrk(wrk, script, image, f"{plain_url}/classify", clients, min(seconds, 5.0))  # warm the plain app's workers
    measured: dict[str, list[dict]] = {name: [] for name in urls}
    for round_index in range(rounds):
        order = list(urls) if round_index % 2 == 0 else list(reversed(urls))
        for name in order:
            measured[name].append(run_wrk(wrk, script, image, f"{urls[name]}/classify", clients, seconds))
    return measured


def measure(clients: int, seconds: float, warmup_s: float, compare_rounds: int, compare_s: float) -> dict:
    wrk = require_wrk()
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "bentoml"
        source = model_source(tmp / "bundle")
        tag = build_store(home, source, tmp / "bundle")
        image = bench_image(tmp / "bench.jpg")
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        env = {
            "BENTOML_HOME": str(home),
            "TRANSFERLINE_MODEL_TAG": tag,
            "TRANSFERLINE_SERVE_WORKERS": str(WORKERS),
            "TRANSFERLINE_SERVE_ORT_THREADS": "1",
            "TRANSFERLINE_SERVE_BATCHING": "true",
            "PYTHONPATH": str(PROJECT_ROOT),
        }
        with running_server(PROJECT_ROOT, tmp / "serve.log", env) as server:
            url = f"{server.url}/classify"
            idle_mib = tree_pss_mib(server.process.pid)
            warmup = run_wrk(wrk, script, image, url, clients, warmup_s)
            before_mib = tree_pss_mib(server.process.pid)
            with MemorySampler(server.process.pid) as sampler:
                load = run_wrk(wrk, script, image, url, clients, seconds)
            after_mib = tree_pss_mib(server.process.pid)
            healthy = answers_normally(server, image)
            ready = httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
            with running_plain_app(source.export_dir, tmp / "plain.log", free_port(), WORKERS, 1) as plain_url:
                comparison = compare_with_plain_app(
                    wrk, script, image, server.url, plain_url, clients, compare_rounds, compare_s
                )
    return {
        "model_tag": tag,
        "model": source.to_dict(),
        "comparison": comparison,
        "warmup": warmup,
        "load": load,
        "memory_mib": {
            "idle": idle_mib,
            "before": before_mib,
            "peak": max(sampler.samples, default=after_mib),
            "after": after_mib,
            "samples": sampler.samples,
        },
        "answers_after": healthy and ready,
    }


def round_figures(rounds: list[dict]) -> dict:
    """Per app: requests/s and p99 of every round, with median and spread; errors summed."""
    return {
        "requests_per_s": spread([r["requests"] / (r["duration_us"] / 1e6) for r in rounds]),
        "p50_ms": spread([r["p50_us"] / 1000 for r in rounds]),
        "p99_ms": spread([r["p99_us"] / 1000 for r in rounds]),
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["non_2xx"] + r["socket_errors"] for r in rounds),
        "rounds": len(rounds),
    }


def versus_plain_app(comparison: dict[str, list[dict]]) -> dict:
    apps = {name: round_figures(rounds) for name, rounds in comparison.items()}
    service, plain = apps["service"], apps["plain_app"]
    ratio = service["requests_per_s"]["median"] / plain["requests_per_s"]["median"]
    per_round = [
        (s["requests"] / s["duration_us"]) / (p["requests"] / p["duration_us"])
        for s, p in zip(comparison["service"], comparison["plain_app"], strict=True)
    ]
    p99_service, p99_plain = service["p99_ms"]["median"], plain["p99_ms"]["median"]
    return {
        "apps": apps,
        "throughput_ratio": ratio,
        "throughput_ratio_per_round": per_round,
        "checks": {
            "throughput_vs_plain_app": {
                "value": ratio,
                "target": f">= {THROUGHPUT_VS_PLAIN_TARGET:g}",
                "met": ratio >= THROUGHPUT_VS_PLAIN_TARGET,
            },
            "p99_vs_plain_app_ms": {
                "value": p99_service,
                "target": f"<= {p99_plain:.0f} (the plain app's)",
                "met": p99_service <= p99_plain,
            },
            "plain_app_errors": {"value": plain["errors"], "target": "== 0", "met": plain["errors"] == 0},
        },
        "throughput_ratio_median_of_rounds": statistics.median(per_round),
    }


def analyse(raw: dict, clients: int, seconds: float, warmup_s: float) -> dict:
    load, memory = raw["load"], raw["memory_mib"]
    errors = load["non_2xx"] + load["socket_errors"]
    growth = memory["after"] - memory["before"]
    samples = memory["samples"] or [memory["after"]]
    late_growth = memory["after"] - samples[len(samples) // 2]
    p99_ms = load["p99_us"] / 1000
    checks = {
        "errors": {"value": errors, "target": "== 0", "met": errors == 0},
        "memory_growth_second_half_mib": {
            "value": late_growth,
            "target": f"<= {MEMORY_GROWTH_BOUND_MIB:.0f}",
            "met": late_growth <= MEMORY_GROWTH_BOUND_MIB,
        },
        "p99_ms": {"value": p99_ms, "target": f"<= {P99_BOUND_MS:.0f}", "met": p99_ms <= P99_BOUND_MS},
        "answers_after": {"value": raw["answers_after"], "target": "true", "met": raw["answers_after"]},
    }
    return {
        "setup": {
            "clients": clients,
            "seconds": seconds,
            "warmup_seconds": warmup_s,
            "workers": WORKERS,
            "ort_threads": 1,
            "model": raw["model"]["description"],
            "model_kind": raw["model"]["kind"],
            "client": "wrk, 1 thread, keep-alive, multipart POST /classify of one 128x96 JPEG",
            "load_average_1min_after": os.getloadavg()[0],
        },
        "requests": load["requests"],
        "requests_per_s": load["requests"] / (load["duration_us"] / 1e6),
        "p50_ms": load["p50_us"] / 1000,
        "p95_ms": load["p95_us"] / 1000,
        "p99_ms": p99_ms,
        "max_ms": load["max_us"] / 1000,
        "errors": errors,
        "memory_mib": memory,
        "memory_growth_mib": growth,
        "memory_growth_second_half_mib": late_growth,
        "checks": checks,
        "versus_plain_app": versus_plain_app(raw["comparison"]),
    }


def render_markdown(results: dict) -> str:
    setup, memory = results["setup"], results["memory_mib"]
    checks = "\n".join(
        f"| {name} | {check['value']:.4g} | {check['target']} | {'met' if check['met'] else 'NOT met'} |"
        if not isinstance(check["value"], bool)
        else f"| {name} | {str(check['value']).lower()} | {check['target']} | {'met' if check['met'] else 'NOT met'} |"
        for name, check in results["checks"].items()
    )
    return "\n".join(
        [
            "# Load",
            "",
            f"{setup['clients']} concurrent clients for {setup['seconds']:.0f} s, after "
            f"{setup['warmup_seconds']:.0f} s of the same load as warm-up, against the service "
            f"({setup['workers']} workers, {setup['ort_threads']} ONNX Runtime thread each, batching on; "
            f"{setup['model']}). Client: {setup['client']}.",
            "",
            "| requests | requests/s | p50 ms | p95 ms | p99 ms | max ms | errors |",
            "|---|---|---|---|---|---|---|",
            f"| {results['requests']} | {results['requests_per_s']:.0f} | {results['p50_ms']:.1f} | "
            f"{results['p95_ms']:.1f} | {results['p99_ms']:.1f} | {results['max_ms']:.1f} | {results['errors']} |",
            "",
            "Service memory, PSS of the whole process tree (MiB): "
            f"idle {memory['idle']:.0f}, after the warm-up {memory['before']:.0f}, peak during the run "
            f"{memory['peak']:.0f}, after the run {memory['after']:.0f} "
            f"(growth {results['memory_growth_mib']:+.1f} MiB over the run, "
            f"{results['memory_growth_second_half_mib']:+.1f} MiB over its second half).",
            "",
            "| check | value | target | verdict |",
            "|---|---|---|---|",
            checks,
            "",
            *plain_app_markdown(results["versus_plain_app"], setup),
        ]
    )


def plain_app_markdown(versus: dict, setup: dict) -> list[str]:
    def cell(found: dict, digits: int) -> str:
        return f"{found['median']:.{digits}f} ({found['min']:.{digits}f}-{found['max']:.{digits}f})"

    compare = setup["compare"]
    rows = [
        f"| {name} | {cell(app['requests_per_s'], 0)} | {cell(app['p50_ms'], 1)} | {cell(app['p99_ms'], 1)} | "
        f"{app['errors']} in {app['requests']} |"
        for name, app in versus["apps"].items()
    ]
    checks = [
        f"| {name} | {check['value']:.3g} | {check['target']} | {'met' if check['met'] else 'NOT met'} |"
        for name, check in versus["checks"].items()
    ]
    return [
        "## Against a plain FastAPI + ONNX Runtime app",
        "",
        f"bench/plain_app.py ({setup['workers']} uvicorn workers, uvloop + httptools, 1 ONNX Runtime thread each, "
        f"same model and preprocessing, no batching) and the service take turns: {compare['rounds']} rounds of "
        f"{compare['seconds_per_round']:.0f} s each, {setup['clients']} clients, order reversed every other round. "
        "Median over the rounds (range in brackets).",
        "",
        "| app | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Service / plain app throughput per round: "
        + ", ".join(f"{r:.2f}x" for r in versus["throughput_ratio_per_round"])
        + ".",
        "",
        "| check | value | target | verdict |",
        "|---|---|---|---|",
        *checks,
        "",
    ]


def run(quick: bool = False) -> dict:
    seconds, warmup_s = (10.0, 3.0) if quick else (SECONDS, WARMUP_SECONDS)
    compare_s = 4.0 if quick else COMPARE_SECONDS
    raw = measure(CLIENTS, seconds, warmup_s, COMPARE_ROUNDS, compare_s)
    results = analyse(raw, CLIENTS, seconds, warmup_s)
    results["setup"]["compare"] = {"rounds": COMPARE_ROUNDS, "seconds_per_round": compare_s}
    write_results("load", results, render_markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s instead of 60 s (a smoke run)")
    args = parser.parse_args(argv)
    print(render_markdown(run(quick=args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
