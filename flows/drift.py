"""The drift check: is the served model still seeing the world it was trained on? If not, retrain.

Scheduled like the data watch. It takes the last `window` predictions the service logged for the
current champion and compares them with the champion's own reference (its validation logits and
predicted-class shares, written by the export stage into the model bundle) using the three tests of
transferline/monitoring/drift.py: MMD on the logits with a permutation p-value, the predicted class
mix, and the out-of-distribution rate against the detector's calibrated rate. It publishes a markdown
artifact (statistics, p-values, window, what moved) and, on drift, starts the retraining deployment,
recording the reason in the run's name, tags and `reason` parameter (flows/retrain_trigger.py).

The check itself only reads (the prediction log, the registry), so it runs whatever else runs in the
working copy; but while a run is in progress there (flows/working_copy.py) it starts no retraining and
ends Completed with "...; retraining skipped: run 'NAME' in progress": that run is about to replace or
re-judge the champion, and a second retraining queued behind it would repeat its work. flows/deploy.py
schedules it like the data watch.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed

from flows.working_copy import WorkingCopyLock
from serving.prediction_log import read_entries
from transferline.cli import cli_parser, run_command
from transferline.monitoring.drift import DriftReport, drift_report
from transferline.monitoring.ood import MONITORING_FILE, load_detector

REFERENCE_FILE = "reference_logits.npy"
REFERENCE_DISTANCES_FILE = "reference_distances.npy"  # the same images' feature distances (OOD scores)
REFERENCE_SAMPLE = 500  # validation logits compared with each window (seeded subsample): the test's cost is quadratic


@dataclass
class WindowCheck:
    """The outcome for one window: a report when there were enough predictions to judge, else why not."""

    report: DriftReport | None
    message: str
    tag: str
    window: int


def check_window(bundle_dir: Path, tag: str, log_dir: Path, window: int, alpha: float, seed: int = 0) -> WindowCheck:
    """Compare the champion's last `window` logged predictions with its reference."""
    reference_file = bundle_dir / REFERENCE_FILE
    if not reference_file.is_file() or not (bundle_dir / MONITORING_FILE).is_file():
        return WindowCheck(None, f"model {tag} carries no drift reference (exported before drift checks)", tag, window)
    entries = [entry for entry in read_entries(log_dir) if entry.get("model_tag") == tag][-window:]
    if len(entries) < window:
        return WindowCheck(
            None, f"{len(entries)} of {window} predictions logged for {tag}: too few to judge", tag, window
        )
    reference = np.load(reference_file)
    distances_file = bundle_dir / REFERENCE_DISTANCES_FILE
    distances = np.load(distances_file) if distances_file.is_file() else None
    if len(reference) > REFERENCE_SAMPLE:
        keep = np.random.default_rng(seed).choice(len(reference), REFERENCE_SAMPLE, replace=False)
        reference, distances = reference[keep], None if distances is None else distances[keep]
    detector = load_detector(bundle_dir)
    if detector.needs_distance and distances is None:
        return WindowCheck(None, f"model {tag} carries no reference feature distances for its OOD rate", tag, window)
    recent = np.asarray([entry["embedding"] for entry in entries], dtype=np.float64)
    report = drift_report(
        reference,
        reference.argmax(axis=1),
        detector.flags(reference, distances)[1],
        recent,
        recent.argmax(axis=1),
        np.asarray([entry["out_of_distribution"] for entry in entries]),
        num_classes=reference.shape[1],
        alpha=alpha,
        seed=seed,
    )
    moved = ", ".join(report.moved) or "nothing"
    verdict = "drift" if report.drift else "no drift"
    return WindowCheck(report, f"{verdict} in the last {window} predictions of {tag} (moved: {moved})", tag, window)


def report_markdown(check: WindowCheck) -> str:
    lines = [f"# Drift check: {check.message}", ""]
    if check.report is None:
        return "\n".join(lines)
    lines += [
        f"Window: the last {check.window} predictions of `{check.tag}`; alpha {check.report.alpha} "
        f"(each of the {len(check.report.tests)} tests at alpha/{len(check.report.tests)}).",
        "",
        "| test | statistic | p-value | moved | detail |",
        "|---|---|---|---|---|",
    ]
    for test in check.report.tests:
        moved = "yes" if test.name in check.report.moved else "no"
        lines.append(
            f"| {test.name} | {test.statistic:.4g} | {test.p_value:.4g} | {moved} | {json.dumps(test.detail)} |"
        )
    return "\n".join(lines) + "\n"


@flow(name="transferline-drift-check", log_prints=True)
def drift_check(
    repo: str = ".",
    window: int = 200,
    alpha: float = 0.05,
    log_dir: str | None = None,
    pipeline_deployment: str | None = None,
    retrain: bool = True,
):
    """Judge the champion's recent predictions; on drift, start retraining (a deployment run when one is named)."""
    from serving.registry import find_champion
    from serving.settings import load_serve_params

    logger = get_run_logger()
    root = Path(repo).resolve()
    champion = find_champion()
    if champion is None:
        return Completed(message="no champion is served: nothing to check")
    directory = Path(log_dir) if log_dir else root / load_serve_params(root / "params.yaml").log_dir
    check = check_window(champion.path, champion.tag, directory, window, alpha)
    create_markdown_artifact(markdown=report_markdown(check), key="drift-check", description=check.message)
    logger.info("%s", check.message)
    if check.report is None or not check.report.drift:
        return Completed(message=check.message)
    if not retrain:
        return Completed(message=f"{check.message}; retraining not requested")
    busy = WorkingCopyLock(root).holder()
    if busy is not None:
        logger.info("retraining %s", busy.skipped())
        return Completed(message=f"{check.message}; retraining {busy.skipped()}")
    reason = f"drift in {', '.join(check.report.moved)}"
    if pipeline_deployment:
        from flows.retrain_trigger import start_retraining

        run = start_retraining(pipeline_deployment, root, reason, ["drift", *check.report.moved])
        return Completed(message=f"{check.message}: triggered {pipeline_deployment} run {run.id}")
    from flows.pipeline import pipeline

    state = pipeline(repo=str(root), reason=reason, return_state=True)
    return Completed(message=f"{check.message}: pipeline {state.name}: {state.message}")


def drift_command(args: argparse.Namespace) -> int:
    state = drift_check(
        args.repo,
        args.window,
        args.alpha,
        args.log_dir,
        args.pipeline_deployment,
        not args.no_retrain,
        return_state=True,
    )
    print(f"{state.name}: {state.message}")
    return 0 if state.is_completed() else 1


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("Check the served model's recent predictions for drift; retrain on drift.")
    parser.add_argument("--repo", default=".")
    parser.add_argument("--window", type=int, default=200, help="predictions judged (default 200)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--log-dir", default=None, help="the prediction log (default: serve.log_dir)")
    parser.add_argument("--pipeline-deployment", default=None, help="e.g. transferline-pipeline/retrain")
    parser.add_argument("--no-retrain", action="store_true", help="only report")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(drift_command, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
