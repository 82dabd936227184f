"""Create the Prefect deployments on a work pool of type process: scheduled retraining and data watch.

    prefect server start --host 127.0.0.1                 # or a server with PostgreSQL (README)
    prefect work-pool create transferline --type process
    python -m flows.deploy --cron "0 3 * * *"              # this module
    prefect worker start --pool transferline              # runs what the schedules and triggers start

Both deployments have a concurrency limit of 1 with collision strategy ENQUEUE, so two runs of
the same pipeline never overlap: a run that comes due while another is running waits its turn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from transferline.cli import cli_parser, run_command

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def deploy(work_pool: str, cron: str | None, watch_cron: str | None, repo: Path) -> list[str]:
    """Register both deployments; returns their names ("flow/deployment")."""
    from prefect import flow

    pipeline_flow = flow.from_source(source=str(PROJECT_ROOT), entrypoint="flows/pipeline.py:pipeline")
    watch_flow = flow.from_source(source=str(PROJECT_ROOT), entrypoint="flows/data_watch.py:data_watch")
    pipeline_flow.deploy(
        name="retrain",
        work_pool_name=work_pool,
        cron=cron,
        parameters={"repo": str(repo)},
        concurrency_limit=ONE_AT_A_TIME,
        description="Full pipeline: data, training, gates, export; deploys a model that passed its gate.",
        tags=["transferline"],
        build=False,
        print_next_steps=False,
    )
    watch_flow.deploy(
        name="data-watch",
        work_pool_name=work_pool,
        cron=watch_cron,
        parameters={"repo": str(repo), "pipeline_deployment": "transferline-pipeline/retrain"},
        concurrency_limit=ONE_AT_A_TIME,
        description="Data stages only; triggers transferline-pipeline/retrain when the raw data changed.",
        tags=["transferline"],
        build=False,
        print_next_steps=False,
    )
    return ["transferline-pipeline/retrain", "transferline-data-watch/data-watch"]


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("Create transferline's Prefect deployments.")
    parser.add_argument("--work-pool", default="transferline")
    parser.add_argument("--cron", default="0 3 * * *", help="retraining schedule (default: daily 03:00 UTC)")
    parser.add_argument("--watch-cron", default="*/30 * * * *", help="data-watch schedule (default: every 30 min)")
    parser.add_argument("--repo", type=Path, default=PROJECT_ROOT, help="the project checkout the runs work in")
    return parser


def create_deployments(args: argparse.Namespace) -> None:
    for name in deploy(args.work_pool, args.cron, args.watch_cron, args.repo.resolve()):
        print(f"deployment {name} created")


def main(argv: list[str] | None = None) -> int:
    return run_command(create_deployments, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
