"""How a watch (data watch, drift check) starts the retraining deployment: a run that records why."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prefect.client.schemas.objects import FlowRun


def start_retraining(pipeline_deployment: str, root: Path, reason: str, tags: Iterable[str]) -> FlowRun:
    """A run of the retraining deployment in `root`, not waited for (the watch ends; the run takes the working
    copy in turn), that records why it was started: in its name and tags, which the server's UI lists, and
    in its `reason` parameter, which its report shows."""
    from prefect.deployments import run_deployment

    return run_deployment(
        pipeline_deployment,
        parameters={"repo": str(root), "reason": reason},
        flow_run_name=f"retrain: {reason}",
        tags=list(tags),
        timeout=0,
    )
