"""Stage `train`: transfer-learn an ImageNet backbone on the prepared images.

Reads `data/prepared` (dataset.json and the cached uint8 pixels of train and val; never test)
and the `train` params section; the input preprocessing comes from dataset.json, i.e. what
the pixels were actually made with. Writes `models/` (model.pt + model.json), `metrics/train.json`,
the run record `metrics/train_run.json` (machine, caps, libraries, timings, each epoch's figures), DVCLive curves in
`dvclive/train`, and two directories that persist across runs: the feature cache `data/features`
(feature_extraction) and the per-epoch checkpoint `checkpoints/train`, which a re-run with the
same params and data resumes from after a crash or a kill.

With `train.reproducible` the stage first re-executes itself with the pinned math environment
(transferline/model/reproducibility.py), so models/ holds the same bytes on every x86-64 machine.
Everything machine-dependent (CPU, timings, whether it resumed) goes to the run record, not to models/.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

from transferline import atomic
from transferline.cli import USER_ERROR_EXIT, run_cli, stage_parser
from transferline.config import TrainParams, load_section
from transferline.data.pixel_cache import load_split, read_dataset
from transferline.data.preprocessing import PreprocessSpec
from transferline.model.advice_signals import advise
from transferline.model.advisor import FEATURE_EXTRACTION, Advice, Recipe
from transferline.model.backbone_choice import BackboneChoice, choose_backbone
from transferline.model.backbones import (
    LAST_LAYER,
    TransferModel,
    build_model,
    check_input_size,
    feature_dim,
    get_spec,
    imagenet_normalization,
)
from transferline.model.checkpoints import CheckpointStore, resume_hint, run_digest
from transferline.model.distributed import (
    SINGLE,
    Ranks,
    check_process_count,
    check_same_run,
    is_peer_failure,
    launched_by_torchrun,
    peer_failure_summary,
    ranks_from_env,
    resolve_backend,
    start_process_group,
    stop_process_group,
)
from transferline.model.feature_taps import HEAD_FEATURES
from transferline.model.features import KEY_FILE, ProbeResult, cache_key, cached_features, fit_probe, install_head
from transferline.model.global_batch import to_global_batch
from transferline.model.launch import LaunchInterrupted, ProcessesFailed, launch, process_env
from transferline.model.reproducibility import Pinning, is_pinned, pinning, reexec_pinned
from transferline.model.run_environment import loaded_code_digest, training_environment
from transferline.model.strategies import check_params, make_plan
from transferline.model.trained_model import MODEL_FILE, save_trained_model
from transferline.model.training import (
    BatchSource,
    EpochSink,
    FitResult,
    Runtime,
    SplitData,
    configure_threads,
    evaluate,
    fit,
    resolve_runtime,
)

log = logging.getLogger("transferline.train")

PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
FEATURES_DIR = Path("data/features")
CHECKPOINT_DIR = Path("checkpoints/train")
METRICS_FILE = Path("metrics/train.json")
RUN_FILE = Path("metrics/train_run.json")
LIVE_DIR = Path("dvclive/train")
ADVICE_FILE = "advice.json"  # models/advice.json: what `strategy: auto` measured and chose, and why


def warn_on_normalization(params: TrainParams, spec: PreprocessSpec) -> None:
    if not params.pretrained or params.weights_path:
        return
    mean, std = imagenet_normalization(get_spec(params.backbone))
    if not (np.allclose(mean, spec.mean, atol=1e-4) and np.allclose(std, spec.std, atol=1e-4)):
        log.warning(
            "preprocess mean/std %s/%s differ from the %s weights' own %s/%s: features may suffer",
            spec.mean,
            spec.std,
            params.backbone,
            mean,
            std,
        )


def advice_record(advice: Advice | None, backbone_choice: BackboneChoice | None) -> dict | None:
    """models/advice.json: what `auto` (strategy, backbone or both) measured and chose; None if the user chose."""
    if advice is None and backbone_choice is None:
        return None
    document = advice.to_dict() if advice is not None else {}
    if backbone_choice is not None:
        document["backbone_choice"] = backbone_choice.to_dict()
    return document


def validation_check(
    params: TrainParams,
    advice: Advice,
    fine_tuned_model: TransferModel,
    fine_tuned: FitResult,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    runtime: Runtime,
    out: Outputs,
    dataset: dict,
) -> tuple[TrainParams, Advice, TransferModel, FitResult]:
    """`auto`'s check after fine-tuning: keep the fine-tuned model only if it beats the feature-extraction
    head on the validation split by more than the rule's margin (Advice.checked). That head is fitted here
    (seconds: where auto measured the signals, its features are in the cache) on a freshly built pretrained
    model, so the check weighs the fine-tune against the very model it would ship instead.
    Returns the params, advice, model and result that were kept."""
    torch.manual_seed(params.seed)
    num_classes = fine_tuned_model.head.out_features
    probe_recipe = Recipe(FEATURE_EXTRACTION).overrides(num_blocks=0, epochs=0)
    probe_params = TrainParams(**{**params.model_dump(), **probe_recipe})
    model, weights = build_model(
        params.backbone, num_classes, params.pretrained, params.weights_path, feature_layers_for(probe_params)
    )
    key = features_key(probe_params, model, weights, dataset)
    probe = fit_feature_extraction(model, train, val, spec, probe_params, runtime, out.features_dir, key, None)
    last = fine_tuned.history[-1]["val_accuracy"] if fine_tuned.history else None
    checked = advice.checked(fine_tuned.best_val_accuracy, len(val), last, probe.best_val_accuracy)
    log.info("%s", checked.notes[-1])  # the check's figures and verdict, as advice.json words them
    if checked.recipe == advice.recipe:
        return params, checked, fine_tuned_model, fine_tuned
    return TrainParams(**{**params.model_dump(), **checked.params}), checked, model, probe


def feature_layers_for(params: TrainParams) -> tuple[float, ...]:
    """The depths the head reads: the probe's layers where the head may be feature extraction's (auto measures
    its signals with that model, so the head's features are cached once), else the body's output alone."""
    return params.probe_layers if params.strategy in ("feature_extraction", "auto") else LAST_LAYER


def seeded_model(params: TrainParams, num_classes: int, feature_layers: tuple[float, ...]):
    """The pretrained model with its new head initialised from the run's seed."""
    torch.manual_seed(params.seed)
    return build_model(params.backbone, num_classes, params.pretrained, params.weights_path, feature_layers)


def features_key(params: TrainParams, model: TransferModel, weights: dict, dataset: dict) -> dict:
    """The key of the features `model`'s head reads (transferline/model/features.py)."""
    return cache_key(
        params.backbone, weights, dataset["data_version"], dataset["preprocess"], feature_dim(model), model.taps
    )


def fit_probe_head(
    model: TransferModel,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    params: TrainParams,
    runtime: Runtime,
    features_dir: Path,
    key: dict,
) -> tuple[ProbeResult, bool, float]:
    """The linear probe on the pretrained body's cached features, installed as the model's head: the whole of
    feature_extraction, and the start of a fine-tune with `head_init: probe`. Returns the probe, whether the
    features came from the cache, and the seconds the features took."""
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    splits = {"train": train, "val": val}
    features, from_cache = cached_features(
        model, splits, spec, runtime, features_dir, key, max(2 * params.batch_size, 64)
    )
    feature_seconds = time.perf_counter() - start
    probe = fit_probe(
        features["train"],
        train.labels,
        features["val"],
        val.labels,
        model.head.out_features,
        params.probe_l2,
        standardize=params.probe_standardize,
        label_smoothing=params.probe_label_smoothing,
    )
    install_head(model, probe)
    return probe, from_cache, feature_seconds


def start_from_probe(
    model: TransferModel,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    params: TrainParams,
    runtime: Runtime,
    features_dir: Path,
    key: dict,
    ranks: Ranks,
) -> None:
    """`head_init: probe`: the fine-tune starts from the feature_extraction head, so its first steps adapt the
    body to a head that already fits rather than to a random one. Rank 0 fits it, every process installs it."""
    head = None
    if ranks.primary:
        probe, _, seconds = fit_probe_head(model, train, val, spec, params, runtime, features_dir, key)
        log.info(
            "head_init: probe (l2=%g, val acc %.4f; features %.1f s, head %.2f s)",
            probe.l2,
            probe.val_accuracy,
            seconds,
            probe.seconds,
        )
        head = (model.head.weight.detach().cpu().clone(), model.head.bias.detach().cpu().clone())
    weight, bias = ranks.broadcast(head)
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)


def fit_feature_extraction(
    model: TransferModel,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    params: TrainParams,
    runtime: Runtime,
    features_dir: Path,
    key: dict,
    sink: EpochSink | None,
) -> FitResult:
    """Frozen body: cached features -> logistic-regression head, installed into the model."""
    probe, from_cache, feature_seconds = fit_probe_head(model, train, val, spec, params, runtime, features_dir, key)
    log.info("head fitted in %.2f s (l2=%g, val acc %.4f)", probe.seconds, probe.l2, probe.val_accuracy)
    # the assembled model, scored end to end: it must agree with the probe's own val score
    val_loss, val_accuracy = evaluate(
        model, BatchSource(val, runtime.device), spec, runtime, max(2 * params.batch_size, 64)
    )
    if abs(val_accuracy - probe.val_accuracy) * len(val) > 1.5:  # one borderline image may flip in float32
        log.warning("assembled model scores %.4f on val, the probe %.4f", val_accuracy, probe.val_accuracy)
    record = {
        "epoch": 1,
        "train_accuracy": probe.train_accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "feature_seconds": feature_seconds,
        "head_fit_seconds": probe.seconds,
    }
    if sink is not None:
        sink.start([])
        sink.epoch(record)
    return FitResult(
        [record],
        1,
        val_accuracy,
        val_loss,
        0,
        False,
        False,
        {
            "probe": {"l2": probe.l2, "trials": probe.trials, "seconds": probe.seconds},
            "features_from_cache": from_cache,
        },
    )


# How a run went, not what it made: timings and cache hits go to metrics/train.json only, so that
# models/ (and every stage after it) hashes the same when the same params and data are trained again.
RUN_ONLY_KEYS = ("features_from_cache",)


def model_facts(extra: dict) -> dict:
    """`extra` as model.json records it: without timings or cache hits."""
    facts = {key: value for key, value in extra.items() if key not in RUN_ONLY_KEYS}
    if "probe" in facts:
        facts["probe"] = {key: value for key, value in facts["probe"].items() if key != "seconds"}
    return facts


def run_facts(extra: dict) -> dict:
    """What metrics/train.json adds from `extra`: the head's fit time and whether features came from the cache."""
    facts = {key: extra[key] for key in RUN_ONLY_KEYS if key in extra}
    if "probe" in extra:
        facts["head_fit_seconds"] = extra["probe"]["seconds"]
    return facts


def ensure_features_dir(features_dir: Path) -> None:
    """The feature cache is a DVC out of this stage whatever the strategy: make it exist, never clobber it."""
    if not (features_dir / KEY_FILE).is_file():
        atomic.write_json(features_dir / KEY_FILE, {"key": None, "note": "filled by train.strategy=feature_extraction"})


NOT_DISTRIBUTED = (
    "train.strategy=feature_extraction is not distributed (cached features and a logistic head, fitted in one "
    "process in seconds): "
)
RANK_0_ALONE = NOT_DISTRIBUTED + "rank 0 trains alone, the other %d process(es) stop here"
ONE_PROCESS = NOT_DISTRIBUTED + "train.distributed.nproc=%d is not used, this one process trains"


def run(
    params: TrainParams,
    prepared_dir: Path = PREPARED_DIR,
    models_dir: Path = MODELS_DIR,
    features_dir: Path = FEATURES_DIR,
    checkpoint_dir: Path = CHECKPOINT_DIR,
    metrics_file: Path = METRICS_FILE,
    live_dir: Path | None = LIVE_DIR,
    stop_after_epoch: int | None = None,
    run_file: Path | None = None,
    ranks: Ranks = SINGLE,
) -> dict:
    """Train and write the model; returns the metrics (with `interrupted` when stopped on purpose).

    The run record goes to `run_file`, by default next to `metrics_file` (metrics/train_run.json).
    Under torchrun (`ranks`: this process among the data-parallel ones) every process calls this; rank 0
    alone writes, and the others return {"rank": ...} only.
    """
    wall_start = time.perf_counter()
    check_params(params)
    check_process_count(params, ranks.world_size)
    processes = ranks.local_world_size  # this process's share of the machine, as it was started (pinned) with
    if ranks.distributed and params.strategy == "feature_extraction":
        log.info(RANK_0_ALONE, ranks.world_size - 1)
        if not ranks.primary:
            return {"rank": ranks.rank}
        ranks = SINGLE
    runtime = resolve_runtime(params, ranks)
    threads = configure_threads(params, runtime, processes)
    pin = pinning(params.reproducible, params.num_threads, processes)
    if pin.reproducible and not is_pinned(pin):
        log.warning(
            "train.reproducible: this process was not started with %s, so the kernels are not capped and the "
            "bytes may differ on another CPU (`python -m stages.train` restarts itself with them)",
            pin.describe(),
        )
    outputs = Outputs(models_dir, features_dir, checkpoint_dir, metrics_file, live_dir, run_file)
    setup = Setup(runtime, threads, pin, ranks, wall_start)
    if not ranks.distributed:
        return train_and_write(params, prepared_dir, outputs, stop_after_epoch, setup)
    start_process_group(ranks, resolve_backend(params.distributed.backend, runtime.device), runtime.device)
    try:
        return train_and_write(params, prepared_dir, outputs, stop_after_epoch, setup)
    finally:
        stop_process_group()


@dataclass(frozen=True)
class Outputs:
    """Where the stage writes (rank 0 only, under DDP)."""

    models_dir: Path
    features_dir: Path
    checkpoint_dir: Path
    metrics_file: Path
    live_dir: Path | None
    run_file: Path | None


@dataclass(frozen=True)
class Setup:
    """The process as `run` set it up."""

    runtime: Runtime
    threads: int
    pin: Pinning
    ranks: Ranks
    wall_start: float


def train_and_write(
    params: TrainParams,
    prepared_dir: Path,
    out: Outputs,
    stop_after_epoch: int | None,
    setup: Setup,
) -> dict:
    """`run` once the process (group) is set up."""
    runtime, ranks = setup.runtime, setup.ranks
    dataset = read_dataset(prepared_dir)
    spec = PreprocessSpec.from_dict(dataset["preprocess"])
    classes = list(dataset["classes"])
    train = load_split(prepared_dir, "train", len(classes), spec.image_size)
    val = load_split(prepared_dir, "val", len(classes), spec.image_size)
    advice, advice_timings, backbone_choice = None, {}, None
    if params.backbone == "auto":
        if ranks.primary:  # rank 0 measures and chooses; the others take its answer
            ensure_features_dir(out.features_dir)
            params, backbone_choice, advice, advice_timings = choose_backbone(
                params, train, val, spec, runtime, out.features_dir, dataset
            )
        params, backbone_choice, advice, advice_timings = ranks.broadcast(
            (params, backbone_choice, advice, advice_timings)
        )
        check_params(params)
    check_input_size(params.backbone, spec.image_size, params.pretrained)

    model, weights = seeded_model(params, len(classes), feature_layers_for(params))
    warn_on_normalization(params, spec)
    key = features_key(params, model, weights, dataset)
    if params.strategy == "auto":
        if ranks.primary:  # rank 0 measures and decides; the others take its answer
            ensure_features_dir(out.features_dir)
            blocks = len(model.blocks())
            params, advice, advice_timings = advise(
                params, model, train, val, spec, runtime, out.features_dir, key, blocks, params.advisor_rule
            )
        params, advice, advice_timings = ranks.broadcast((params, advice, advice_timings))
        if params.strategy != "feature_extraction":  # a fine-tune: the usual head, seeded as if built for it
            model, weights = seeded_model(params, len(classes), LAST_LAYER)
            key = features_key(params, model, weights, dataset)
    if ranks.distributed and params.strategy == "feature_extraction":  # what auto chose
        log.info(RANK_0_ALONE, ranks.world_size - 1)
        if not ranks.primary:
            return {"rank": ranks.rank}
        ranks = SINGLE
    if ranks.distributed:
        # before the plan: it must see the new layers
        to_global_batch(model, runtime.device.type == "cuda", params.distributed.batchnorm == "global")
    plan = make_plan(model, params)
    log.info("%s on %s (%d threads); %s", params.backbone, runtime.describe(), setup.threads, plan.describe(0))
    digest = run_digest(
        checkpoint_recipe(params, ranks), dataset["data_version"], dataset["preprocess"], classes, len(train)
    )
    check_same_run(ranks, digest)
    if ranks.distributed:
        log.info(
            "data-parallel: %d processes, global batch %d = %d x %d per process; BatchNorm over %s",
            ranks.world_size,
            params.batch_size,
            ranks.world_size,
            params.batch_size // ranks.world_size,
            "the global batch" if params.distributed.batchnorm == "global" else "each process's rows",
        )
    store = CheckpointStore(out.checkpoint_dir, digest)
    sink = None
    if out.live_dir is not None and ranks.primary:
        from transferline.model.tracking import LiveSink

        sink = LiveSink(out.live_dir)

    if params.strategy == "feature_extraction":
        result = fit_feature_extraction(model, train, val, spec, params, runtime, out.features_dir, key, sink)
        store.clear()
    else:
        if ranks.primary:
            ensure_features_dir(out.features_dir)
        if params.head_init == "probe":
            start_from_probe(model, train, val, spec, params, runtime, out.features_dir, key, ranks)
        result = fit(model, plan, train, val, spec, params, runtime, store, sink, stop_after_epoch, ranks)
    if sink is not None:
        sink.end()
    if not ranks.primary:
        return {"rank": ranks.rank, "epochs_done": len(result.history)}
    if result.interrupted:
        return {
            "interrupted": True,
            "epochs_done": len(result.history),
            "resumed_from_epoch": result.resumed_from_epoch,
        }
    if advice is not None and advice.validation_check:  # only ever set for a fine-tuning recipe
        params, advice, model, result = validation_check(
            params, advice, model, result, train, val, spec, runtime, out, dataset
        )
    params_json = params.model_dump(mode="json")

    wall = time.perf_counter() - setup.wall_start
    rates = [r["images_per_s"] for r in result.history if "images_per_s" in r]
    metrics = {
        "backbone": params.backbone,
        "strategy": params.strategy,
        "val_accuracy": result.best_val_accuracy,
        "val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from_epoch,
        "train_images_per_s": statistics.median(rates) if rates else None,
        "wall_seconds": wall,
        "data_version": dataset["data_version"],
        **run_facts(result.extra),
        **({"auto_recipe": advice.recipe} if advice else {}),
        **({"auto_backbone": backbone_choice.chosen} if backbone_choice else {}),
        **({"advice_seconds": sum(advice_timings.values())} if advice_timings else {}),
    }
    meta = {
        "backbone": params.backbone,
        "strategy": params.strategy,
        "classes": classes,
        "num_classes": len(classes),
        "feature_dim": feature_dim(model),
        **({"feature_layers": list(params.probe_layers)} if model.taps != (HEAD_FEATURES,) else {}),
        "preprocess": spec.to_dict(),
        "input": {
            "shape": ["batch", 3, spec.image_size, spec.image_size],
            "dtype": "float32",
            "normalization": "transferline.data.preprocessing.normalize: uint8 RGB / 255, then (x - mean) / std; "
            "not inside the model",
        },
        "params": params_json,
        "weights": weights,
        "data_version": dataset["data_version"],
        "best_epoch": result.best_epoch,
        "val": {"accuracy": result.best_val_accuracy, "loss": result.best_val_loss},
        # only what the same inputs always give: models/ must hash the same on every machine
        "training": {
            "epochs_run": len(result.history),
            "stopped_early": result.stopped_early,
            "params_digest": digest,
            **model_facts(result.extra),
        },
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }
    advice_document = advice_record(advice, backbone_choice)
    if advice_document is not None:
        meta["advice"] = advice_document
    models_dir = out.models_dir
    save_trained_model(
        models_dir, model.cpu(), meta, extra_files={ADVICE_FILE: advice_document} if advice_document else None
    )
    atomic.write_json(out.metrics_file, metrics)
    run_file = out.run_file or out.metrics_file.parent / RUN_FILE.name
    record = run_record(models_dir, digest, dataset["data_version"], setup.pin, runtime, wall, result)
    atomic.write_json(run_file, {**record, "distributed": distributed_facts(params, ranks)})
    store.finish(best_epoch=result.best_epoch, val_accuracy=result.best_val_accuracy, epochs_run=len(result.history))
    log.info(
        "best val accuracy %.4f at epoch %d of %d; model in %s (%.0f s)",
        result.best_val_accuracy,
        result.best_epoch,
        len(result.history),
        models_dir,
        wall,
    )
    return metrics


def checkpoint_recipe(params: TrainParams, ranks: Ranks) -> dict:
    """What a checkpoint must have been written for: the params, and the process count when BatchNorm is per
    process (then the count changes what is computed; with global BatchNorm it does not)."""
    recipe = params.model_dump(mode="json")
    if ranks.distributed and params.distributed.batchnorm == "per_process":
        recipe["per_process_batchnorm_over"] = ranks.world_size
    return recipe


def distributed_facts(params: TrainParams, ranks: Ranks) -> dict | None:
    """How the run was shared out (the run record's `distributed`); None for one process."""
    if not ranks.distributed:
        return None
    return {
        "processes": ranks.world_size,
        "processes_per_machine": ranks.local_world_size,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "images_per_process_per_step": params.batch_size // ranks.world_size,
        "batchnorm": (
            "statistics of the global batch (SyncBatchNorm on CUDA, all_reduce of the moments on CPU)"
            if params.distributed.batchnorm == "global"
            else "statistics of each process's rows; running statistics rank 0's"
        ),
    }


def run_record(
    models_dir: Path, digest: str, data_version: str, pin: Pinning, runtime: Runtime, wall: float, result: FitResult
) -> dict:
    """How this run went and on what: the machine-dependent facts, kept out of models/ (see the module doc)."""
    probe = result.extra.get("probe", {})
    return {
        "model_sha256": hashlib.sha256((models_dir / MODEL_FILE).read_bytes()).hexdigest(),
        "params_digest": digest,
        "data_version": data_version,
        "code_digest": loaded_code_digest(Path(__file__).absolute().parents[1]),
        "environment": training_environment(pin, str(runtime.device)),
        "runtime": runtime.describe(),
        "wall_seconds": wall,
        "resumed_from_epoch": result.resumed_from_epoch,
        **(
            {"features_from_cache": result.extra["features_from_cache"]}
            if "features_from_cache" in result.extra
            else {}
        ),
        **({"head_fit_seconds": probe["seconds"]} if "seconds" in probe else {}),
        # per epoch: losses, accuracies, learning rate, seconds (what a study needs to judge a shorter schedule
        # or an earlier stop without training again)
        "history": result.history,
    }


def main(args) -> int | None:
    params = load_section("train", TrainParams, args.params)
    if launched_by_torchrun():
        return run_as_rank(params, args, ranks_from_env())
    if params.distributed.nproc > 1 and params.strategy != "feature_extraction":
        return launch_ranks(params)
    reexec_pinned(pinning(params.reproducible, params.num_threads))  # returns only when already pinned, or off
    if params.distributed.nproc > 1:
        log.info(ONE_PROCESS, params.distributed.nproc)
    run(params, stop_after_epoch=args.stop_after_epoch)
    return None


def run_as_rank(params: TrainParams, args, ranks: Ranks) -> int | None:
    """One of torchrun's processes: pin (re-executing this process if needed), train, and on a peer's failure
    stop with a line that says so rather than a traceback."""
    if not ranks.primary:
        logging.getLogger("transferline").setLevel(logging.WARNING)  # rank 0 says it once
    reexec_pinned(pinning(params.reproducible, params.num_threads, ranks.local_world_size))
    try:
        run(params, stop_after_epoch=args.stop_after_epoch, ranks=ranks)
    except RuntimeError as exc:
        if not is_peer_failure(exc):
            raise
        log.error(
            "%s: a collective failed (%s): another process has stopped, so this one stops too%s",
            ranks.describe(),
            peer_failure_summary(exc),
            f". {resume_hint(CHECKPOINT_DIR)}" if ranks.primary else "",
        )
        return 1
    return None


def launch_ranks(params: TrainParams) -> int | None:
    """`python -m stages.train` with train.distributed.nproc > 1: run it in that many processes, as torchrun would.

    A process that failed on an error it explained (exit 2: bad params or data) fails the launch with 2, so the
    flow does not retry it; any other failure (a killed process) with 1, naming the checkpoint a re-run resumes.
    """
    check_params(params)  # bad params stop here, before any process starts
    check_process_count(params, params.distributed.nproc)
    env = process_env(params.reproducible, params.num_threads, params.distributed.nproc, cuda_requested(params))
    try:
        launch("stages.train", sys.argv[1:], params.distributed.nproc, env)
    except ProcessesFailed as failed:
        if failed.explained:
            print(f"error: data-parallel training stopped on the error above: {failed}", file=sys.stderr)
            return USER_ERROR_EXIT
        print(f"error: data-parallel training failed: {failed}. {resume_hint(CHECKPOINT_DIR)}", file=sys.stderr)
        return 1
    except LaunchInterrupted as stopped:
        print(f"interrupted ({stopped}): the processes were stopped. {resume_hint(CHECKPOINT_DIR)}", file=sys.stderr)
        return 128 + stopped.signum
    return None


def cuda_requested(params: TrainParams) -> bool:
    return params.device.startswith("cuda") or (params.device == "auto" and torch.cuda.is_available())


if __name__ == "__main__":
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--stop-after-epoch",
        type=int,
        default=None,
        help="stop after this epoch, leaving the checkpoint a re-run resumes from (for tests)",
    )
    run_cli(main, parser)
