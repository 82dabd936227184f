"""What scaling out costs and buys: search trials per minute with 1 and 2 worker processes on PostgreSQL vs
SQLite, and `dvc push`/`dvc pull` throughput to an S3-compatible remote (moto's server on loopback).

Trials: generated data (3 classes, 32 px) through the real prepare stage; each worker is its own process
(as a cluster worker is) that loads the data and the cached features, waits for a common start signal,
then runs its share of the study's trial slots through transferline.search.tuning.run_trial. The clock
runs from the signal to the last trial's end, so process start-up is not counted. Two kinds of trial:
head-only (a head fit of ~0.3 s: the storage's per-trial cost shows) and fine-tuning (compute-bound).
The PostgreSQL server is a local one (transferline/cluster/postgres.py) on loopback.

Remote: a DVC repository with random (incompressible) files, pushed to a fresh bucket, then its cache
and workspace removed and pulled back; MB/s = bytes of data / seconds of the command.

    python -m bench.scale_bench [--quick]       # writes bench/results/scale.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import machine, write_results
from transferline.env import tool_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("red", "green", "blue")
HEAD_ONLY_SPACE = {"train.probe_l2": {"type": "float", "low": 1.0e-3, "high": 1.0, "log": True}}
FINE_TUNE_SPACE = {
    "train.strategy": ["partial"],
    "train.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
}
TRAIN = {"epochs": 2, "warmup_epochs": 0.0, "batch_size": 16, "early_stopping_patience": None, "device": "cpu"}


# ---------------------------------------------------------------- trials per minute


def make_study_inputs(root: Path, per_class: int) -> Path:
    """Generated images through the prepare stage, and params.yaml with a small train recipe."""
    from stages import prepare
    from transferline.config import PrepareParams, PreprocessParams

    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / "raw" / name).mkdir(parents=True)
        for item in range(per_class):
            from PIL import Image

            pixels = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            pixels[..., label] += 140
            Image.fromarray(pixels).save(root / "raw" / name / f"{item}.png")
    prepare.run(
        PrepareParams(min_per_class=3),
        PreprocessParams(image_size=32),
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


# ---------------------------------------------------------------- report


def markdown(results: dict, quick: bool) -> str:
    info = machine()
    lines = [
        "# Scaling out: search workers on PostgreSQL vs SQLite, DVC remote throughput",
        "",
        f"{info['cpu']}, {info['cores']} cores"
        f"{' (quick run: 2-8 trials, 16 MB: a smoke test of the benchmark, not figures to quote)' if quick else ''}. "
        "Each worker is a process on one core; the clock starts once every worker has loaded the data.",
        "",
        "| trials | storage | 1 worker | 2 workers | 2 vs 1 |",
        "|---|---|---|---|---|",
    ]
    for kind, label in (("head_only", "head-only"), ("fine_tune", "fine-tuning")):
        for backend, runs in results["trials"][kind].items():
            one, two = runs["1"], runs["2"]
            lines.append(
                f"| {label} ({one['trials']}) | {backend} | {one['trials_per_minute']:.1f} /min "
                f"| {two['trials_per_minute']:.1f} /min | {two['trials_per_minute'] / one['trials_per_minute']:.2f}x |"
            )
    remote = results["remote"]
    lines += [
        "",
        "| DVC remote (S3 API, moto on loopback) | data | seconds | MB/s |",
        "|---|---|---|---|",
        f"| `dvc push` | {remote['files']} files, {remote['megabytes']} MB | {remote['push_s']:.1f} | "
        f"{remote['push_mb_s']:.1f} |",
        f"| `dvc pull` (empty cache) | {remote['files']} files, {remote['megabytes']} MB | {remote['pull_s']:.1f} | "
        f"{remote['pull_mb_s']:.1f} |",
        "",
        "## Distributed data-parallel training (DDP)",
        "",
        "<!-- DDP: 2 processes vs 1 on this machine, and NCCL on a GPU machine; written by the DDP benchmark. -->",
        "",
        "| run | epoch seconds | 2 vs 1 |",
        "|---|---|---|",
        "| DDP, 2 processes vs 1 | not measured here | - |",
        "",
        "Two workers on 2 cores share the cores every other process also uses: the 2-vs-1 ratio is a ceiling "
        "of 2x only on otherwise idle cores. The loopback remote measures DVC's own cost (hashing, transfer "
        "bookkeeping), not a network.",
        "",
    ]
    return "\n".join(lines)


def run(quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="transferline-scale-") as tmp:
        scratch = Path(tmp)
        results = {
            "quick": quick,
            "trials": trials_per_minute(scratch, quick),
            "remote": remote_throughput(scratch, quick),
        }
    write_results("scale", results, markdown(results, quick))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=3, metavar=("CONFIG", "SLOTS", "SIGNAL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(*args.worker)
    else:
        run(args.quick)
