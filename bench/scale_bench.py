"""What scaling out costs and buys: search trials per minute with 1 and 2 worker processes on PostgreSQL vs
SQLite, `dvc push`/`dvc pull` throughput to an S3-compatible remote (moto's server on loopback), and
data-parallel training (DDP, torchrun, gloo) on 2 processes vs 1.

Trials: generated data (3 classes, 32 px) through the real prepare stage; each worker is its own process
(as a cluster worker is) that loads the data and the cached features, waits for a common start signal,
then runs its share of the study's trial slots through transferline.search.tuning.run_trial. The clock
runs from the signal to the last trial's end, so process start-up is not counted. Two kinds of trial:
head-only (a head fit of ~0.3 s: the storage's per-trial cost shows) and fine-tuning (compute-bound).
The PostgreSQL server is a local one (transferline/cluster/postgres.py) on loopback.

Remote: a DVC repository with random (incompressible) files, pushed to a fresh bucket, then its cache
and workspace removed and pulled back; MB/s = bytes of data / seconds of the command.

DDP: the train stage itself (`python -m stages.train`, as `dvc repro` runs it) on the same generated data
and recipe with train.distributed.nproc 1 and 2, in turns (1, 2, 2, 1, ...). The figure is the stage's own
training images/s (median over epochs, all processes together, start-up and validation excluded). Both
settings use the machine's cores alike: reproducible mode pins 2 threads for one process, 1 each for two.

    python -m bench.scale_bench [--quick] [--only trials|remote|ddp ...]   # writes bench/results/scale.{json,md}

`--only` runs those parts and keeps the other parts' figures from the last scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import machine, results_dir, write_results
from transferline.env import tool_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("red", "green", "blue")
HEAD_ONLY_SPACE = {"train.probe_l2": {"type": "float", "low": 1.0e-3, "high": 1.0, "log": True}}
FINE_TUNE_SPACE = {
    "train.strategy": ["partial"],
    "train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
}
PARTS = ("trials", "remote", "ddp")
TRAIN = {"epochs": 2, "warmup_epochs": 0.0, "batch_size": 16, "early_stopping_patience": None, "device": "cpu"}


# ---------------------------------------------------------------- trials per minute


def make_study_inputs(root: Path, per_class: int, image_size: int = 32) -> Path:
    """Generated images through the prepare stage, and params.yaml with a small train recipe."""
    from stages import prepare
    from transferline.config import PrepareParams, PreprocessParams

    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / "raw" / name).mkdir(parents=True)
        for item in range(per_class):
            from PIL import Image

            pixels = rng.integers(0, 90, (image_size, image_size, 3), dtype=np.uint8)
            pixels[..., label] += 140
            Image.fromarray(pixels).save(root / "raw" / name / f"{item}.png")
    prepare.run(
        PrepareParams(min_per_class=3),
        PreprocessParams(image_size=image_size),
        root / "raw",
        root / "prepared",
        root / "prepare.json",
        workers=1,
    )
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["train"].update(TRAIN)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def study_config(root: Path, kind: str, storage: str, name: str, trials: int) -> dict:
    space = root / f"space-{kind}.yaml"
    space.write_text(yaml.safe_dump(HEAD_ONLY_SPACE if kind == "head_only" else FINE_TUNE_SPACE))
    train = {"strategy": "feature_extraction"} if kind == "head_only" else {}
    params = root / f"params-{kind}.yaml"
    base = yaml.safe_load((root / "params.yaml").read_text())
    base["train"].update(train)
    params.write_text(yaml.safe_dump(base, sort_keys=False))
    return {
        "space_file": str(space), "params_file": str(params), "prepared_dir": str(root / "prepared"),
        "work_dir": str(root / "tuning"), "storage": storage, "study_name": name, "sampler": "random",
        "trials": trials, "pruner": "none",
    }  # fmt: skip


def worker_main(config_json: str, slots_json: str, signal_dir: str) -> None:
    """One worker process: get ready (data, features, storage), wait for the start signal, run the slots."""
    import torch

    from transferline.search.tuning import StudyConfig, open_study, run_trial, runner_for

    torch.set_num_threads(1)  # one core per worker: 1 vs 2 workers is 1 vs 2 cores
    config = StudyConfig(**json.loads(config_json))
    runner = runner_for(config)
    runner.prepare_features()
    open_study(config, runner.space, storage=runner.storage(config))
    folder = Path(signal_dir)
    (folder / f"ready-{os.getpid()}").touch()
    while not (folder / "go").exists():
        time.sleep(0.01)
    states = [run_trial(config, slot, runner)["state"] for slot in json.loads(slots_json)]
    (folder / f"done-{os.getpid()}.json").write_text(json.dumps({"end": time.time(), "states": states}))


def timed_study(config: dict, workers: int, scratch: Path) -> dict:
    """Trials per minute of `workers` processes sharing the study's slots (start-up excluded)."""
    signal_dir = Path(tempfile.mkdtemp(dir=scratch))
    slots = list(range(config["trials"]))
    processes = []
    for index in range(workers):  # one after another: the first creates the study and the feature cache
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.scale_bench",
                    "--worker",
                    json.dumps(config),
                    json.dumps(slots[index::workers]),
                    str(signal_dir),
                ],
                cwd=PROJECT_ROOT,
                env={**tool_env(), "OMP_NUM_THREADS": "1"},
            )
        )
        while len(list(signal_dir.glob("ready-*"))) <= index:
            if any(process.poll() not in (None, 0) for process in processes):
                raise RuntimeError(f"a trial worker failed before it got ready: {config['study_name']}")
            time.sleep(0.05)
    start = time.time()
    (signal_dir / "go").touch()
    for process in processes:
        if process.wait() != 0:
            raise RuntimeError(f"a trial worker failed: {config['study_name']}")
    done = [json.loads(path.read_text()) for path in signal_dir.glob("done-*.json")]
    seconds = max(record["end"] for record in done) - start
    states = [state for record in done for state in record["states"]]
    return {
        "workers": workers,
        "trials": len(states),
        "complete": states.count("complete"),
        "seconds": seconds,
        "trials_per_minute": 60.0 * len(states) / seconds,
    }


def trials_per_minute(scratch: Path, quick: bool) -> dict:
    from transferline.cluster.postgres import Postgres
    from transferline.cluster.processes import free_port

    root = make_study_inputs(scratch / "study", per_class=12 if quick else 40)
    counts = {"head_only": 8 if quick else 40, "fine_tune": 2 if quick else 8}
    pg_home = Path(tempfile.mkdtemp(prefix="transferline-bench-pg-"))  # under /tmp: reachable by `postgres`
    pg_home.chmod(0o755)
    postgres = Postgres(pg_home / "pg", free_port())
    postgres.init()
    postgres.start()
    try:
        postgres.create_database("optuna")
        storages = {"postgresql": postgres.url("optuna"), "sqlite": f"sqlite:///{root / 'study.db'}"}
        results: dict = {}
        for kind, trials in counts.items():
            for backend, url in storages.items():
                for workers in (1, 2):
                    name = f"{kind}-{backend}-{workers}"
                    results.setdefault(kind, {}).setdefault(backend, {})[str(workers)] = timed_study(
                        study_config(root, kind, url, name, trials), workers, scratch
                    )
                    print(f"   {name}: {results[kind][backend][str(workers)]['trials_per_minute']:.1f} trials/min")
    finally:
        postgres.stop()
        shutil.rmtree(pg_home, ignore_errors=True)
    return results


# ---------------------------------------------------------------- DVC remote throughput


def remote_throughput(scratch: Path, quick: bool) -> dict:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from transferline.cluster.processes import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    files, megabytes = (4, 4) if quick else (16, 16)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    env = {**tool_env(), **credentials}
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, **_boto_credentials(credentials)).create_bucket(Bucket="bench")
        repo = scratch / "remote-repo"
        (repo / "data").mkdir(parents=True)
        rng = np.random.default_rng(0)
        for index in range(files):
            (repo / "data" / f"part-{index:02d}.bin").write_bytes(rng.bytes(megabytes * 1024 * 1024))
        for args in (
            ["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
            ["dvc", "add", "-q", "data"], ["dvc", "remote", "add", "-d", "s3", "s3://bench/store"],
            ["dvc", "remote", "modify", "s3", "endpointurl", endpoint],
        ):  # fmt: skip
            subprocess.run(args, cwd=repo, env=env, check=True, capture_output=True)
        total_mb = files * megabytes
        push_s = _timed(["dvc", "push", "-q"], repo, env)
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(repo / "data")
        pull_s = _timed(["dvc", "pull", "-q"], repo, env)
        if sum(path.stat().st_size for path in (repo / "data").iterdir()) != total_mb * 1024 * 1024:
            raise RuntimeError("dvc pull did not bring every byte back")
    finally:
        server.stop()
    return {
        "files": files,
        "megabytes": total_mb,
        "push_s": push_s,
        "pull_s": pull_s,
        "push_mb_s": total_mb / push_s,
        "pull_mb_s": total_mb / pull_s,
    }


def _boto_credentials(credentials: dict) -> dict:
    return {
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
        "region_name": credentials["AWS_DEFAULT_REGION"],
    }


def _timed(args: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


# ---------------------------------------------------------------- data-parallel training

DDP_TRAIN = {"strategy": "full", "warmup_epochs": 0.0, "batch_size": 32, "early_stopping_patience": None}


# the settings compared: name -> (processes, train.distributed.batchnorm, train.num_threads); reproducible mode
# gives one process 2 threads and each of two processes 1: "1_one_thread" shows what the second thread buys
DDP_SETTINGS = {
    "1": (1, "global", None),
    "1_one_thread": (1, "global", 1),
    "2": (2, "global", None),
    "2_per_process": (2, "per_process", None),
}


def ddp_throughput(scratch: Path, quick: bool) -> dict:
    """Training images/s of the train stage with 1 and 2 processes (BatchNorm global or per process), same data
    and recipe, in turns (the order reversed every other round)."""
    image_size, per_class, epochs, rounds = (32, 40, 2, 1) if quick else (64, 120, 4, 3)
    data = make_study_inputs(scratch / "ddp-data", per_class, image_size)
    train_images = int(json.loads((data / "prepared" / "dataset.json").read_text())["splits"]["train"])
    runs: dict[str, list[dict]] = {name: [] for name in DDP_SETTINGS}
    load_before = os.getloadavg()[0]
    for round_index in range(rounds):
        for name in DDP_SETTINGS if round_index % 2 == 0 else reversed(DDP_SETTINGS):
            runs[name].append(train_stage_run(scratch / f"ddp-{name}-{round_index}", data, name, epochs))
            print(f"   ddp {name}: {runs[name][-1]['images_per_s']:.1f} images/s, {runs[name][-1]['wall_s']:.0f} s")
    summary = {}
    for name, found in runs.items():
        rates = [run["images_per_s"] for run in found]
        summary[name] = {
            "processes": DDP_SETTINGS[name][0],
            "batchnorm": DDP_SETTINGS[name][1],
            "threads_per_process": DDP_SETTINGS[name][2] or 2 // DDP_SETTINGS[name][0],
            "images_per_s": statistics.median(rates),
            "images_per_s_values": rates,
            "wall_s": statistics.median(run["wall_s"] for run in found),
        }
    one = summary["1"]["images_per_s"]
    return {
        "image_size": image_size,
        "train_images": train_images,
        "epochs": epochs,
        "batch_size": DDP_TRAIN["batch_size"],
        "backend": "gloo",
        "runs": summary,
        "ratio": summary["2"]["images_per_s"] / one,
        "ratio_per_process_batchnorm": summary["2_per_process"]["images_per_s"] / one,
        "ratio_one_thread": summary["1_one_thread"]["images_per_s"] / one,
        "load_average": [load_before, os.getloadavg()[0]],  # other work on the machine, before and after
    }


def train_stage_run(root: Path, data: Path, setting: str, epochs: int) -> dict:
    """`python -m stages.train` on the generated data with one DDP_SETTINGS entry: its images/s and wall time."""
    nproc, batchnorm, threads = DDP_SETTINGS[setting]
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(data / "prepared", target_is_directory=True)
    train = {
        **DDP_TRAIN,
        "epochs": epochs,
        "num_threads": threads,
        "distributed": {"nproc": nproc, "batchnorm": batchnorm},
    }
    (root / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=root,
        env={**tool_env(), "PYTHONPATH": str(PROJECT_ROOT), "OMP_WAIT_POLICY": "PASSIVE"},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the train stage ({setting}) failed ({done.returncode}): {done.stderr[-2000:]}")
    wall = time.perf_counter() - start
    metrics = json.loads((root / "metrics" / "train.json").read_text())
    return {"images_per_s": metrics["train_images_per_s"], "wall_s": wall}


# ---------------------------------------------------------------- report


PART_NAMES = {"trials": "search trials", "remote": "DVC remote", "ddp": "DDP training"}
QUICK_NOTE = "quick run: a smoke test of the benchmark, not figures to quote"


def markdown(results: dict) -> str:
    lines = [
        "# Scaling out: search workers on PostgreSQL vs SQLite, DVC remote throughput, DDP training",
        "",
        "Measured on:",
        "",
        *(
            f"- {PART_NAMES[part]}: {where['cpu']}, {where['cores']} cores, {where['date'][:10]}"
            f"{f' ({QUICK_NOTE})' if where['quick'] else ''}"
            for part, where in results["measured"].items()
        ),
        "",
        "Each search worker is a process on one core; the clock starts once every worker has loaded the data.",
        "",
    ]
    if "trials" in results:
        lines += ["| trials | storage | 1 worker | 2 workers | 2 vs 1 |", "|---|---|---|---|---|"]
        for kind, label in (("head_only", "head-only"), ("fine_tune", "fine-tuning")):
            for backend, runs in results["trials"][kind].items():
                one, two = runs["1"], runs["2"]
                lines.append(
                    f"| {label} ({one['trials']}) | {backend} | {one['trials_per_minute']:.1f} /min "
                    f"| {two['trials_per_minute']:.1f} /min "
                    f"| {two['trials_per_minute'] / one['trials_per_minute']:.2f}x |"
                )
        lines.append("")
    if "remote" in results:
        remote = results["remote"]
        lines += [
            "| DVC remote (S3 API, moto on loopback) | data | seconds | MB/s |",
            "|---|---|---|---|",
            f"| `dvc push` | {remote['files']} files, {remote['megabytes']} MB | {remote['push_s']:.1f} | "
            f"{remote['push_mb_s']:.1f} |",
            f"| `dvc pull` (empty cache) | {remote['files']} files, {remote['megabytes']} MB | "
            f"{remote['pull_s']:.1f} | {remote['pull_mb_s']:.1f} |",
            "",
        ]
    cores = results["measured"].get("ddp", {}).get("cores")
    lines += ["## Distributed data-parallel training (DDP)", "", *ddp_markdown(results.get("ddp"), cores)]
    lines += [
        "Two workers on 2 cores share the cores every other process also uses: the 2-vs-1 ratio is a ceiling "
        "of 2x only on otherwise idle cores. The loopback remote measures DVC's own cost (hashing, transfer "
        "bookkeeping), not a network.",
        "",
    ]
    return "\n".join(lines)


def ddp_markdown(ddp: dict | None, cores: int | None) -> list[str]:
    if ddp is None:
        return ["Not measured yet: `python -m bench.scale_bench --only ddp`.", ""]
    one = ddp["runs"]["1"]
    labels = {"global": "global batch (default)", "per_process": "each process's rows"}
    rows = [
        f"| {run['processes']} x {run['threads_per_process']} "
        f"| {'-' if run['processes'] == 1 else labels[run['batchnorm']]} "
        f"| {run['images_per_s']:.1f} ({', '.join(f'{value:.0f}' for value in run['images_per_s_values'])}) "
        f"| {run['images_per_s'] / one['images_per_s']:.2f}x | {run['wall_s']:.0f} s |"
        for run in ddp["runs"].values()
    ]
    lines = [
        f"The train stage (`python -m stages.train` with train.distributed.nproc 1 or 2: torchrun and gloo on "
        f"CPU), MobileNetV2 fine-tuned in full on {ddp['train_images']} generated {ddp['image_size']} px images, "
        f"global batch {ddp['batch_size']}, {ddp['epochs']} epochs. images/s: training images per second, all "
        f"processes together, median over epochs, then over the {len(one['images_per_s_values'])} run(s) of each "
        "setting (in brackets), taken in turns; wall time: the whole stage, start-up included.",
        "",
        "| processes x threads | BatchNorm statistics | images/s (runs) | vs 1 x 2 | wall time |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    if "load_average" in ddp:
        lines += [
            f"The machine's 1-minute load average went from {ddp['load_average'][0]:.1f} to "
            f"{ddp['load_average'][1]:.1f} during the runs: other work shared the {cores} cores, so single runs "
            "vary a lot (see the brackets); only differences well beyond that spread mean something.",
            "",
        ]
    measured = (
        f"On {cores} cores DDP can only share the same cores out, so no gain was expected. Measured: with BatchNorm "
        "over the global batch (the default, which makes 2 processes train the model one process trains) "
        f"{ddp['ratio']:.2f}x: besides the gradient all-reduce, each trained BatchNorm layer adds one all-reduce of "
        "its moments in the forward and one in the backward pass, about a hundred points per step where a process "
        "waits for the other, which costs most on a busy machine. With per-process statistics (no such waits, "
        f"another model for every process count) {ddp['ratio_per_process_batchnorm']:.2f}x. One process with one "
        f"thread: {ddp['ratio_one_thread']:.2f}x of one with two."
    )
    if ddp["ratio_per_process_batchnorm"] > 1.05 and ddp["ratio_one_thread"] > 0.9:
        measured += (
            " So here a second thread buys one process little (at this image size MobileNetV2's layers are too "
            "small to split well between threads), while two processes keep both cores busy and meet once per step: "
            "per-process DDP used the same cores better than threads did."
        )
    return [
        *lines,
        measured + " The gain DDP is for comes with cores or GPUs per process: one GPU per process with NCCL, or "
        "one machine per node.",
        "",
    ]


def run(quick: bool = False, parts: tuple[str, ...] = PARTS) -> dict:
    """Run `parts`; the others keep their figures (and where and how they were measured) from the last scale.json."""
    figures, measured = kept_parts(results_dir() / "scale.json", parts)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="transferline-scale-") as tmp:
        scratch = Path(tmp)
        measure = {"trials": trials_per_minute, "remote": remote_throughput, "ddp": ddp_throughput}
        for part in parts:
            figures[part] = measure[part](scratch, quick)
            measured[part] = {"cpu": info["cpu"], "cores": info["cores"], "date": info["date"], "quick": quick}
    order = [part for part in PARTS if part in figures]
    results = {
        "quick": all(measured[part]["quick"] for part in order),
        "measured": {part: measured[part] for part in order},
        **{part: figures[part] for part in order},
    }
    write_results("scale", results, markdown(results))
    return results


def kept_parts(previous: Path, parts: tuple[str, ...]) -> tuple[dict, dict]:
    """The figures of the parts not run now, and where they were measured, from the last results file."""
    if set(parts) == set(PARTS) or not previous.is_file():
        return {}, {}
    last = json.loads(previous.read_text())
    figures = {part: last[part] for part in PARTS if part in last and part not in parts}
    where = last.get("measured") or {}
    old_machine = {  # a file written before parts were recorded: one machine and one mode for all
        "cpu": last["machine"]["cpu"],
        "cores": last["machine"]["cores"],
        "date": last["machine"]["date"],
        "quick": bool(last.get("quick")),
    }
    return figures, {part: where.get(part, old_machine) for part in figures}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run these parts, keep the others' last figures")
    parser.add_argument("--worker", nargs=3, metavar=("CONFIG", "SLOTS", "SIGNAL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(*args.worker)
    else:
        run(args.quick, tuple(args.only or PARTS))
