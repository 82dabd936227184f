"""Create the Prefect deployments on a work pool of type process: scheduled retraining, data watch, search trials.

    prefect server start --host 127.0.0.1                 # or a server with PostgreSQL (README)
    prefect work-pool create transferline --type process
    python -m flows.deploy --cron "0 3 * * *"              # this module
    prefect worker start --pool transferline              # runs what the schedules and triggers start

One checkout (`--repo`) gets three deployments: the pipeline (`transferline-pipeline/retrain`, on
`--cron`), the data watch and the drift check (both on `--watch-cron`, every 30 minutes by default; the
drift check's own `--drift-cron` if given), the watches starting runs of that pipeline deployment.
Runs in one checkout never overlap, whichever deployment (or command line) started them: each run that
writes to the checkout holds its working-copy lock (flows/working_copy.py), a pipeline run waiting its
turn and a watch ending Completed with "skipped: run 'NAME' in progress". Each deployment also has a
concurrency limit of 1 with collision strategy ENQUEUE, so a deployment's runs that come due together
wait on the server rather than in a worker's process. Another checkout gets deployments of its own
(`--name`, `--repo`), which do run at the same time as the first one's. `transferline-tune-trials/trials`
runs a share of a search's trials (flows/tune.py --deployment); it has no limit: a study's trials are
meant to run side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from transferline.cli import cli_parser, run_command

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
TUNE_TRIALS_DEPLOYMENT = "transferline-tune-trials/trials"


def _deploy(entrypoint: str, name: str, work_pool: str, **options) -> None:
    from prefect import flow

    flow.from_source(source=str(PROJECT_ROOT), entrypoint=entrypoint).deploy(
        name=name, work_pool_name=work_pool, tags=["transferline"], build=False, print_next_steps=False, **options
    )


def watch_name(name: str, watch: str) -> str:
    """The name of a watch deployment of the checkout whose pipeline deployment is `name`."""
    return watch if name == "retrain" else f"{name}-{watch}"


def deploy(
    work_pool: str,
    cron: str | None,
    watch_cron: str | None,
    repo: Path,
    name: str = "retrain",
    watch: bool = True,
    drift_cron: str | None = None,
) -> list[str]:
    """Register the deployments of one checkout (`repo`) and the search-trials one; returns their names.
    A schedule of None is none (the command line gives the drift check the data watch's by default)."""
    pipeline_name = f"transferline-pipeline/{name}"
    _deploy(
        "flows/pipeline.py:pipeline",
        name,
        work_pool,
        cron=cron,
        parameters={"repo": str(repo)},
        concurrency_limit=ONE_AT_A_TIME,
        description=f"Full pipeline in {repo}: data, training, gates, export; deploys a model that passed its gate.",
    )
    names = [pipeline_name]
    if watch:
        watches = (
            ("flows/data_watch.py:data_watch", "transferline-data-watch", "data-watch", watch_cron, "raw-data change"),
            ("flows/drift.py:drift_check", "transferline-drift-check", "drift-check", drift_cron, "drift"),
        )
        for entrypoint, flow_name, kind, schedule, trigger in watches:
            deployment = watch_name(name, kind)
            _deploy(
                entrypoint,
                deployment,
                work_pool,
                cron=schedule,
                parameters={"repo": str(repo), "pipeline_deployment": pipeline_name},
                concurrency_limit=ONE_AT_A_TIME,
                description=f"{kind} of {repo}: starts {pipeline_name} on a {trigger}; skips while a run is in it.",
            )
            names.append(f"{flow_name}/{deployment}")
    _deploy(
        "flows/tune.py:tune_trials",
        TUNE_TRIALS_DEPLOYMENT.split("/")[1],
        work_pool,
        description="A share of a hyperparameter search's trials (python -m flows.tune --deployment ...).",
    )
    return [*names, TUNE_TRIALS_DEPLOYMENT]


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("Create transferline's Prefect deployments.")
    parser.add_argument("--work-pool", default="transferline")
    parser.add_argument("--cron", default="0 3 * * *", help="retraining schedule (default: daily 03:00 UTC; none: '')")
    parser.add_argument("--watch-cron", default="*/30 * * * *", help="data-watch schedule (default: every 30 min)")
    parser.add_argument("--drift-cron", default=None, help="drift-check schedule (default: the data watch's)")
    parser.add_argument("--repo", type=Path, default=PROJECT_ROOT, help="the project checkout the runs work in")
    parser.add_argument("--name", default="retrain", help="pipeline deployment name, one per checkout")
    parser.add_argument("--no-watch", action="store_true", help="no watch deployments (data watch, drift check)")
    return parser


def create_deployments(args: argparse.Namespace) -> None:
    drift_cron = args.watch_cron if args.drift_cron is None else args.drift_cron
    names = deploy(
        args.work_pool,
        args.cron or None,
        args.watch_cron or None,
        args.repo.resolve(),
        args.name,
        not args.no_watch,
        drift_cron or None,
    )
    for name in names:
        print(f"deployment {name} created")


def main(argv: list[str] | None = None) -> int:
    return run_command(create_deployments, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
