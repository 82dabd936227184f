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
            f"{serial['images_per_s']:.0f} images/s, warm cache, median of {serial.get('repeats', 1)})",
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


def _range(cell: dict) -> str:
    return f"range {cell['min']:.2f}-{cell['max']:.2f}x over {{}} rounds"


def export_figures(r: dict) -> list[Figure]:
    ratios, targets, rounds, model = r["ratios"], r["targets"], r["repeats"], r["model"]["kind"]
    figures = []
    for batch in (1, 32):
        cell, best = ratios[f"ort_fp32_vs_best_eager_batch_{batch}"], r["best_eager"][f"batch_{batch}"]
        target, met = _ratio(cell["median"], targets["ort_fp32_vs_best_eager_batch_1"]) if batch == 1 else ("", None)
        figures.append(
            Figure(
                "export",
                f"ORT FP32 vs best PyTorch eager, batch {batch}, {model} model ({_range(cell).format(rounds)})",
                cell["median"],
                "x",
                f"{best}, inference mode, same threads",
                target,
                met,
            )
        )
    if "ort_int8_vs_fp32_batch_1_service_threads" in ratios:
        cell = ratios["ort_int8_vs_fp32_batch_1_service_threads"]
        target, met = _ratio(cell["median"], targets["ort_int8_vs_fp32_batch_1_service_threads"])
        threads = r["service_threads"]
        figures.append(
            Figure(
                "export",
                f"ORT INT8 vs ORT FP32, batch 1, {threads} thread(s) as each service worker runs it "
                f"({_range(cell).format(rounds)})",
                cell["median"],
                "x",
                "ORT FP32 answering logits alone, as INT8 does",
                target,
                met,
            )
        )
    if "ort_int8_vs_fp32_batch_1" in ratios:
        cell = ratios["ort_int8_vs_fp32_batch_1"]
        figures.append(
            Figure(
                "export",
                f"ORT INT8 vs ORT FP32, batch 1, {r['threads']} threads ({_range(cell).format(rounds)})",
                cell["median"],
                "x",
                "ORT FP32 answering logits alone, as INT8 does",
                "",
                None,
            )
        )
    if "int8_accuracy_loss_points" in ratios:
        loss, bound = ratios["int8_accuracy_loss_points"], targets["int8_accuracy_loss_points"]
        figures.append(
            Figure(
                "export", "INT8 test accuracy loss", loss, "points", "ORT FP32", f"<= {bound:g} point", loss <= bound
            ),
        )
    return figures


def serving_figures(r: dict) -> list[Figure]:
    checks = r["targets_at_32_clients"]
    on = r["levels"]["batching_on"]["32"]
    ceiling = r["ceilings"]["used_for_share"]
    return [
        Figure(
            "serving",
            f"service at 32 clients vs in-process ORT ceiling ({on['requests_per_s']:.0f} vs "
            f"{ceiling['images_per_s']:.0f} images/s, {r['model'].get('kind', 'synthetic')} model"
            f"{', median of rounds each paired with its ceiling' if 'paired_rounds' in ceiling else ''})",
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


def versus_plain_figures(r: dict) -> list[Figure]:
    versus, setup = r["versus_plain_app"], r["setup"]
    service, plain = versus["apps"]["service"], versus["apps"]["plain_app"]
    rounds = f"{setup['clients']} clients, median of {setup['compare']['rounds']} interleaved rounds"
    throughput, p99 = versus["checks"]["throughput_vs_plain_app"], versus["checks"]["p99_vs_plain_app_ms"]
    return [
        Figure(
            "load",
            f"service vs plain FastAPI + ORT app, throughput, {rounds} ({service['requests_per_s']['median']:.0f} vs "
            f"{plain['requests_per_s']['median']:.0f} requests/s)",
            throughput["value"],
            "x",
            "bench/plain_app.py: 2 uvicorn workers, same model and preprocessing, no batching",
            throughput["target"] + "x",
            throughput["met"],
        ),
        Figure(
            "load",
            f"service p99 vs plain app p99, {rounds}",
            p99["value"],
            "ms",
            f"plain app p99 {plain['p99_ms']['median']:.0f} ms",
            p99["target"].split(" (")[0] + " ms",
            p99["met"],
        ),
    ]


def load_figures(r: dict) -> list[Figure]:
    setup, checks = r["setup"], r["checks"]
    label = f"{setup['clients']} clients, {setup['seconds']:.0f} s, {setup.get('model_kind', 'synthetic')} model"
    figures = [
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
    return figures + (versus_plain_figures(r) if "versus_plain_app" in r else [])


def swap_figures(r: dict) -> list[Figure]:
    setup, checks, before, during = r["setup"], r["checks"], r["before"], r["during_swaps"]
    label = f"{setup['clients']} clients through a deploy and a rollback, {setup.get('model_kind', 'synthetic')} model"
    restart = r["restart_baseline"]
    return [
        Figure(
            "swap",
            f"failed requests, {label} ({r['requests']} requests)",
            r["failed"],
            "",
            f"a restart: {restart['failed']} of {restart['requests']} failed",
            "== 0",
            checks["failed_requests"]["met"],
        ),
        Figure(
            "swap",
            f"answers whose model tag is out of the swaps' order, {label}",
            len(r["tag_order_violations"]),
            "",
            "",
            "== 0",
            checks["tag_order_violations"]["met"],
        ),
        Figure(
            "swap",
            f"p99 latency during the swaps ({during['requests']} requests; p50 {during['p50_ms']:.0f} ms)",
            during["p99_ms"],
            "ms",
            f"before the deploy: p99 {before['p99_ms']:.0f} ms, p50 {before['p50_ms']:.0f} ms",
            "",
            None,
        ),
        Figure(
            "swap",
            "longest time without any answer during a swap",
            r["longest_silence_during_swaps_s"] * 1000,
            "ms",
            f"a restart: {restart['longest_silence_s']:.1f} s",
            "",
            None,
        ),
    ]


def tune_figures(r: dict) -> list[Figure]:
    speedup, study = r["speedup"], r["study"]
    ceiling = r.get("speedup_ceiling", study["trials"])
    per_trial_target = r.get("speedup_per_trial_target")
    figures = [
        Figure(
            "tune",
            f"{study['trials']}-trial head-only study, cached features, one-off feature pass "
            f"({r['features_seconds_up_front']:.1f} s) included ({study['cached_trials_per_minute']:.1f} vs "
            f"{study['recompute_trials_per_minute']:.1f} trials/min)",
            speedup,
            "x",
            f"the same study recomputing features every trial (below {ceiling}x: one pass instead of {ceiling})",
            "",
            None,
        ),
        Figure(
            "tune",
            f"head-only trial, cached features vs recomputed, feature pass left out "
            f"({r['head_only_cached_matched']['median_trial_seconds']:.2f} vs "
            f"{r['head_only_recompute_features']['median_trial_seconds']:.1f} s per trial)",
            r["speedup_per_trial"],
            "x",
            "the same trials recomputing features",
            f">= {per_trial_target:g}x" if per_trial_target else "",
            r["speedup_per_trial"] >= per_trial_target if per_trial_target else None,
        ),
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


def _median_of(pair: dict) -> str:
    return f", median of {len(pair['spread']['flow_s']['values'])}" if "spread" in pair else ""


def flow_figures(r: dict) -> list[Figure]:
    noop = r["noop"]
    return [
        Figure(
            "flow",
            f"no-op flow run vs no-op `dvc repro` ({noop['dvc_repro_s']:.1f} s){_median_of(noop)}",
            noop["overhead_s"],
            "s overhead",
            "`dvc repro`",
            f"flow <= {r['noop_target_s']:g} s",
            noop["flow_s"] <= r["noop_target_s"],
        ),
        Figure(
            "flow",
            f"full run, small data, vs `dvc repro` ({r['full_small_data']['dvc_repro_s']:.1f} s)"
            f"{_median_of(r['full_small_data'])}",
            r["full_small_data"]["overhead_s"],
            "s overhead",
            "`dvc repro`",
            "",
            None,
        ),
    ]


def repro_figures(r: dict) -> list[Figure]:
    return [
        Figure(
            "repro",
            "training images/s, train.reproducible on vs off",
            r["ratio_on_off"],
            "x",
            "the same recipe without the pinned math, interleaved",
            "",
            None,
        )
    ]


def seed_spread_figures(r: dict) -> list[Figure]:
    test = r["test_accuracy"]
    return [
        Figure(
            "seed_spread",
            f"default recipe test accuracy, mean of {r['seeds']} seeds (sd {test['sd']:.4f})",
            test["mean"],
            "",
            "",
            "",
            None,
        )
    ]


def monitoring_figures(r: dict) -> list[Figure]:
    drift, ood, log = r["drift"], r["ood"], r["log"]
    weakest = min(drift["power"], key=drift["power"].get)
    return [
        Figure(
            "monitoring",
            f"drift detection power at {drift['window']} predictions, weakest shift ({weakest})",
            drift["power"][weakest],
            "",
            "blur, brightness, rotation, class prior, unseen class",
            f">= {drift['targets']['power']}",
            drift["met"]["power"],
        ),
        Figure(
            "monitoring",
            f"drift false alarms over {drift['clean_windows']} clean windows",
            drift["false_alarm_rate"],
            "",
            "clean test images",
            f"<= {drift['targets']['false_alarm_rate']}",
            drift["met"]["false_alarms"],
        ),
        Figure(
            "monitoring", "OOD flag AUROC, far (noise, photos, ELPV)", ood["far_pooled"], "", "test images", "", None
        ),
        Figure(
            "monitoring",
            "OOD flag AUROC, near (blur, brightness, rotation, noise)",
            ood["near_pooled"],
            "",
            "test images",
            "",
            None,
        ),
        Figure(
            "monitoring",
            "prediction log, p95 cost per image on the request path",
            log["p95_ms"],
            "ms",
            "",
            f"<= {log['target_p95_ms']} ms",
            log["met"],
        ),
    ]


def scale_figures(r: dict) -> list[Figure]:
    figures = []
    if "trials" in r:
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
    if "remote" in r:
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
    if "ddp" in r:
        one = r["ddp"]["runs"]["1"]["images_per_s"]
        for key, batchnorm in (("ratio", "global-batch"), ("ratio_per_process_batchnorm", "per-process")):
            if key in r["ddp"]:
                figures.append(
                    Figure(
                        "scale",
                        f"DDP training images/s, 2 processes vs 1 (gloo, CPU, {batchnorm} BatchNorm)",
                        r["ddp"][key],
                        "x",
                        f"1 process ({one:.1f} images/s)",
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
    "swap": swap_figures,
    "tune": tune_figures,
    "flow": flow_figures,
    "repro": repro_figures,
    "seed_spread": seed_spread_figures,
    "monitoring": monitoring_figures,
    "scale": scale_figures,
}


def merge_report(previous: dict, new: dict) -> dict:
    """`new` (some benchmarks, run now) over `previous` (the last report): the benchmarks run now replace
    their entries and figures, the others keep theirs, and every entry says when and where it was measured,
    so a partial run never erases the figures it did not measure nor passes them off as its own."""

    def measured(report: dict) -> dict:
        return {"cpu": report["machine"]["cpu"], "date": report["machine"]["date"]}

    def entry(name: str) -> dict:
        if name in new["benchmarks"]:
            return {**new["benchmarks"][name], "measured": measured(new)}
        run = previous["benchmarks"][name]
        return {**run, "measured": run.get("measured", measured(previous))}

    # in the report's order, so a partial run leaves each benchmark's rows where they were
    order = [*previous["benchmarks"], *(name for name in new["benchmarks"] if name not in previous["benchmarks"])]
    benchmarks = {name: entry(name) for name in order}
    figures = [
        f
        for name in order
        for f in (new if name in new["benchmarks"] else previous)["figures"]
        if f["benchmark"] == name
    ]
    return {
        **new,
        "benchmarks": benchmarks,
        "total_seconds": sum(run["seconds"] for run in benchmarks.values()),
        "figures": figures,
    }


def _add_targets(table: dict[str, dict], report: dict) -> dict[str, dict]:
    """`table` with each benchmark of a full `report` filed under the CPU (and date) it was measured on."""
    if report.get("quick"):
        return table
    machine = report["machine"]
    for benchmark, run in report["benchmarks"].items():
        where = run.get("measured", {"cpu": machine["cpu"], "date": machine["date"]})
        targets = [
            {key: f[key] for key in ("name", "value", "unit", "target", "met")}
            for f in report["figures"]
            if f["benchmark"] == benchmark and f["met"] is not None
        ]
        per_cpu = table.setdefault(where["cpu"], {})
        per_cpu[benchmark] = {"date": where["date"], "status": run["status"], "targets": targets}
    return table


def targets_by_cpu(previous: dict | None, report: dict) -> dict[str, dict]:
    """Every kind of CPU's latest verdicts, benchmark by benchmark: `report`'s over those `previous` kept (or,
    for a report from before this table, its own figures), so a run on one kind of CPU never hides how
    another kind fared. Quick runs count for nothing."""
    if previous is None:
        table: dict[str, dict] = {}
    elif "targets_by_cpu" in previous:
        table = {cpu: dict(benchmarks) for cpu, benchmarks in previous["targets_by_cpu"].items()}
    else:
        table = _add_targets({}, previous)
    return _add_targets(table, report)


def targets_by_cpu_rows(report: dict) -> list[str]:
    """A table: per kind of CPU, how many targets its latest runs met, and which they missed."""
    table = report.get("targets_by_cpu") or {}
    if not table:
        return []
    rows = [
        "Targets on each kind of CPU measured (each benchmark's latest full run there):",
        "",
        "| CPU | measured | targets met | not met |",
        "|---|---|---|---|",
    ]
    for cpu, benchmarks in table.items():
        targets = [(name, t) for name, run in benchmarks.items() for t in run["targets"]]
        missed = [f"{name}: {t['name']}" for name, t in targets if not t["met"]]
        failed = [f"{name} ({run['status']})" for name, run in benchmarks.items() if run["status"] != "ok"]
        dates = sorted(run["date"][:10] for run in benchmarks.values())
        span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        met = sum(1 for _, t in targets if t["met"])
        rows.append(f"| {cpu} | {span} | {met} of {len(targets)} | {'; '.join(missed + failed) or 'none'} |")
    return rows


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


def machine_line(report: dict) -> str:
    """Where and when: the CPU with the instruction sets its kernels use, cores, Python, quick or full; for a
    report merged from several runs, that it is one, before the latest run's line."""
    machine = report["machine"]
    isa = machine.get("cpu_instruction_sets")
    isa_text = f" ({', '.join(isa)})" if isa else " (instruction sets not recorded)"
    line = (
        f"Measured {machine['date']} on {machine['cpu']}{isa_text}, {machine['cores']} cores, "
        f"Python {machine['python']}{' (quick mode: short runs, smoke figures only)' if report['quick'] else ''}."
    )
    runs = {tuple(run["measured"].values()) for run in report.get("benchmarks", {}).values() if "measured" in run}
    if len(runs) > 1:
        return (
            f"Figures from {len(runs)} runs: each benchmark's date and CPU are in bench/RESULTS.md (compare "
            f"figures of one run only). The latest run: {line[0].lower()}{line[1:]}"
        )
    return line


def _measured(run: dict, machine: dict) -> str:
    where = run.get("measured", {"cpu": machine["cpu"], "date": machine["date"]})
    return f"{where['date']}, {where['cpu']}"


def render_markdown(report: dict) -> str:
    machine = report["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items() if version)
    rows = [
        f"| {f['benchmark']} | {f['name']} | {_value(f)} | {f['baseline']} | {f['target']} | {f['verdict']} |"
        for f in report["figures"]
    ]
    runs = [
        f"| {name} | {run['seconds']:.0f} s | {run['status']} | {_measured(run, machine)} | "
        f"[{name}](results/{name}.md) |"
        for name, run in report["benchmarks"].items()
    ]
    failing = [f for f in report["figures"] if f["met"] is False]
    by_cpu = targets_by_cpu_rows(report)
    summary = (
        "Every target met."
        if not failing
        else "Targets not met: " + "; ".join(f"{f['benchmark']}: {f['name']}" for f in failing) + "."
    )
    return "\n".join(
        [
            "# Benchmark results",
            "",
            f"{machine_line(report)} {versions}.",
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
            *([*by_cpu, ""] if by_cpu else []),
            "| benchmark | wall time | status | measured | details |",
            "|---|---|---|---|---|",
            *runs,
            f"| total | {report['total_seconds'] / 60:.1f} min | | | |",
            "",
        ]
    )


README_BEGIN = "<!-- bench:begin (written by `python -m bench --readme` from bench/RESULTS.json; do not edit) -->"
README_END = "<!-- bench:end -->"


class ReadmeMarkersMissing(ValueError):
    """README.md lacks the markers between which the benchmark table is written."""


def render_readme_table(report: dict) -> str:
    """The README's benchmark figures: every figure of the report, as RESULTS.json holds it."""
    rows = [
        f"| {f['benchmark']} | {f['name']} | {_value(f)} | {f['target']} | {f['verdict']} |" for f in report["figures"]
    ]
    failing = [f"{f['benchmark']}: {f['name']}" for f in report["figures"] if f["met"] is False]
    by_cpu = targets_by_cpu_rows(report)
    return "\n".join(
        [
            f"{machine_line(report)} Total {report['total_seconds'] / 60:.1f} min; baselines and details in "
            "[bench/RESULTS.md](bench/RESULTS.md).",
            "",
            "| benchmark | figure | value | target | verdict |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "Not met: " + "; ".join(failing) + "." if failing else "Every target met.",
            *(["", *by_cpu] if by_cpu else []),
        ]
    )


def with_readme_table(readme: str, report: dict) -> str:
    """`readme` with the text between README_BEGIN and README_END replaced by the report's table."""
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin < 0 or end < begin:
        raise ReadmeMarkersMissing(f"README.md needs the lines {README_BEGIN!r} and {README_END!r}, in that order")
    return readme[: begin + len(README_BEGIN)] + "\n" + render_readme_table(report) + "\n" + readme[end:]
