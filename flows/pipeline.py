"""The transferline pipeline as a Prefect flow: one task per DVC stage, then gated deployment.

    python -m flows.pipeline                       # run once (Prefect's temporary local server)
    python -m flows.pipeline --set train.epochs=3  # a run with params overrides (written to params.yaml)
    python -m flows.pipeline --push                # then `dvc push` data and models to the DVC remote

Each stage task runs `dvc repro --single-item STAGE`, so DVC decides what is stale and the flow
and `dvc repro` share one cache and one dvc.lock. After the gate, a passed candidate is
registered and deployed (promoted, service restarted, checked with a real prediction, rolled back
if that check fails); a rejected one leaves the champion serving. With `push`, a run that completed
pushes every output its dvc.lock records to the DVC remote, so any commit of that dvc.lock (the model
that was deployed, the data it was trained on) can be fetched with `dvc pull` on another machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed

from flows.dvc_stage import PIPELINE_STAGES, StageFailed, push, repro_stage
from flows.params_override import apply_overrides
from flows.report import per_class_rows, run_report_markdown
from flows.service_control import ServiceController, ServiceFailed, controller_from_params
from transferline.errors import TransferlineError
from transferline.evaluation.lineage import collect_lineage, dvc_out_hash


class DeployFailed(TransferlineError):
    """The new champion did not answer correctly; the previous one was restored."""


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry crashes and kills; never a stage that explained its failure (bad data or params)."""
    try:
        state.result()
    except StageFailed as exc:
        return not exc.user_error
    except Exception:
        return True
    return False


@task(
    name="dvc-stage",
    task_run_name="dvc repro {stage}",
    retries=2,
    retry_delay_seconds=[5, 20],
    retry_condition_fn=retry_unless_user_error,
)
def stage_task(stage: str, repo: str, force: bool = False) -> dict:
    logger = get_run_logger()
    outcome = repro_stage(stage, Path(repo), logger.info, force=force)
    logger.info("stage %s %s in %.1f s", stage, "ran" if outcome.ran else "was unchanged, skipped", outcome.seconds)
    return asdict(outcome)


@task(name="dvc-push", retries=2, retry_delay_seconds=[5, 20])
def push_task(repo: str) -> str:
    """Data and models to the DVC remote; retried, since a remote can be briefly unreachable."""
    summary = push(Path(repo), get_run_logger().info)
    get_run_logger().info("dvc push: %s", summary)
    return summary


@task(name="apply-params-overrides")
def overrides_task(repo: str, overrides: dict[str, Any]) -> dict:
    changed = apply_overrides(Path(repo) / "params.yaml", overrides)
    for key, (old, new) in changed.items():
        get_run_logger().info("params.yaml: %s %r -> %r", key, old, new)
    return {key: new for key, (_, new) in changed.items()}


@task(name="register-model", retries=2, retry_delay_seconds=5)
def register_task(repo: str) -> str:
    from serving.registry import register

    root = Path(repo)
    lineage = {**collect_lineage(root), "export_md5": dvc_out_hash(root, "export", "export")}
    tag = register(root / "export", root / "gate", lineage)
    get_run_logger().info("registered %s", tag)
    return tag


def probe_image(repo: Path) -> tuple[str, bytes]:
    """A real test image from the current data, to check the deployed service end to end."""
    with open(repo / "data" / "prepared" / "manifest.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["split"] == "test")
    path = repo / "data" / "raw" / row["path"]
    return path.name, path.read_bytes()


@task(name="deploy-model")
def deploy_task(tag: str, repo: str, host: str, port: int) -> dict:
    """Check the candidate in a service of its own, then promote, restart the live service and check one real
    prediction; a candidate that fails its own check is never promoted, and any later failure rolls back."""
    from serving.registry import find_champion, promote, rollback

    logger = get_run_logger()
    root = Path(repo)
    previous = find_champion()
    controller = ServiceController(root, host, port)
    name, image = probe_image(root)
    try:
        controller.preflight(tag, image, name)
    except ServiceFailed as exc:
        logger.error("candidate %s failed its preflight: %s", tag, exc)
        kept = f"champion {previous.tag} keeps serving" if previous is not None else "no champion was serving"
        raise DeployFailed(f"deploy of {tag} failed ({exc}); not promoted, {kept}") from exc
    promote(tag)
    try:
        controller.restart()
        answer = controller.classify(image, name)
        if answer.get("model_tag") != tag:
            raise ServiceFailed(f"service answered with model {answer.get('model_tag')!r}, expected {tag!r}")
    except Exception as exc:
        logger.error("deploy of %s failed: %s", tag, exc)
        if previous is not None and previous.tag != tag:
            rollback()
            controller.restart()
            raise DeployFailed(
                f"deploy of {tag} failed ({exc}); rolled back to {previous.tag}, which is serving"
            ) from exc
        controller.stop()
        raise DeployFailed(f"deploy of {tag} failed ({exc}); no other champion to restore, service stopped") from exc
    logger.info("deployed %s at %s: probe answered %s", tag, controller.url, answer.get("predictions", [{}])[0])
    return {"tag": tag, "url": controller.url}


@flow(name="transferline-pipeline", log_prints=True)
def pipeline(overrides: dict[str, Any] | None = None, repo: str = ".", deploy: bool = True, push: bool = False):
    """ingest -> prepare -> train -> evaluate -> export -> gate, then register + deploy if the gate passed, then
    (if `push`) `dvc push` when the run completed."""
    from serving.registry import find_champion

    root = Path(repo).resolve()
    logger = get_run_logger()
    if overrides:
        overrides_task(str(root), overrides)
    outcomes = [stage_task(stage, str(root)) for stage in PIPELINE_STAGES]
    decision = json.loads((root / "gate" / "decision.json").read_text())
    champion = find_champion()
    current = champion.tag if champion else None
    export_md5 = dvc_out_hash(root, "export", "export")
    already_serving = champion is not None and champion.metadata.get("export_md5") == export_md5
    if decision.get("champion_at_decision") != current and not already_serving:
        logger.info(
            "champion changed since the gate ran (%s -> %s): re-running the gate",
            decision.get("champion_at_decision"),
            current,
        )
        outcomes[-1] = stage_task("gate", str(root), force=True)
        decision = json.loads((root / "gate" / "decision.json").read_text())
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())

    if not decision["passed"]:
        outcome = f"gate failed, champion kept ({current or 'none'})"
        state = Completed(message=f"{outcome}: {decision['reason']}")
    elif already_serving:
        outcome = f"unchanged: champion {current} already serves this model"
        state = Completed(message=outcome)
    elif not deploy:
        outcome = "gate passed; deployment skipped (deploy=false)"
        state = Completed(message=outcome)
    else:
        tag = register_task(str(root))
        service = controller_from_params(root)
        deploy_future = deploy_task.submit(tag, str(root), service.host, service.port)
        deploy_future.wait()
        if deploy_future.state.is_failed():
            outcome = f"deploy of {tag} failed, rolled back"
            state = Failed(message=str(deploy_future.state.message))
        else:
            outcome = f"deployed {tag}"
            state = Completed(message=outcome)
    if push and state.is_completed():
        push_future = push_task.submit(str(root))
        push_future.wait()
        if push_future.state.is_failed():
            outcome = f"{outcome}; dvc push failed"
            state = Failed(message=f"{state.message}; dvc push failed: {push_future.state.message}")
        else:
            pushed = f"pushed to the DVC remote ({push_future.result()})"
            outcome = f"{outcome}; {pushed}"
            state = Completed(message=f"{state.message}; {pushed}")
    create_markdown_artifact(
        run_report_markdown(outcomes, metrics, decision, outcome), key="pipeline-report", description=outcome
    )
    create_table_artifact(per_class_rows(metrics), key="per-class-metrics", description="test split, per class")
    logger.info("outcome: %s", outcome)
    return state


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects section.key=value, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the transferline pipeline once as a Prefect flow.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--no-deploy", action="store_true", help="stop after the gate")
    parser.add_argument("--repo", default=".")
    parser.add_argument("--push", action="store_true", help="`dvc push` data and models after a completed run")
    args = parser.parse_args(argv)
    state = pipeline(parse_overrides(args.overrides), args.repo, not args.no_deploy, args.push, return_state=True)
    print(f"{state.name}: {state.message}")
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
