"""Hyperparameter search as a Prefect flow: grid, random or Bayesian (TPE) trials run as parallel tasks.

    python -m flows.tune --space search_space.yaml --sampler tpe --trials 20 --workers 2
    python -m flows.tune ... --apply-best        # also write the best trial's values into params.yaml

The study is stored (SQLite under tuning/ by default, any SQLAlchemy URL with --storage), so running
the same command again resumes it: finished trials are kept, trials of a killed run are failed by
their stale heartbeat and re-queued, and only the missing trials run. Trials are scored on the
validation split. The flow leaves a table artifact of all trials and a markdown artifact with the
optimisation history, and prints the `dvc exp run -S ...` command that replays the best trial.

Scale-out: with --deployment, the trials run on the workers of a Prefect work pool instead of this
process's threads: the missing trial slots are shared out over `--workers` flow runs of the
`transferline-tune-trials` deployment (flows/deploy.py), each running its slots one after another in
one process, all against --storage on a database every worker reaches (PostgreSQL, see
transferline/cluster) and the project directory (data/prepared, tuning/features) on a shared path:

    python -m flows.tune --storage postgresql://user@db:5432/optuna --workers 2 \
        --deployment transferline-tune-trials/trials

A killed worker leaves its trial RUNNING: run the same command again, and once that trial's heartbeat
is older than --grace-period it is failed, re-queued with its params, and the missing trials run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import optuna
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.params_override import apply_overrides
from flows.tune_report import dvc_exp_command, history_markdown, replay_overrides, trial_rows
from flows.working_copy import working_copy_turn
from transferline.cli import cli_parser, run_command
from transferline.errors import ParamsError, TransferlineError
from transferline.search.study_config import PRUNERS, SAMPLERS, StudyConfig, default_of
from transferline.search.tuning import (
    best_trial,
    completed,
    fail_stale_trials,
    open_study,
    remaining_trials,
    run_trial,
    runner_for,
)


class TuningFailed(TransferlineError):
    """No trial of the search completed."""


@task(name="tune-features", cache_policy=NO_CACHE)
def features_task(config: StudyConfig) -> list[str]:
    """Backbone features for head-only trials, computed (or read from the cache) once for the whole study."""
    return runner_for(config).prepare_features()


@task(name="tune-trial", task_run_name="trial slot {slot}", cache_policy=NO_CACHE)
def trial_task(config: StudyConfig, slot: int) -> dict:
    outcome = run_trial(config, slot)
    message = f"trial {outcome['number']}: {outcome['state']}"
    if outcome["value"] is not None:
        message += f", val accuracy {outcome['value']:.4f}"
    if outcome["error"]:
        message += f" ({outcome['error']})"
    get_run_logger().info(message)
    return outcome


@flow(name="transferline-tune", log_prints=True)
def tune(config: StudyConfig, apply_best: bool = False) -> dict:
    """Validate the space, run the missing trials as tasks, report them, and (only if asked) apply the best."""
    logger = get_run_logger()
    runner = runner_for(config)  # loads and validates the search space before any trial
    study = open_study(config, runner.space)
    fail_stale_trials(study)
    todo = remaining_trials(config, study, runner.space)
    logger.info(
        "study %r in %s: %d trials finished, %d to run (%s sampler)",
        config.study_name,
        config.storage_url,
        len(study.trials) - todo if todo == 0 else config.trials - todo,
        todo,
        config.sampler,
    )
    if todo:
        features_task(config)
        first_slot = len(study.trials)
        futures = [trial_task.submit(config, first_slot + index) for index in range(todo)]
        for future in futures:
            future.wait()
    return report_study(config, runner.space, apply_best)


def report_study(config: StudyConfig, space, apply_best: bool) -> dict:
    """Artifacts of the stored study (every trial, the history), the best trial's replay command, and the
    best values written into params.yaml only when asked."""
    logger = get_run_logger()
    study = open_study(config, space)
    create_table_artifact(trial_rows(study), key="tuning-trials", description=f"study {config.study_name}")
    best = best_trial(study) if completed(study) else None
    create_markdown_artifact(history_markdown(study, best), key="tuning-history", description="optimisation history")
    if best is None:
        raise TuningFailed(f"no trial of study {config.study_name!r} completed; see the trials table for errors")
    command = dvc_exp_command(best)
    print(f"best trial {best.number}: val accuracy {best.value:.4f}\nreplay it with:\n  {command}")
    applied = {}
    if apply_best:
        changed = apply_in_turn(Path(config.params_file), replay_overrides(best), logger.info)
        applied = {key: new for key, (_, new) in changed.items()}
        logger.info("wrote the best trial's values into %s: %s", config.params_file, applied or "already there")
    return {
        "best_trial": best.number,
        "val_accuracy": best.value,
        "params": best.params,
        "train_params": best.user_attrs.get("train_params"),
        "dvc_exp_run": command,
        "applied": applied,
        "trials": len(study.trials),
    }


def apply_in_turn(params_file: Path, overrides: dict, say=print) -> dict:
    """Write `overrides` into params.yaml in the working copy's turn: a pipeline run reads params.yaml at
    each of its stages, so the values change between runs, never in the middle of one."""

    def waiting(holder) -> None:
        say(f"{params_file} waits for the working copy: {holder.describe()}")

    with working_copy_turn(params_file.resolve().parent, on_wait=waiting):
        return apply_overrides(params_file, overrides)


@flow(name="transferline-tune-trials", log_prints=True)
def tune_trials(config: dict, slots: list[int]) -> list[dict]:
    """The trials of the given slots, one after another in this process (a worker of the cluster)."""
    study_config = StudyConfig(**config)
    runner = runner_for(study_config)
    runner.prepare_features()
    outcomes = []
    for slot in slots:
        if study_full(study_config, runner):
            print(f"slot {slot}: not run, the study already holds its {study_config.trials} trials")
            break
        outcome = run_trial(study_config, slot, runner)
        print(f"slot {slot}: trial {outcome['number']} {outcome['state']}, value {outcome['value']}")
        outcomes.append(outcome)
    return outcomes


def study_full(config: StudyConfig, runner) -> bool:
    """Finished plus live running trials reach the target: a resumed search on other workers covers the rest."""
    study = open_study(config, runner.space, storage=runner.storage(config))
    fail_stale_trials(study)
    return remaining_trials(config, study, runner.space) - live_trials(study) <= 0


def live_trials(study: optuna.Study) -> int:
    """RUNNING trials once stale ones were failed: each belongs to a worker that is still alive."""
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def share_slots(first_slot: int, count: int, runs: int) -> list[list[int]]:
    """`count` consecutive slots dealt round-robin over at most `runs` flow runs (none left empty)."""
    slots = list(range(first_slot, first_slot + count))
    return [slots[index::runs] for index in range(min(runs, count))]


def absolute(config: StudyConfig) -> StudyConfig:
    """Paths resolved here: a flow run on a worker starts in another directory."""
    paths = ("space_file", "params_file", "prepared_dir", "work_dir")
    return config.model_copy(update={name: str(Path(getattr(config, name)).resolve()) for name in paths})


FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@flow(name="transferline-tune-cluster", log_prints=True)
def tune_on_workers(
    config: StudyConfig, deployment: str, runs: int, apply_best: bool = False, poll_s: float = 2.0
) -> dict:
    """Share the missing trials out over `runs` flow runs of `deployment` (on the pool's workers), wait, report."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    config = absolute(config)
    runner = runner_for(config)
    study = open_study(config, runner.space)
    fail_stale_trials(study)
    todo = max(0, remaining_trials(config, study, runner.space) - live_trials(study))
    logger.info("study %r in %s: %d trials to run on %s", config.study_name, config.storage_url, todo, deployment)
    if todo:
        features_task(config)  # computed once here, on the shared path, not once per worker
        parameters = config.model_dump()
        submitted = [
            run_deployment(deployment, parameters={"config": parameters, "slots": slots}, timeout=0)
            for slots in share_slots(len(study.trials), todo, runs)
        ]
        logger.info("submitted %s", ", ".join(run.name for run in submitted))
        with get_client(sync_client=True) as client:
            while True:
                states = [client.read_flow_run(run.id).state for run in submitted]
                if all(state is not None and state.type.value in FINAL_STATES for state in states):
                    break
                time.sleep(poll_s)
        for run, state in zip(submitted, states, strict=True):
            logger.info("flow run %s: %s %s", run.name, state.type.value, state.message or "")
    return report_study(config, runner.space, apply_best)


def run_tune(config: StudyConfig, workers: int = 1, apply_best: bool = False) -> dict:
    """The flow on a thread pool of `workers` parallel trials (torch threads shared out between them)."""
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    runner = ThreadPoolTaskRunner(max_workers=workers)
    return tune.with_options(task_runner=runner)(config, apply_best)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(__doc__.splitlines()[0])
    parser.add_argument("--space", default=default_of("space_file"), help="search space YAML (default: %(default)s)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=default_of("sampler"))
    parser.add_argument(
        "--trials", type=int, default=default_of("trials"), help="finished trials the study should hold"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="trials in parallel (threads; with --deployment: flow runs on workers)"
    )
    parser.add_argument("--storage", default=None, help="SQLAlchemy URL, postgresql://... too (default: sqlite)")
    parser.add_argument(
        "--deployment", default=None, help="run trials as flow runs of this deployment: transferline-tune-trials/trials"
    )
    parser.add_argument("--study-name", default=default_of("study_name"))
    parser.add_argument("--seed", type=int, default=default_of("seed"))
    parser.add_argument("--pruner", choices=PRUNERS, default=default_of("pruner"))
    parser.add_argument("--pruner-startup-trials", type=int, default=default_of("pruner_startup_trials"))
    parser.add_argument("--pruner-warmup-epochs", type=int, default=default_of("pruner_warmup_epochs"))
    parser.add_argument("--params", default=default_of("params_file"))
    parser.add_argument("--prepared", default=default_of("prepared_dir"))
    parser.add_argument("--work-dir", default=default_of("work_dir"), help="study.db, feature cache, trial checkpoints")
    parser.add_argument("--grace-period", type=int, default=default_of("grace_period"),
                        help="seconds without a heartbeat after which a RUNNING trial counts as dead")  # fmt: skip
    parser.add_argument("--apply-best", action="store_true", help="write the best trial's values into params.yaml")
    return parser


def study_config(args: argparse.Namespace) -> StudyConfig:
    """The validated StudyConfig of the command line (a bad value: ParamsError naming the field)."""
    return StudyConfig(
        space_file=args.space,
        params_file=args.params,
        prepared_dir=args.prepared,
        work_dir=args.work_dir,
        storage=args.storage,
        study_name=args.study_name,
        sampler=args.sampler,
        seed=args.seed,
        trials=args.trials,
        pruner=args.pruner,
        pruner_startup_trials=args.pruner_startup_trials,
        pruner_warmup_epochs=args.pruner_warmup_epochs,
        grace_period=args.grace_period,
        heartbeat_interval=max(1, min(default_of("heartbeat_interval"), args.grace_period // 2)),
    )


def search(args: argparse.Namespace) -> None:
    config = study_config(args)
    if args.deployment and config.storage is None:
        raise ParamsError("--deployment needs --storage on a database every worker reaches (e.g. postgresql://...)")
    if args.deployment:
        summary = tune_on_workers(config, args.deployment, max(1, args.workers), args.apply_best)
    else:
        summary = run_tune(config, max(1, args.workers), args.apply_best)
    print(f"best trial {summary['best_trial']} of {summary['trials']}: val accuracy {summary['val_accuracy']:.4f}")
    print(f"replay it through the pipeline:\n  {summary['dvc_exp_run']}")
    if summary["applied"]:
        print(f"wrote the best trial's values into {config.params_file}: {summary['applied']}")


def main(argv: list[str] | None = None) -> int:
    return run_command(search, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
