"""Create the Prefect deployments on a work pool of type process: scheduled retraining, data watch, search trials.

    prefect server start --host 127.0.0.1                 # or a server with PostgreSQL (README)
    prefect work-pool create transferline --type process
    python -m flows.deploy --cron "0 3 * * *"              # this module
    prefect worker start --pool transferline              # runs what the schedules and triggers start

The pipeline and data-watch deployments have a concurrency limit of 1 with collision strategy
ENQUEUE, so two runs in one checkout never overlap: a run that comes due while another is running
waits its turn. Another checkout gets deployments of its own (`--name`, `--repo`), which do run at the
same time as the first one's. `transferline-tune-trials/trials` runs a share of a search's trials
(flows/tune.py --deployment); it has no limit: a study's trials are meant to run side by side.
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


def deploy(
    work_pool: str, cron: str | None, watch_cron: str | None, repo: Path, name: str = "retrain", watch: bool = True
) -> list[str]:
    """Register the deployments of one checkout (`repo`) and the search-trials one; returns their names."""
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
        watch_name = "data-watch" if name == "retrain" else f"{name}-data-watch"
        _deploy(
            "flows/data_watch.py:data_watch",
            watch_name,
            work_pool,
            cron=watch_cron,
            parameters={"repo": str(repo), "pipeline_deployment": pipeline_name},
            concurrency_limit=ONE_AT_A_TIME,
            description=f"Data stages only; triggers {pipeline_name} when the raw data changed.",
        )
        names.append(f"transferline-data-watch/{watch_name}")
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
    parser.add_argument("--repo", type=Path, default=PROJECT_ROOT, help="the project checkout the runs work in")
    parser.add_argument("--name", default="retrain", help="pipeline deployment name, one per checkout")
    parser.add_argument("--no-watch", action="store_true", help="no data-watch deployment")
    return parser


def create_deployments(args: argparse.Namespace) -> None:
    names = deploy(
        args.work_pool, args.cron or None, args.watch_cron or None, args.repo.resolve(), args.name, not args.no_watch
    )
    for name in names:
        print(f"deployment {name} created")


def main(argv: list[str] | None = None) -> int:
    return run_command(create_deployments, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
