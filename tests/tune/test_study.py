"""Studies on tiny real data: each sampler, pruning, resuming, feature reuse, reproducible head-only trials,
seeding, storage, and the test split left alone."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torchvision

from flows.tune_report import dvc_exp_command
from transferline.model.head import fit_probe
from transferline.search.search_space import parse_search_space, resolve_params
from transferline.search.tuning import (
    StudyConfig,
    TrialRunner,
    best_trial,
    finished_count,
    make_sampler,
    open_storage,
    open_study,
    run_study,
    suggest,
)

MIXED_SPACE = {
    "train.strategy": {"type": "categorical", "choices": ["feature_extraction", "partial"]},
    "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True, "grid": [1.0e-3]},
    "train.frozen_blocks": {"type": "int", "low": 10, "high": 16, "step": 6},
    "train.probe_l2": {"type": "float", "low": 1.0e-3, "high": 1.0, "log": True, "grid": [0.1]},
}


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_each_sampler_finds_a_best_trial_within_the_space(study_config, sampler):
    config = study_config(MIXED_SPACE, sampler=sampler, trials=3, train={"epochs": 1, "warmup_epochs": 0.0})
    runner = TrialRunner(config)
    study = run_study(config, runner)
    # grid: 2 strategies x 1 lr x 2 frozen_blocks x 1 l2 = 4 points, 3 asked for
    assert finished_count(study) == 3
    best = best_trial(study)
    assert runner.space.contains(best.params)
    assert 0.0 <= best.value <= 1.0
    # the full resolved TrainParams are recorded, and they are what the values resolve to
    assert best.user_attrs["train_params"] == resolve_params(runner.base, best.params).model_dump(mode="json")
    if sampler == "grid":
        assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3  # no point run twice
    command = dvc_exp_command(best)
    assert command.startswith("dvc exp run -S ") and f"train.strategy={best.params['train.strategy']}" in command


def test_grid_search_stops_when_the_grid_is_done(study_config):
    config = study_config(sampler="grid", trials=10)  # head-only space: probe_l2 grid [0.01, 0.3]
    study = run_study(config, TrialRunner(config))
    assert sorted(t.params["train.probe_l2"] for t in study.trials) == [0.01, 0.3]


def test_pruner_stops_a_clearly_worse_trial_after_its_first_epoch(study_config):
    space = {
        "train.strategy": ["full"],
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 10.0, "log": True},
    }
    config = study_config(space, trials=2, train={"epochs": 3}, pruner_startup_trials=1, pruner_warmup_epochs=0)
    runner = TrialRunner(config)
    study = open_study(config, runner.space)
    # a finished reference trial that was perfect at every epoch makes the median decision deterministic
    distributions = {
        "train.strategy": optuna.distributions.CategoricalDistribution(["full"]),
        "train.lr": optuna.distributions.FloatDistribution(1.0e-4, 10.0, log=True),
    }
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.strategy": "full", "train.lr": 1e-3},
            distributions=distributions,
            value=1.0,
            intermediate_values={1: 1.0, 2: 1.0, 3: 1.0},
        )
    )
    study.enqueue_trial({"train.strategy": "full", "train.lr": 10.0})  # an absurd learning rate
    study = run_study(config, runner)
    bad = study.trials[1]
    assert bad.params["train.lr"] == 10.0
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert list(bad.intermediate_values) == [1] and bad.intermediate_values[1] < 1.0  # stopped after epoch 1 of 3
    assert bad.user_attrs["train_params"]["lr"] == 10.0


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_an_interrupted_study_resumes_without_redoing_finished_trials(study_config):
    config = study_config(trials=2, heartbeat_interval=1, grace_period=1)
    runner = TrialRunner(config)
    study = run_study(config, runner)
    finished = {t.number: t.datetime_complete for t in study.trials}
    assert len(finished) == 2 and all(finished.values())

    # a worker killed mid-trial: RUNNING, values drawn, heartbeat no longer beating
    storage = open_storage(config)
    killed = study.ask()
    suggest(killed, runner.space)
    storage.record_heartbeat(killed._trial_id)
    time.sleep(2.5)

    resumed = run_study(config.__class__(**{**config.__dict__, "trials": 3}), runner)
    trials = resumed.trials
    assert {t.number: t.datetime_complete for t in trials[:2]} == finished  # untouched, not re-run
    assert trials[killed.number].state == optuna.trial.TrialState.FAIL  # not silently left RUNNING
    retry = trials[-1]
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == killed.number and retry.params == trials[killed.number].params
    assert len(trials) == 4 and finished_count(resumed) == 3

    again = run_study(config.__class__(**{**config.__dict__, "trials": 3}), runner)
    assert len(again.trials) == 4  # nothing left to do


def count_data_passes(monkeypatch) -> list[int]:
    """The batch sizes of the images MobileNetV2 is run on from now on: not the blank image build_model sizes
    a multi-layer head with (train.probe_layers), which is no pass over the data."""
    calls: list[int] = []
    forward = torchvision.models.MobileNetV2.forward

    def counting_forward(self, x):
        if x.any():
            calls.append(x.shape[0])
        return forward(self, x)

    monkeypatch.setattr(torchvision.models.MobileNetV2, "forward", counting_forward)
    return calls


def test_a_head_only_study_runs_the_backbone_once_not_per_trial(study_config, monkeypatch):
    calls = count_data_passes(monkeypatch)
    images = 24 + 6  # train + val of the tiny data

    config = study_config(trials=4, sampler="random")
    study = run_study(config, TrialRunner(config))
    assert finished_count(study) == 4
    assert sum(calls) == images  # one pass over train + val for the whole study

    calls.clear()
    fresh_process = TrialRunner(config)  # same work dir: the features come from the disk cache
    run_study(config.__class__(**{**config.__dict__, "trials": 6}), fresh_process)
    assert calls == []

    calls.clear()
    recompute = study_config(trials=2, reuse_features=False, study_name="recompute")
    run_study(recompute, TrialRunner(recompute))
    assert sum(calls) == images * 3  # the counter does count: up front + once per trial without reuse


def test_the_tuner_never_reads_the_test_split(study_config, prepared_without_test, monkeypatch):
    opened = []
    load = np.load

    def recording_load(path, *args, **kwargs):
        opened.append(str(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", recording_load)
    space = {**MIXED_SPACE, "train.strategy": ["feature_extraction", "partial"]}
    tiny = {"epochs": 1, "warmup_epochs": 0.0}
    config = study_config(space, trials=3, prepared_dir=str(prepared_without_test), train=tiny)
    runner = TrialRunner(config)
    for strategy in ("partial", "feature_extraction"):  # both kinds of trial, whatever the sampler draws
        open_study(config, runner.space).enqueue_trial({"train.strategy": strategy})
    study = run_study(config, runner)
    assert finished_count(study) == 3  # works although the test arrays do not exist
    assert {t.params["train.strategy"] for t in study.trials[:2]} == {"partial", "feature_extraction"}
    names = [Path(p).name for p in opened]
    assert "train_images.npy" in names and "val_images.npy" in names
    assert not [name for name in names if name.startswith("test_")]


HEAD_SPACE = {
    "train.probe_l2": {"type": "float", "low": 1.0e-3, "high": 1.0, "log": True},
    "train.probe_standardize": [True, False],
    "train.probe_label_smoothing": {"type": "float", "low": 0.0, "high": 0.3},
}


def test_head_only_trials_are_reproduced_by_their_params_alone(study_config, monkeypatch):
    calls = count_data_passes(monkeypatch)
    config = study_config(HEAD_SPACE, trials=3)
    runner = TrialRunner(config)
    a = {"train.probe_l2": 0.01, "train.probe_standardize": False, "train.probe_label_smoothing": 0.2}
    b = {"train.probe_l2": 0.5, "train.probe_standardize": True, "train.probe_label_smoothing": 0.0}
    study = open_study(config, runner.space)
    for values in (a, b, a):
        study.enqueue_trial(values)
    first, other, again = run_study(config, runner).trials
    assert sum(calls) == 24 + 6  # one backbone pass for both standardisations and every trial
    assert first.params == a and first.user_attrs["train_params"]["probe_standardize"] is False
    assert first.user_attrs["train_params"]["probe_label_smoothing"] == 0.2
    assert other.user_attrs["val_loss"] != first.user_attrs["val_loss"]  # the values do reach the head
    for name in ("val_loss", "head_evaluations"):
        assert again.user_attrs[name] == first.user_attrs[name]  # not warm-started by the trial before
    # what the train stage fits for these params (features from the study's cache) is the trial's head
    features = runner.features.get(resolve_params(runner.base, a))
    replay = fit_probe(
        features["train"], runner.data.train.labels, features["val"], runner.data.val.labels, 3, [0.01],
        standardize=False, label_smoothing=0.2,
    )  # fmt: skip
    assert replay.val_loss == pytest.approx(first.user_attrs["val_loss"], rel=1e-6)


def test_studies_with_other_seeds_draw_other_values():
    space = parse_search_space(HEAD_SPACE, {})

    def draw(seed: int, slot: int) -> dict:
        study = optuna.create_study(sampler=make_sampler(StudyConfig(sampler="random", seed=seed), space, slot))
        return suggest(study.ask(), space)

    assert draw(0, 0) == draw(0, 0)  # a re-run draws the same values
    assert draw(0, 1) != draw(0, 0)  # parallel slots differ
    assert draw(1, 0) != draw(0, 1)  # and seed 1 is not seed 0 shifted by one slot


def test_a_runner_keeps_one_storage_whose_commits_do_not_wait_for_the_disk(study_config, monkeypatch):
    config = study_config(trials=3)
    runner = TrialRunner(config)
    opened = []
    real_open = open_storage
    monkeypatch.setattr("transferline.search.tuning.open_storage", lambda c: opened.append(c) or real_open(c))
    run_study(config, runner)
    assert len(opened) == 1  # not one per trial
    with runner.storage(config).engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    # a fresh storage (another process) sees every trial the runner's storage committed
    assert finished_count(open_study(config, runner.space, storage=real_open(config))) == 3
