"""What `train.reproducible` costs: training images/s with the pinned math vs without, on the default data.

The caps are read when each library starts, so each setting needs its own process: two worker processes
(one started with the pinned environment, one without any cap) each load the data and the default recipe's
model once, then take turns, `rounds` times, at timing `steps` real training steps (the stage's loop:
uint8 batches, normalisation, augmentation, AdamW, schedule). Only one computes at a time; load from
other processes hits both alike. Writes bench/results/repro.{json,md}.

Usage: python -m bench.repro_bench [--quick]
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
SETTINGS = ("off", "on")


def worker_env(setting: str, num_threads: int | None) -> dict[str, str]:
    """A clean environment (no caps inherited), plus the pinned variables for `on`."""
    env = {k: v for k, v in tool_env().items() if k not in (*CAP_VARIABLES, "MKL_NUM_THREADS", MARKER)}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if setting == "on":
        env.update(pinning(True, num_threads).env)
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

    params = default_params(reproducible=setting == "on")
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
    steps, rounds = (3, 2) if quick else (20, 5)
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
            for setting in SETTINGS if index % 2 == 0 else reversed(SETTINGS):  # neither always goes first
                rates[setting].append(measure(workers[setting]))
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait(timeout=120)
    ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    result = {
        "steps_per_measure": steps,
        "rounds": rounds,
        "images_per_s": rates,
        "median_images_per_s": {s: statistics.median(v) for s, v in rates.items()},
        "ratio_on_off_per_round": ratios,
        "ratio_on_off": statistics.median(ratios),
        "environments": environments,
    }
    write_results("repro", result, markdown(result, machine()))
    return result


def markdown(result: dict, host: dict) -> str:
    on, off = result["environments"]["on"], result["environments"]["off"]
    ratio = result["ratio_on_off"]
    change = f"{1 - ratio:.0%} slower" if ratio < 1 else f"{ratio - 1:.0%} faster"
    return "\n".join(
        [
            "# Cost of train.reproducible (CPU)",
            "",
            f"{host['cpu']}, {host['cores']} cores usable; ISA flags: {' '.join(on['cpu']['isa'])}. Default recipe "
            f"on the default data, {result['steps_per_measure']} training steps per measure, {result['rounds']} "
            "interleaved rounds after one warm-up each, one process per setting (the caps act at library start).",
            "",
            "| setting | kernels (ATen) | caps | threads | images/s (median) | rounds |",
            "|---|---|---|---|---|---|",
            *(
                f"| {name} | {env['aten_cpu_capability']} | "
                f"{', '.join(f'{k}={v}' for k, v in env['caps'].items() if v) or 'none'} | {env['threads']} | "
                f"{result['median_images_per_s'][name]:.1f} | "
                f"{', '.join(f'{v:.0f}' for v in result['images_per_s'][name])} |"
                for name, env in (("off", off), ("on", on))
            ),
            "",
            f"On / off, median of the per-round ratios: **{result['ratio_on_off']:.2f}** "
            f"({change} with reproducible on); per round: "
            f"{', '.join(f'{r:.2f}' for r in result['ratio_on_off_per_round'])}.",
            "",
            "The machine was shared with other work while this ran: read the ratio, not the absolute rates. "
            "Measured on this CPU only: on a CPU whose AVX-512 units are twice as wide as its AVX2 ones (many "
            "Intel Xeons) the AVX2 cap can cost more.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        serve_measurements(args.worker, args.steps)
        return 0
    result = run(args.quick)
    print(f"reproducible on/off: {result['ratio_on_off']:.2f} ({result['median_images_per_s']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
