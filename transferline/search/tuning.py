"""One hyperparameter-search trial, and the Optuna study around it (storage, sampler, pruner).

A trial resolves its full TrainParams (params.yaml's `train` section + the sampled values), records
them on the trial, and trains on the prepared train split, scored on the val split; the test split
is never opened. Head-only (feature_extraction) trials fit only the logistic head on backbone
features that are computed once per study and cached on disk (`<work_dir>/features/<backbone>`,
keyed like the train stage's cache), so a head-only search never runs the backbone per trial; the
features are also kept in memory prepared for the head (transferline.model.head.HeadFeatures, one per
body and `probe_standardize` value), so a trial is only the head fit itself, from zero, and its result
depends on its params alone.
Fine-tuning trials report val accuracy every epoch (through training's EpochSink) so the pruner can
stop bad ones early. The study lives in an RDB storage (SQLite by default): a search that is
interrupted resumes there, and trials whose process died are failed by Optuna's heartbeat and re-queued.
How a study is shown (trial tables, history, the replay command) is the flow's job: flows/tune_report.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
import torch

from transferline.config import TrainParams, read_params_file
from transferline.data.preprocessing import PreprocessSpec
from transferline.errors import DataError, ParamsError
from transferline.model.backbones import LAST_LAYER, build_model, check_input_size, feature_dim
from transferline.model.checkpoints import CheckpointStore, run_digest
from transferline.model.features import cache_key, cached_features, compute_features
from transferline.model.head import HeadFeatures, fit_prepared, prepare_head_features
from transferline.model.reproducibility import apply_determinism
from transferline.model.strategies import check_params, make_plan
from transferline.model.training import EpochSink, Runtime, SplitData, fit, resolve_runtime
from transferline.search.search_space import (
    Choice,
    FloatRange,
    IntRange,
    SearchSpace,
    load_search_space,
    resolve_params,
)
from transferline.search.study_config import PRUNERS, SAMPLERS, StudyConfig

log = logging.getLogger("transferline.search.tuning")

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
TUNED_SPLITS = ("train", "val")  # the selection metric is val's; test stays unseen
_MODEL_INIT_LOCK = threading.Lock()  # head init draws from torch's global RNG: one trial at a time


# ---------------------------------------------------------------- data and features


@dataclass
class TuningData:
    """The train and val splits of data/prepared, loaded once per process (never test)."""

    spec: PreprocessSpec
    classes: list[str]
    data_version: str
    preprocess: dict
    train: SplitData
    val: SplitData


def load_tuning_data(prepared_dir: Path) -> TuningData:
    from transferline.data.pixel_cache import load_split, read_dataset

    dataset = read_dataset(prepared_dir)
    spec = PreprocessSpec.from_dict(dataset["preprocess"])
    classes = list(dataset["classes"])
    train, val = (load_split(prepared_dir, name, len(classes), spec.image_size) for name in TUNED_SPLITS)
    return TuningData(spec, classes, dataset["data_version"], dataset["preprocess"], train, val)


def feature_source(params: TrainParams) -> str:
    """Folder name for the features of one body: backbone, where its weights came from and the depths read."""
    parts: list = [params.pretrained, str(params.weights_path) if params.weights_path else None]
    if tuple(params.probe_layers) != LAST_LAYER:  # the depths the head reads (train.probe_layers)
        parts.append(list(params.probe_layers))
    origin = json.dumps(parts)
    return f"{params.backbone}-{hashlib.sha256(origin.encode()).hexdigest()[:8]}"


class FeatureBank:
    """Backbone features per body, computed once (then read from disk or memory) for every head-only trial,
    and the same features prepared for head fits, once per body and standardisation choice."""

    def __init__(self, data: TuningData, root: Path, reuse: bool = True) -> None:
        self.data = data
        self.root = Path(root)
        self.reuse = reuse
        self._features: dict[str, dict[str, np.ndarray]] = {}
        self._prepared: dict[tuple[str, bool], HeadFeatures] = {}
        self._lock = threading.Lock()

    def get(self, params: TrainParams) -> dict[str, np.ndarray]:
        name = feature_source(params)
        if not self.reuse:
            return self._compute(params, None)
        with self._lock:
            if name not in self._features:
                self._features[name] = self._compute(params, self.root / name)
            return self._features[name]

    def head_features(self, params: TrainParams) -> HeadFeatures:
        """The body's features ready for the head (per `probe_standardize`); without reuse, recomputed every call."""
        key = (feature_source(params), params.probe_standardize)
        if not self.reuse:
            return self._prepare(self.get(params), params.probe_standardize)
        with self._lock:
            prepared = self._prepared.get(key)
        if prepared is None:
            prepared = self._prepare(self.get(params), params.probe_standardize)
            with self._lock:
                prepared = self._prepared.setdefault(key, prepared)
        return prepared

    def _prepare(self, features: dict[str, np.ndarray], standardize: bool) -> HeadFeatures:
        return prepare_head_features(
            features["train"], self.data.train.labels, features["val"], self.data.val.labels, standardize
        )

    def _compute(self, params: TrainParams, directory: Path | None) -> dict[str, np.ndarray]:
        runtime = resolve_runtime(params)
        model, weights = build_model(
            params.backbone, len(self.data.classes), params.pretrained, params.weights_path, params.probe_layers
        )
        model.to(runtime.device)
        if runtime.channels_last:
            model.to(memory_format=torch.channels_last)
        splits = {"train": self.data.train, "val": self.data.val}
        batch = max(2 * params.batch_size, 64)
        if directory is None:
            return {
                name: compute_features(model, split, self.data.spec, runtime, batch) for name, split in splits.items()
            }
        key = cache_key(
            params.backbone, weights, self.data.data_version, self.data.preprocess, feature_dim(model), model.taps
        )
        features, from_cache = cached_features(model, splits, self.data.spec, runtime, directory, key, batch)
        log.info("%s features for %s", "cached" if from_cache else "computed", directory.name)
        return features


# ---------------------------------------------------------------- one trial


class PruningSink(EpochSink):
    """Feeds each epoch's val accuracy to the pruner; raises TrialPruned when it says stop."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def start(self, history: list[dict]) -> None:
        for record in history:  # epochs a resumed (retried) trial already did
            self.trial.report(record["val_accuracy"], record["epoch"])

    def epoch(self, record: dict) -> None:
        self.trial.report(record["val_accuracy"], record["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"val accuracy {record['val_accuracy']:.4f} at epoch {record['epoch']}")


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, dim in space.dimensions.items():
        if isinstance(dim, Choice):
            values[key] = trial.suggest_categorical(key, list(dim.choices))
        elif isinstance(dim, IntRange):
            values[key] = trial.suggest_int(key, dim.low, dim.high, step=dim.step, log=dim.log)
        elif isinstance(dim, FloatRange):
            values[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return values


class TrialRunner:
    """The objective: sampled values -> full TrainParams -> val accuracy (head-only or fine-tuning)."""

    def __init__(self, config: StudyConfig, data: TuningData | None = None) -> None:
        self.config = config
        self.base = dict(read_params_file(config.params_file).get("train") or {})
        self.space = load_search_space(Path(config.space_file), self.base)
        self.data = data or load_tuning_data(Path(config.prepared_dir))
        self.features = FeatureBank(self.data, Path(config.work_dir) / "features", config.reuse_features)
        self._storages: dict[tuple, optuna.storages.RDBStorage] = {}
        self._storages_lock = threading.Lock()

    def storage(self, config: StudyConfig) -> optuna.storages.RDBStorage:
        """One storage per database for this runner's trials: opening one checks the schema (~50 ms), too much
        to repeat per trial. Held by the runner, not the process, so a database replaced on disk between
        runs is opened afresh rather than reached through a stale connection."""
        key = (config.storage_url, config.heartbeat_interval, config.grace_period, config.max_retry)
        with self._storages_lock:
            if key not in self._storages:
                self._storages[key] = open_storage(config)
            return self._storages[key]

    def head_only_bodies(self) -> list[TrainParams]:
        """The bodies whose features head-only trials of this space can need (one per backbone choice)."""
        strategies = self.space.possible_values("strategy", self.base.get("strategy", "full"))
        if "feature_extraction" not in strategies:
            return []
        backbones = self.space.possible_values("backbone", self.base.get("backbone", "mobilenet_v2"))
        return [
            resolve_params(self.base, {"train.backbone": b, "train.strategy": "feature_extraction"}) for b in backbones
        ]

    def prepare_features(self) -> list[str]:
        """Features of every body head-only trials can use, prepared for every standardisation they can ask for."""
        standardize = self.space.possible_values("probe_standardize", self.base.get("probe_standardize", True))
        for params in self.head_only_bodies():
            for value in dict.fromkeys(standardize):
                self.features.head_features(params.model_copy(update={"probe_standardize": value}))
        return [feature_source(p) for p in self.head_only_bodies()]

    def __call__(self, trial: optuna.Trial) -> float:
        start = time.perf_counter()
        values = suggest(trial, self.space)
        try:
            params = resolve_params(self.base, values)
            check_params(params)
            check_input_size(params.backbone, self.data.spec.image_size, params.pretrained)
        except ParamsError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        trial.set_user_attr("train_params", params.model_dump(mode="json"))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process ran it
        try:
            if params.strategy == "feature_extraction":
                accuracy, details = self._head_only(params)
            else:
                accuracy, details = self._fine_tune(trial, params)
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", time.perf_counter() - start)
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr("seconds", time.perf_counter() - start)
        for name, value in details.items():
            trial.set_user_attr(name, value)
        return accuracy

    def _head_only(self, params: TrainParams) -> tuple[float, dict]:
        features = self.features.head_features(params)
        probe = fit_prepared(features, len(self.data.classes), params.probe_l2, params.probe_label_smoothing)
        details = {"probe_l2": probe.l2, "val_loss": probe.val_loss, "head_fit_seconds": probe.seconds}
        return probe.val_accuracy, {**details, "head_evaluations": probe.evaluations, "epochs_run": 1}

    def _fine_tune(self, trial: optuna.Trial, params: TrainParams) -> tuple[float, dict]:
        runtime: Runtime = resolve_runtime(params)
        # torch's determinism switches; the kernel caps need the worker started under
        # reproducibility.pinning(...).env (threads are shared out by the flow, so they are not pinned here)
        apply_determinism(params.reproducible, runtime.device.type == "cuda")
        with _MODEL_INIT_LOCK:
            torch.manual_seed(params.seed)
            model, _ = build_model(params.backbone, len(self.data.classes), params.pretrained, params.weights_path)
        plan = make_plan(model, params)
        digest = run_digest(
            params.model_dump(mode="json"),
            self.data.data_version,
            self.data.preprocess,
            self.data.classes,
            len(self.data.train),
        )
        # keyed by the recipe: a retried trial (same params) resumes from its last epoch
        store = CheckpointStore(Path(self.config.work_dir) / "checkpoints" / digest, digest)
        try:
            result = fit(
                model, plan, self.data.train, self.data.val, self.data.spec, params, runtime, store, PruningSink(trial)
            )
        except optuna.TrialPruned:
            shutil.rmtree(store.directory, ignore_errors=True)
            raise
        shutil.rmtree(store.directory, ignore_errors=True)
        return result.best_val_accuracy, {"best_epoch": result.best_epoch, "epochs_run": len(result.history)}


_RUNNERS: dict[StudyConfig, TrialRunner] = {}
_RUNNERS_LOCK = threading.Lock()


def runner_for(config: StudyConfig) -> TrialRunner:
    """One runner (data, features) per config and process, shared by the trial threads."""
    with _RUNNERS_LOCK:
        if config not in _RUNNERS:
            _RUNNERS[config] = TrialRunner(config)
        return _RUNNERS[config]


# ---------------------------------------------------------------- the study


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL with synchronous=NORMAL: a commit no longer waits for an fsync (~4 ms each, ~20 commits per trial).
    A killed process loses nothing; only an OS crash or power cut can lose the last commits, and the
    database stays consistent (a resumed study re-runs what is missing)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def sqlalchemy_url(url: str) -> str:
    """`postgresql://...` names the psycopg (3) driver that the `cluster` extra installs; SQLAlchemy alone would
    look for psycopg2. URLs with an explicit driver (`postgresql+asyncpg://`, ...) are left as they are."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def open_storage(config: StudyConfig) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats: a trial whose process died is failed after `grace_period` and re-queued."""
    url = sqlalchemy_url(config.storage_url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # parallel trials wait for SQLite's lock
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=config.heartbeat_interval,
                grace_period=config.grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=config.max_retry
                ),
            )
        except ImportError as exc:
            raise ParamsError(
                f"--storage {url.partition('://')[0]}://...: its database driver is not installed ({exc.name}); "
                "for PostgreSQL install the project's `cluster` extra (pip install -e '.[cluster]')"
            ) from exc
        except sqlalchemy.exc.OperationalError as exc:
            raise DataError(f"--storage: cannot reach the study database: {str(exc.orig).strip()}") from exc
    if url.startswith("sqlite:///"):
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # the connection that created the tables reconnects with the pragmas
    return storage


def make_sampler(config: StudyConfig, space: SearchSpace, slot: int) -> optuna.samplers.BaseSampler:
    """Seeded per (study seed, trial slot), so parallel workers do not draw the same values, a re-run draws the
    same ones, and studies with different seeds do not share draws (seed + slot would: seed 1 = seed 0 shifted)."""
    seed = int(np.random.SeedSequence([config.seed, slot]).generate_state(1)[0])
    if config.sampler == "grid":
        # one seed for every worker: the seed shuffles the grid, and grid_id must mean the same point to all
        return optuna.samplers.GridSampler(space.grid(), seed=config.seed)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "tpe":
        startup = min(10, max(2, config.trials // 3))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
    raise ParamsError(f"--sampler: {config.sampler!r} is not one of {', '.join(SAMPLERS)}")


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=config.pruner_startup_trials, n_warmup_steps=config.pruner_warmup_epochs
        )
    if config.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, config.pruner_warmup_epochs))
    if config.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ParamsError(f"--pruner: {config.pruner!r} is not one of {', '.join(PRUNERS)}")


def space_fingerprint(space: SearchSpace) -> str:
    return json.dumps({k: [type(d).__name__, asdict(d)] for k, d in space.dimensions.items()}, sort_keys=True)


def open_study(
    config: StudyConfig, space: SearchSpace, slot: int = 0, storage: optuna.storages.RDBStorage | None = None
) -> optuna.Study:
    """Create the study, or load it to resume; a stored study made for another space is refused."""
    study = optuna.create_study(
        storage=storage or open_storage(config),
        study_name=config.study_name,
        direction="maximize",
        sampler=make_sampler(config, space, slot),
        pruner=make_pruner(config),
        load_if_exists=True,
    )
    fingerprint = space_fingerprint(space)
    stored = study.user_attrs.get("search_space")
    if stored is None:
        study.set_user_attr("search_space", fingerprint)
        study.set_user_attr("metric", "val_accuracy")
    elif stored != fingerprint:
        raise ParamsError(
            f"study {config.study_name!r} in {config.storage_url} was made for another search space: "
            "use a new --study-name (or the old space) so finished trials stay comparable"
        )
    return study


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def fail_stale_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed process, with no heartbeat for `grace_period`, become FAIL (and re-queued)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def remaining_trials(config: StudyConfig, study: optuna.Study, space: SearchSpace) -> int:
    target = config.trials
    if config.sampler == "grid":
        target = min(target, space.grid_size())
    return max(0, target - finished_count(study))


def run_trial(config: StudyConfig, slot: int, runner: TrialRunner | None = None) -> dict:
    """Run one trial of the stored study; returns its number, state and value (a failure is recorded, not raised)."""
    runner = runner or runner_for(config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(config, runner.space, slot, runner.storage(config))
    done: list[optuna.trial.FrozenTrial] = []
    study.optimize(runner, n_trials=1, catch=(Exception,), callbacks=[lambda _s, t: done.append(t)])
    trial = done[0]
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "error": trial.user_attrs.get("error"),
    }


def run_study(config: StudyConfig, runner: TrialRunner | None = None) -> optuna.Study:
    """Run the remaining trials one after another (the Prefect flow runs them as parallel tasks instead)."""
    runner = runner or runner_for(config)
    study = open_study(config, runner.space, storage=runner.storage(config))
    fail_stale_trials(study)
    runner.prepare_features()
    first_slot = len(study.trials)
    for index in range(remaining_trials(config, study, runner.space)):
        run_trial(config, first_slot + index, runner)
    return open_study(config, runner.space, storage=runner.storage(config))


# ---------------------------------------------------------------- finished trials


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    trials = completed(study)
    if not trials:
        raise DataError(f"study {study.study_name!r} has no completed trial yet")
    return max(trials, key=lambda t: (t.value, -t.number))
