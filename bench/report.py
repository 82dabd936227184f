"""One report from every benchmark's results: each headline figure against its baseline from the same run.

Pure functions: they take the dicts the benchmarks return (or wrote to bench/results/*.json) and build
the rows of bench/RESULTS.md and bench/RESULTS.json. A benchmark that failed or did not run shows as
such; its figures are never filled in from an older run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Figure:
    """One headline figure: what was measured, against which baseline, and whether it meets its target."""

    benchmark: str
    name: str
    value: float
    unit: str
    baseline: str
    target: str
    met: bool | None  # None: reported, no target

    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: ""}[self.met]


def _ratio(value: float, target: float) -> tuple[str, bool]:
    return f">= {target:g}x", value >= target


def prepare_figures(r: dict) -> list[Figure]:
    serial, parallel, noop = r["prepare_serial"], r["prepare_parallel"], r["noop_repro"]
    return [
        Figure(
            "prepare",
            f"prepare, {parallel['workers']} workers vs 1 ({parallel['images_per_s']:.0f} vs "
            f"{serial['images_per_s']:.0f} images/s)",
            parallel["images_per_s"] / serial["images_per_s"],
            "x",
            "prepare with 1 worker",
            "",
            None,
        ),
        Figure(
            "prepare",
            f"no-op `dvc repro` ({len(noop['stages'])} stages)",
            noop["median_s"],
            "s",
            "",
            f"<= {noop['target_s']:g} s",
            noop["median_s"] <= noop["target_s"],
        ),
    ]


def train_figures(r: dict) -> list[Figure]:
    throughput, probe = r["throughput"], r["probe"]
    target, met = _ratio(throughput["ratio_vs_fwd_bwd_step"], 0.90)
    return [
        Figure(
            "train",
            "training epoch vs model-only step (images/s)",
            throughput["ratio_vs_fwd_bwd_step"],
            "x",
            "forward + backward + AdamW step on a ready batch",
            target,
            met,
        ),
        Figure(
            "train",
            "feature-extraction head fit",
            min(probe["lbfgs_seconds"]),
            "s",
            f"scikit-learn LogisticRegression: {probe['sklearn_seconds']:.1f} s",
            "<= 10 s",
            min(probe["lbfgs_seconds"]) <= 10.0,
        ),
    ]


def export_figures(r: dict) -> list[Figure]:
    ratios = r["ratios"]
    target, met = _ratio(ratios["ort_fp32_vs_eager_batch_1"], 1.5)
    figures = [
        Figure(
            "export",
            "ORT FP32 vs PyTorch eager, batch 1",
            ratios["ort_fp32_vs_eager_batch_1"],
            "x",
            "PyTorch eager",
            target,
            met,
        ),
        Figure(
            "export",
            "ORT FP32 vs PyTorch eager, batch 32",
            ratios["ort_fp32_vs_eager_batch_32"],
            "x",
            "PyTorch eager",
            "",
            None,
        ),
    ]
    if "ort_int8_vs_fp32_batch_1" in ratios:
        target, met = _ratio(ratios["ort_int8_vs_fp32_batch_1"], 1.5)
        loss = ratios["int8_accuracy_loss_points"]
        figures += [
            Figure(
                "export",
                "ORT INT8 vs ORT FP32, batch 1",
                ratios["ort_int8_vs_fp32_batch_1"],
                "x",
                "ORT FP32",
                target,
                met,
            ),
            Figure("export", "INT8 test accuracy loss", loss, "points", "ORT FP32", "<= 1 point", loss <= 1.0),
        ]
    return figures


def serving_figures(r: dict) -> list[Figure]:
    checks = r["targets_at_32_clients"]
    on = r["levels"]["batching_on"]["32"]
    ceiling = r["ceilings"]["used_for_share"]
    return [
        Figure(
            "serving",
            f"service at 32 clients vs in-process ORT ceiling ({on['requests_per_s']:.0f} vs "
            f"{ceiling['images_per_s']:.0f} images/s)",
            checks["share_of_ceiling"]["value"],
            "x",
            f"ONNX Runtime in-process, batch {ceiling['batch']}",
            checks["share_of_ceiling"]["target"] + "x",
            checks["share_of_ceiling"]["met"],
        ),
        Figure(
            "serving",
            "adaptive batching on vs off, 32 clients",
            checks["batching_gain"]["value"],
            "x",
            "the same service, batching off",
            checks["batching_gain"]["target"] + "x",
            checks["batching_gain"]["met"],
        ),
        Figure(
            "serving",
            "p99 latency at 32 clients",
            checks["p99_ms"]["value"],
            "ms",
            "",
            checks["p99_ms"]["target"] + " ms",
            checks["p99_ms"]["met"],
        ),
    ]


def load_figures(r: dict) -> list[Figure]:
    setup, checks = r["setup"], r["checks"]
    label = f"{setup['clients']} clients, {setup['seconds']:.0f} s"
    return [
        Figure(
            "load",
            f"throughput, {label} (p50 {r['p50_ms']:.0f} / p95 {r['p95_ms']:.0f} ms)",
            r["requests_per_s"],
            "requests/s",
            "",
            "",
            None,
        ),
        Figure(
            "load",
            f"p99 latency, {label}",
            r["p99_ms"],
            "ms",
            "",
            checks["p99_ms"]["target"] + " ms",
            checks["p99_ms"]["met"],
        ),
        Figure(
            "load", f"errors, {label} ({r['requests']} requests)", r["errors"], "", "", "== 0", checks["errors"]["met"]
        ),
        Figure(
            "load",
            f"service memory growth over the run (PSS, {r['memory_mib']['before']:.0f} MiB after warm-up)",
            r["memory_growth_mib"],
            "MiB",
            "memory after warm-up",
            "",
            None,
        ),
        Figure(
            "load",
            f"service memory growth over the run's second half (PSS, {r['memory_mib']['after']:.0f} MiB at the end)",
            r["memory_growth_second_half_mib"],
            "MiB",
            "memory half-way through the run",
            checks["memory_growth_second_half_mib"]["target"] + " MiB",
            checks["memory_growth_second_half_mib"]["met"],
        ),
    ]


def tune_figures(r: dict) -> list[Figure]:
    speedup, target = r["speedup"], r.get("speedup_target", 20.0)
    figures = [
        Figure(
            "tune",
            "head-only trials/min, cached features vs recomputed",
            speedup,
            "x",
            "the same trials recomputing features",
            f">= {target:g}x",
            speedup >= target,
        )
    ]
    comparison = r.get("sampler_comparison", {})
    for sampler in ("random", "tpe"):
        if sampler in comparison:
            figures.append(
                Figure(
                    "tune",
                    f"{sampler}: mean best val accuracy, {comparison.get('trials_each')} trials x "
                    f"{len(comparison.get('seeds', []))} seeds",
                    comparison[sampler]["mean_best"],
                    "",
                    "",
                    "",
                    None,
                )
            )
    return figures


def flow_figures(r: dict) -> list[Figure]:
    noop = r["noop"]
    return [
        Figure(
            "flow",
            f"no-op flow run vs no-op `dvc repro` ({noop['dvc_repro_s']:.1f} s)",
            noop["overhead_s"],
            "s overhead",
            "`dvc repro`",
            f"flow <= {r['noop_target_s']:g} s",
            noop["flow_s"] <= r["noop_target_s"],
        ),
        Figure(
            "flow",
            f"full run, small data, vs `dvc repro` ({r['full_small_data']['dvc_repro_s']:.1f} s)",
            r["full_small_data"]["overhead_s"],
            "s overhead",
            "`dvc repro`",
            "",
            None,
        ),
    ]


def scale_figures(r: dict) -> list[Figure]:
    figures = []
    for backend in ("postgresql", "sqlite"):
        runs = r["trials"]["fine_tune"][backend]
        figures.append(
            Figure(
                "scale",
                f"fine-tuning trials/min, 2 workers vs 1, {backend}",
                runs["2"]["trials_per_minute"] / runs["1"]["trials_per_minute"],
                "x",
                f"1 worker ({runs['1']['trials_per_minute']:.1f} /min)",
                "",
                None,
            )
        )
    head = r["trials"]["head_only"]
    figures.append(
        Figure(
            "scale",
            "head-only trials/min, 2 workers, PostgreSQL vs SQLite",
            head["postgresql"]["2"]["trials_per_minute"] / head["sqlite"]["2"]["trials_per_minute"],
            "x",
            f"SQLite ({head['sqlite']['2']['trials_per_minute']:.1f} /min)",
            "",
            None,
        )
    )
    for direction, preposition in (("push", "to"), ("pull", "from")):
        figures.append(
            Figure(
                "scale",
                f"`dvc {direction}` {preposition} an S3 API on loopback",
                r["remote"][f"{direction}_mb_s"],
                "MB/s",
                "",
                "",
                None,
            )
        )
    return figures


FIGURES: dict[str, Callable[[dict], list[Figure]]] = {
    "prepare": prepare_figures,
    "train": train_figures,
    "export": export_figures,
    "serving": serving_figures,
    "load": load_figures,
    "tune": tune_figures,
    "flow": flow_figures,
    "scale": scale_figures,
}


def build_report(machine: dict, runs: dict[str, dict], quick: bool) -> dict:
    """`runs[name]` holds `seconds` and either `results` or `error`."""
    figures: list[Figure] = []
    for name, run in runs.items():
        if "results" in run:
            figures += FIGURES[name](run["results"])
    return {
        "machine": machine,
        "quick": quick,
        "benchmarks": {
            name: {"seconds": run["seconds"], "status": "failed: " + run["error"] if "error" in run else "ok"}
            for name, run in runs.items()
        },
        "total_seconds": sum(run["seconds"] for run in runs.values()),
        "figures": [asdict(figure) | {"verdict": figure.verdict()} for figure in figures],
    }


def _value(figure: dict) -> str:
    value = figure["value"]
    text = f"{value:.3g}" if isinstance(value, float) and abs(value) < 1000 else f"{value:.0f}"
    return f"{text} {figure['unit']}".strip() if figure["unit"] != "x" else f"{text}x"


def render_markdown(report: dict) -> str:
    machine = report["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items() if version)
    rows = [
        f"| {f['benchmark']} | {f['name']} | {_value(f)} | {f['baseline']} | {f['target']} | {f['verdict']} |"
        for f in report["figures"]
    ]
    runs = [
        f"| {name} | {run['seconds']:.0f} s | {run['status']} | [{name}](results/{name}.md) |"
        for name, run in report["benchmarks"].items()
    ]
    failing = [f for f in report["figures"] if f["met"] is False]
    summary = (
        "Every target met."
        if not failing
        else "Targets not met: " + "; ".join(f"{f['benchmark']}: {f['name']}" for f in failing) + "."
    )
    return "\n".join(
        [
            "# Benchmark results",
            "",
            f"Measured {machine['date']} on {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}"
            f"{' (quick mode: short runs, smoke figures only)' if report['quick'] else ''}. {versions}.",
            "",
            "Every ratio compares two things measured in the same run, on the same machine, so load from",
            "other processes falls on both; absolute figures move with the machine. Written by `make bench`",
            "(`python -m bench`); details per benchmark in bench/results/.",
            "",
            "| benchmark | figure | value | baseline | target | verdict |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            summary,
            "",
            "| benchmark | wall time | status | details |",
            "|---|---|---|---|",
            *runs,
            f"| total | {report['total_seconds'] / 60:.1f} min | | |",
            "",
        ]
    )
