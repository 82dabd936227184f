"""The transferline pipeline as a Prefect flow: one task per DVC stage, then gated deployment.

    python -m flows.pipeline                       # run once (Prefect's temporary local server)
    python -m flows.pipeline --set train.epochs=3  # a run with params overrides (written to params.yaml)
    python -m flows.pipeline --push                # then `dvc push` data and models to the DVC remote

Each stage task runs `dvc repro --single-item STAGE`, so DVC decides what is stale and the flow
and `dvc repro` share one cache and one dvc.lock. After the gate, a passed candidate is
registered and deployed (checked in a service of its own on a side port, promoted, swapped into the
live service without a restart, checked with a real prediction, swapped back if that check fails); a
rejected one leaves the champion serving. With `push`, a run that completed
pushes every output its dvc.lock records to the DVC remote, so any commit of that dvc.lock (the model
that was deployed, the data it was trained on) can be fetched with `dvc pull` on another machine.
A run holds its working copy from start to end (flows/working_copy.py): runs in one checkout never overlap.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed

from flows.dvc_stage import PIPELINE_STAGES, StageFailed, push, repro_stage
from flows.params_override import apply_overrides, overridden_params
from flows.report import per_class_rows, run_report_markdown
from flows.service_control import ServiceController, ServiceFailed, controller_from_params
from flows.working_copy import Holder, working_copy_turn
from transferline.cli import cli_parser, run_command
from transferline.data.manifest import split_rows
from transferline.errors import ParamsError, TransferlineError
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
def stage_task(stage: str, repo: str) -> dict:
    logger = get_run_logger()
    outcome = repro_stage(stage, Path(repo), logger.info, debug=logger.debug)
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


@task(name="sync-champion-file")
def champion_file_task(repo: str) -> bool:
    """Make champion.json (a dep of the gate stage) name the registry's champion, so DVC re-runs the gate
    exactly when the champion it judges against changed, e.g. promoted or rolled back from another checkout."""
    from serving.registry import sync_champion_file

    changed = sync_champion_file(Path(repo))
    if changed:
        get_run_logger().info("champion.json updated from the registry: the gate will judge against the new champion")
    return changed


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
    row = split_rows(repo / "data" / "prepared", "test")[0]
    path = repo / "data" / "raw" / row.path
    return path.name, path.read_bytes()


@task(name="deploy-model")
def deploy_task(tag: str, repo: str, host: str, port: int) -> dict:
    """Check the candidate in a service of its own on a side port, then promote it and put it in the live
    service: a model swap (no restart, no failed request) unless the service's code or settings changed, which
    needs a restart; then check that a real prediction answers with it. A candidate that fails its own check is
    never promoted; any later failure rolls back, and the live service is swapped back."""
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
    promote(tag, root)
    try:
        how = controller.put_in_service(tag)
        logger.info("service at %s: %s", controller.url, how)
        answer = controller.classify(image, name)
        if answer.get("model_tag") != tag:
            raise ServiceFailed(f"service answered with model {answer.get('model_tag')!r}, expected {tag!r}")
    except Exception as exc:
        logger.error("deploy of %s failed: %s", tag, exc)
        if previous is not None and previous.tag != tag:
            rollback(root)
            restored = restore_service(controller, previous.tag)
            raise DeployFailed(
                f"deploy of {tag} failed ({exc}); rolled back to {previous.tag}, which is serving ({restored})"
            ) from exc
        controller.stop()
        raise DeployFailed(f"deploy of {tag} failed ({exc}); no other champion to restore, service stopped") from exc
    logger.info("deployed %s at %s: probe answered %s", tag, controller.url, answer.get("predictions", [{}])[0])
    return {"tag": tag, "url": controller.url, "how": how}


def restore_service(controller: ServiceController, tag: str) -> str:
    """Serve the restored champion `tag` again: swapped back, or, if the service cannot swap, restarted."""
    try:
        return controller.put_in_service(tag)
    except ServiceFailed as exc:
        get_run_logger().warning("swapping back to %s failed (%s): restarting the service", tag, exc)
        controller.restart()
        return "restarted after the swap back failed"


@task(name="ensure-champion-serves")
def ensure_serving_task(tag: str, repo: str, host: str, port: int) -> str:
    """The champion is unchanged, but is it served? Ask the live service with a real test image; start it if it
    does not answer, swap it to the champion (restart it if its code changed) if it answers with another model.
    Returns what was found and done."""
    logger = get_run_logger()
    root = Path(repo)
    controller = ServiceController(root, host, port)
    name, image = probe_image(root)
    try:
        answered = controller.classify(image, name).get("model_tag")
    except (httpx.HTTPError, ServiceFailed, ValueError) as exc:
        logger.warning("the service at %s does not answer (%s): starting it", controller.url, exc)
        controller.restart()  # also clears a stale pid left by a crashed service
        action = "was not answering: started"
    else:
        if answered == tag:
            return "answered"
        logger.warning(
            "the service at %s answers with %s, not the champion %s: putting the champion in service",
            controller.url,
            answered,
            tag,
        )
        action = f"answered with {answered}: {controller.put_in_service(tag)}"
    answered = controller.classify(image, name).get("model_tag")
    if answered != tag:
        raise DeployFailed(f"the service {action}, but answers with {answered!r}, not the champion {tag!r}")
    return action


def service_step(step, tag: str, root: Path) -> tuple[str | None, Any]:
    """Run a task that acts on the live service (deploy, or check it serves `tag`) at the address the serve
    settings give, to its end: (the failure's message or None, the task's result)."""
    service = controller_from_params(root)
    future = step.submit(tag, str(root), service.host, service.port)
    future.wait()
    if future.state.is_failed():
        return str(future.state.message), None
    return None, future.result()


@flow(name="transferline-pipeline", log_prints=True)
def pipeline(
    overrides: dict[str, Any] | None = None,
    repo: str = ".",
    deploy: bool = True,
    push: bool = False,
    reason: str | None = None,
):
    """ingest -> prepare -> train -> evaluate -> export -> gate, then register + deploy if the gate passed, then
    (if `push`) `dvc push` when the run completed. The whole run holds the working copy (flows/working_copy.py):
    a run that finds another one in it waits its turn. `reason` is why it was started (a watch's finding),
    kept in the run's parameters and report."""
    root = Path(repo).resolve()
    logger = get_run_logger()
    if reason:
        logger.info("started because: %s", reason)

    def waiting(holder: Holder) -> None:
        logger.info("working copy %s is busy: run %s; waiting for it to end", root, holder.describe())

    with working_copy_turn(root, on_wait=waiting) as waited:
        if waited > 0.5:
            logger.info("working copy %s is free after %.0f s of waiting", root, waited)
        return pipeline_steps(root, overrides, deploy, push, reason)


def pipeline_steps(root: Path, overrides: dict[str, Any] | None, deploy: bool, push: bool, reason: str | None):
    """The pipeline flow's work, in a working copy the run holds."""
    from serving.registry import find_champion

    logger = get_run_logger()
    if overrides:
        overrides_task(str(root), overrides)
    champion_file_task(str(root))
    outcomes = [stage_task(stage, str(root)) for stage in PIPELINE_STAGES]
    decision = json.loads((root / "gate" / "decision.json").read_text())
    champion = find_champion()
    current = champion.tag if champion else None
    export_md5 = dvc_out_hash(root, "export", "export")
    already_serving = champion is not None and champion.metadata.get("export_md5") == export_md5
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())

    if not decision["passed"]:
        outcome = f"gate failed, champion kept ({current or 'none'})"
        state = Completed(message=f"{outcome}: {decision['reason']}")
    elif already_serving and deploy:
        failure, action = service_step(ensure_serving_task, current, root)
        if failure:
            outcome = f"unchanged: champion {current}, but the service could not be made to serve it"
            state = Failed(message=failure)
        else:
            outcome = f"unchanged: champion {current} already serves this model (service {action})"
            state = Completed(message=outcome)
    elif already_serving:
        outcome = f"unchanged: champion {current} already serves this model"
        state = Completed(message=outcome)
    elif not deploy:
        outcome = "gate passed; deployment skipped (deploy=false)"
        state = Completed(message=outcome)
    else:
        tag = register_task(str(root))
        failure, deployed = service_step(deploy_task, tag, root)
        if failure:
            outcome = f"deploy of {tag} failed, rolled back"
            state = Failed(message=failure)
        else:
            outcome = f"deployed {tag}: service {deployed['how']}"
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
        run_report_markdown(outcomes, metrics, decision, outcome, reason, read_advice(root)),
        key="pipeline-report",
        description=outcome,
    )
    create_table_artifact(per_class_rows(metrics), key="per-class-metrics", description="test split, per class")
    logger.info("outcome: %s", outcome)
    return state


def read_advice(root: Path) -> dict | None:
    """What `strategy: auto` measured and chose for this run's model, if it chose (models/advice.json)."""
    path = root / "models" / "advice.json"
    return json.loads(path.read_text()) if path.is_file() else None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ParamsError(f"--set expects section.key=value, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("Run the transferline pipeline once as a Prefect flow.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--no-deploy", action="store_true", help="stop after the gate")
    parser.add_argument("--repo", default=".")
    parser.add_argument("--push", action="store_true", help="`dvc push` data and models after a completed run")
    return parser


def run_pipeline(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    overridden_params(Path(args.repo) / "params.yaml", overrides)  # refuse bad overrides before Prefect starts
    state = pipeline(overrides, args.repo, not args.no_deploy, args.push, return_state=True)
    print(f"{state.name}: {state.message}")
    return 0 if state.is_completed() else 1


def main(argv: list[str] | None = None) -> int:
    return run_command(run_pipeline, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
