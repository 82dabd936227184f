"""A small flow that refreshes only the data stages and starts retraining when the raw data changed.

Scheduled often and cheap: `ingest` and `prepare` run through DVC (skipped when nothing changed);
if the DVC hash of `data/raw` differs from the one the current champion was trained on, the full
pipeline runs, as a deployment run when one is named, else in-process as a subflow. The data stages
run only in a free working copy (flows/working_copy.py): while another run is in progress there, the
watch ends Completed, "skipped: run 'NAME' in progress", instead of failing on DVC's lock.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Completed

from flows.pipeline import pipeline, stage_task
from flows.retrain_trigger import start_retraining
from flows.working_copy import working_copy_or_skip
from transferline.cli import cli_parser, run_command
from transferline.evaluation.lineage import dvc_out_hash

RETRAIN_TAGS = ("data-watch", "raw-data-changed")


def retrain_reason(trained_on: str | None, current: str) -> str:
    """Why the data watch starts a retraining, in the words its runs record."""
    if trained_on is None:
        return f"raw data {current}: no champion was trained on it (none is serving)"
    return f"raw data changed: {trained_on} -> {current}"


def champion_raw_md5() -> str | None:
    from serving.registry import find_champion

    champion = find_champion()
    return champion.metadata.get("raw_data_md5") if champion else None


@flow(name="transferline-data-watch", log_prints=True)
def data_watch(repo: str = ".", pipeline_deployment: str | None = None, retrain: bool = True):
    """Run the data stages; if the raw data is not what the champion was trained on, retrain (unless told not to).
    A run in progress in the working copy makes it skip, Completed, saying which run (it would only find DVC's
    lock, and that run ends with the data up to date)."""
    root = Path(repo).resolve()
    logger = get_run_logger()
    with working_copy_or_skip(root) as busy:
        if busy is not None:
            logger.info("%s", busy.skipped())
            return Completed(message=busy.skipped())
        for stage in ("ingest", "prepare"):
            stage_task(stage, str(root))
        current = dvc_out_hash(root, "ingest", "data/raw")
    # released before any retraining starts: the pipeline takes the copy itself (in this process it could
    # not take a lock its own process holds; a deployment run would wait for this watch to end)
    trained_on = champion_raw_md5()
    if current == trained_on:
        return Completed(message=f"raw data unchanged ({current}): no retraining")
    if not retrain:
        return Completed(message=f"raw data changed ({trained_on} -> {current}); retraining not requested")
    reason = retrain_reason(trained_on, current)
    logger.info("retraining: %s", reason)
    if pipeline_deployment:
        run = start_retraining(pipeline_deployment, root, reason, RETRAIN_TAGS)
        return Completed(message=f"{reason}: triggered {pipeline_deployment} run {run.id}")
    state = pipeline(repo=str(root), reason=reason, return_state=True)
    return Completed(message=f"{reason}: pipeline {state.name}: {state.message}")


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("Refresh the data stages; retrain if the raw data changed.")
    parser.add_argument("--repo", default=".")
    parser.add_argument("--pipeline-deployment", default=None, help="e.g. transferline-pipeline/retrain")
    return parser


def run_data_watch(args: argparse.Namespace) -> int:
    state = data_watch(args.repo, args.pipeline_deployment, return_state=True)
    print(f"{state.name}: {state.message}")
    return 0 if state.is_completed() else 1


def main(argv: list[str] | None = None) -> int:
    return run_command(run_data_watch, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
