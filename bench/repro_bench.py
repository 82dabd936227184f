"""What `train.reproducible` costs, and whether it delivers across CPUs.

Cost: training images/s with the pinned math (`on`) and with portable kernels (`portable`) vs without
(`off`), on the default data.

The caps are read when each library starts, so each setting needs its own process: two worker processes
(one started with the pinned environment, one without any cap) each load the data and the default recipe's
model once, then take turns, `rounds` times, at timing `steps` real training steps (the stage's loop:
uint8 batches, normalisation, augmentation, AdamW, schedule). Only one computes at a time; load from
other processes hits all alike. Writes bench/results/repro.{json,md}.

Delivery: `--record metrics/train_run.json` adds a default training's run record (CPU, mode, model
sha256, data version, params digest) to bench/results/repro_runs.json; the report groups the records by
what must match (data version, params digest, mode) and says whether the CPUs gave the same bytes. A
run on another kind of CPU is the only test of "same bytes on another CPU", so every one is kept.

`--probe` makes such records cheaply: a short training (PROBE_EPOCHS of the default recipe on the
default data) in each reproducible mode, run by the train stage itself in a scratch folder, recorded.

Usage: python -m bench.repro_bench [--quick] | --record RUN_RECORD.json | --probe
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import machine, write_results
from transferline.env import tool_env
from transferline.model.reproducibility import MARKER, pinning
from transferline.model.run_environment import CAP_VARIABLES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("off", "on", "portable")
REPRODUCIBLE = {"off": False, "on": True, "portable": "portable"}  # train.reproducible per setting
RUNS_FILE = "repro_runs.json"
PROBE_EPOCHS = 2


def worker_env(setting: str, num_threads: int | None) -> dict[str, str]:
    """A clean environment (no caps inherited), plus the pinned variables for `on`."""
    env = {k: v for k, v in tool_env().items() if k not in (*CAP_VARIABLES, "MKL_NUM_THREADS", MARKER)}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if setting != "off":
        env.update(pinning(REPRODUCIBLE[setting], num_threads).env)
    return env


def serve_measurements(setting: str, steps: int) -> None:
    """Worker: build the default recipe once, then time `steps` training steps per line read from stdin."""
    import torch

    from bench.train_bench import default_params, load_default_data
    from transferline.model.backbones import build_model
    from transferline.model.run_environment import training_environment
    from transferline.model.strategies import make_plan
    from transferline.model.training import (
        BatchSource,
        build_optimizer,
        build_scheduler,
        configure_threads,
        resolve_runtime,
        train_one_epoch,
    )

    params = default_params(reproducible=REPRODUCIBLE[setting])
    dataset, spec, splits = load_default_data()
    runtime = resolve_runtime(params)
    configure_threads(params, runtime)
    torch.manual_seed(params.seed)
    model, _ = build_model(params.backbone, len(dataset["classes"]), params.pretrained, params.weights_path)
    model.to(memory_format=torch.channels_last if runtime.channels_last else torch.contiguous_format)
    plan = make_plan(model, params)
    plan.apply(model, 0)
    optimizer = build_optimizer(plan, params)
    steps = min(steps, len(splits["train"]) // params.batch_size)
    scheduler = build_scheduler(optimizer, params, steps * 1000)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    generator = torch.Generator().manual_seed(0)
    source = BatchSource(splits["train"], runtime.device)
    pin = pinning(params.reproducible, params.num_threads)
    print(json.dumps({"ready": True, "environment": training_environment(pin, "cpu"), "steps": steps}), flush=True)
    for _ in sys.stdin:
        stats = train_one_epoch(
            model, source, spec, params, runtime, optimizer, scheduler, scaler, criterion, generator, steps, setting
        )
        print(json.dumps({"images_per_s": stats["images_per_s"]}), flush=True)


def start_worker(setting: str, steps: int) -> tuple[subprocess.Popen, dict]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.repro_bench", "--worker", setting, "--steps", str(steps)],
        cwd=PROJECT_ROOT,
        env=worker_env(setting, None),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, json.loads(process.stdout.readline())


def measure(process: subprocess.Popen) -> float:
    process.stdin.write("go\n")
    process.stdin.flush()
    return json.loads(process.stdout.readline())["images_per_s"]


def run(quick: bool = False) -> dict:
    steps, rounds = (3, 2) if quick else (10, 5)
    workers, environments = {}, {}
    try:
        for setting in SETTINGS:
            workers[setting], ready = start_worker(setting, steps)
            environments[setting] = ready["environment"]
            steps = ready["steps"]
        for setting in SETTINGS:
            measure(workers[setting])  # warm-up: oneDNN primitives, allocator; not counted
        rates: dict[str, list[float]] = {s: [] for s in SETTINGS}
        for index in range(rounds):
            order = SETTINGS[index % len(SETTINGS) :] + SETTINGS[: index % len(SETTINGS)]  # each goes first in turn
            for setting in order:
                rates[setting].append(measure(workers[setting]))
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait(timeout=300)
    ratios = {
        name: [value / off for value, off in zip(rates[name], rates["off"], strict=True)] for name in ("on", "portable")
    }
    result = {
        "steps_per_measure": steps,
        "rounds": rounds,
        "images_per_s": rates,
        "median_images_per_s": {s: statistics.median(v) for s, v in rates.items()},
        "ratio_on_off_per_round": ratios["on"],
        "ratio_on_off": statistics.median(ratios["on"]),
        "ratio_portable_off_per_round": ratios["portable"],
        "ratio_portable_off": statistics.median(ratios["portable"]),
        "environments": environments,
        "runs": load_runs(),
    }
    write_results("repro", result, markdown(result, machine()))
    return result


def load_runs() -> list[dict]:
    from bench.common import results_dir

    path = results_dir() / RUNS_FILE
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def record_run(run_record: Path) -> dict:
    """Add a training's run record to bench/results/repro_runs.json (once per CPU, mode and inputs)."""
    from bench.common import results_dir
    from transferline import atomic

    record = json.loads(run_record.read_text())
    environment = record["environment"]
    entry = {
        "cpu": environment["cpu"]["model"],
        "isa": environment["cpu"]["isa"],
        "mode": "portable" if environment.get("reproducible") == "portable" else environment["reproducible"],
        "pinned": environment["pinned"],
        "threads": environment["threads"],
        "versions": environment["versions"],
        "data_version": record["data_version"],
        "params_digest": record["params_digest"],
        "code_digest": record.get("code_digest"),  # absent from records written before it was kept
        "model_sha256": record["model_sha256"],
    }
    runs = [r for r in load_runs() if (*_group(r), r["cpu"]) != (*_group(entry), entry["cpu"])]
    runs.append(entry)
    atomic.write_json(results_dir() / RUNS_FILE, {"runs": runs})
    refresh_report()
    return entry


def refresh_report() -> None:
    """Rewrite repro.md's table of runs from repro_runs.json, keeping the cost figures of the last measure."""
    from bench.common import results_dir
    from transferline import atomic

    path = results_dir() / "repro.json"
    if not path.is_file():
        return
    result = json.loads(path.read_text())
    result["runs"] = load_runs()
    atomic.write_json(path, result)
    atomic.write_text(path.with_suffix(".md"), markdown(result, result["machine"]))


def probe(modes: tuple[str, ...] = ("on", "portable")) -> list[dict]:
    """Train PROBE_EPOCHS of the default recipe per mode with `python -m stages.train` (pinned by the stage
    itself) in a scratch folder that links the code and the prepared data, and record each run."""
    import tempfile

    import yaml

    entries = []
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix=f"repro-probe-{mode}-") as scratch:
            root = Path(scratch)
            for name in ("stages", "transferline"):
                (root / name).symlink_to(PROJECT_ROOT / name)
            (root / "data").mkdir()
            (root / "data" / "prepared").symlink_to(PROJECT_ROOT / "data" / "prepared")
            params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
            params["train"].update(reproducible=REPRODUCIBLE[mode], epochs=PROBE_EPOCHS, warmup_epochs=0.5)
            (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            env = {k: v for k, v in tool_env().items() if k not in (*CAP_VARIABLES, "MKL_NUM_THREADS", MARKER)}
            env.update(PYTHONPATH=str(root), OMP_WAIT_POLICY="PASSIVE")
            subprocess.run([sys.executable, "-m", "stages.train"], cwd=root, env=env, check=True)
            entries.append(record_run(root / "metrics" / "train_run.json"))
    return entries


def _group(run: dict) -> tuple:
    """Runs that must give the same bytes: same data, params, mode and training code."""
    return run["data_version"], run["params_digest"], str(run["mode"]), run.get("code_digest")


def runs_markdown(runs: list[dict]) -> list[str]:
    if not runs:
        return ["No training runs recorded yet (`python -m bench.repro_bench --record metrics/train_run.json`)."]
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(_group(run), []).append(run)
    lines = [
        "| data version | params digest | code digest | train.reproducible | CPU | torch | model.pt sha256 "
        "| same bytes as the first CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (data, digest, mode, code), members in groups.items():
        first = members[0]["model_sha256"]
        for run in members:
            same = "(first)" if run is members[0] else ("**yes**" if run["model_sha256"] == first else "**no**")
            lines.append(
                f"| {data} | {digest} | {code[:16] if code else 'not kept'} | {mode} | {run['cpu']} | "
                f"{run['versions'].get('torch')} | "
                f"`{run['model_sha256'][:16]}` | {same} |"
            )
    return lines


def markdown(result: dict, host: dict) -> str:
    envs = result["environments"]
    return "\n".join(
        [
            "# Cost of train.reproducible (CPU)",
            "",
            f"{host['cpu']}, {host['cores']} cores usable; ISA flags: {' '.join(envs['on']['cpu']['isa'])}. Default "
            f"recipe on the default data, {result['steps_per_measure']} training steps per measure, "
            f"{result['rounds']} interleaved rounds after one warm-up each, one process per setting (the caps act "
            "at library start).",
            "",
            "| setting | convolutions | kernels (ATen) | caps | threads | images/s (median) | rounds |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {name} | {env.get('convolutions', 'oneDNN')} | {env['aten_cpu_capability']} | "
                f"{', '.join(f'{k}={v}' for k, v in env['caps'].items() if v) or 'none'} | {env['threads']} | "
                f"{result['median_images_per_s'][name]:.1f} | "
                f"{', '.join(f'{v:.0f}' for v in result['images_per_s'][name])} |"
                for name, env in envs.items()
            ),
            "",
            f"Against off, median of the per-round ratios: on **{result['ratio_on_off']:.2f}**, portable "
            f"**{result['ratio_portable_off']:.2f}** (per round: on "
            f"{', '.join(f'{r:.2f}' for r in result['ratio_on_off_per_round'])}; portable "
            f"{', '.join(f'{r:.2f}' for r in result['ratio_portable_off_per_round'])}).",
            "",
            "The machine was shared with other work while this ran: read the ratios, not the absolute rates.",
            "",
            "## Same bytes on another CPU?",
            "",
            "Default trainings recorded on each CPU this project has run on (bench/results/repro_runs.json). Rows "
            "of one group had the same data, params, mode and training code (the digest of the project modules "
            "the run imported), so they must have the same model.pt to count as reproduced.",
            "",
            *runs_markdown(result.get("runs", [])),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help="add this run record (metrics/train_run.json) to the CPU table")
    parser.add_argument("--probe", action="store_true", help=f"record {PROBE_EPOCHS}-epoch trainings in each mode")
    args = parser.parse_args(argv)
    if args.worker:
        serve_measurements(args.worker, args.steps)
        return 0
    if args.probe:
        for entry in probe():
            print(f"recorded {entry['cpu']} ({entry['mode']}): {entry['model_sha256']}")
        return 0
    if args.record:
        entry = record_run(args.record)
        print(f"recorded {entry['cpu']} ({entry['mode']}): {entry['model_sha256']}")
        return 0
    result = run(args.quick)
    print(
        f"reproducible on/off: {result['ratio_on_off']:.2f}, portable/off: {result['ratio_portable_off']:.2f} "
        f"({result['median_images_per_s']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
