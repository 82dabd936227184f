"""The fine-tuning loop: batches from the cached uint8 pixels, augmentation on the device, AdamW or SGD,
warm-up + cosine or one-cycle, label smoothing, early stopping (counted once the LR has annealed),
best-epoch selection, and a checkpoint every epoch that a re-run resumes from.

Model input contract: float32 NCHW normalised exactly as `transferline.data.preprocessing.normalize`
(done here by its bit-exact torch twin), so export and serving feed the model the same way.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from transferline.config import TrainParams
from transferline.data.pixel_cache import SplitData
from transferline.data.preprocessing import PreprocessSpec
from transferline.data.preprocessing_torch import normalize_torch
from transferline.errors import ParamsError
from transferline.model.augment import augment_batch
from transferline.model.checkpoints import CheckpointStore
from transferline.model.reproducibility import apply_determinism, pinning
from transferline.model.strategies import NEVER, TransferPlan, optimizer_param_groups

log = logging.getLogger("transferline.model.training")

RESIDENT_BYTES = 2 << 30  # a split this small is copied to the GPU once instead of per batch
LOG_EVERY_S = 30.0  # plain progress lines (no terminal) at most this often


@dataclass(frozen=True)
class Runtime:
    """Where and how the loop runs, resolved from params against the actual machine."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def describe(self) -> str:
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off"
        return f"device {self.device}, amp {amp}, channels_last {'on' if self.channels_last else 'off'}"


def resolve_runtime(params: TrainParams) -> Runtime:
    """Device `auto` is CUDA when present; explicit requests the machine cannot meet are params errors."""
    if params.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(params.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ParamsError(f"train.device: {params.device!r} asked for, but no CUDA device is available")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ParamsError(
                    f"train.device: {params.device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s)"
                )
    cuda = device.type == "cuda"
    if params.amp == "auto":
        amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
    elif params.amp == "fp16":
        if not cuda:
            raise ParamsError("train.amp: fp16 needs a CUDA device; use bf16 or off on a CPU")
        amp_dtype = torch.float16
    else:
        amp_dtype = torch.bfloat16 if params.amp == "bf16" else None
    # channels_last helps convolutions on GPUs (tensor cores) and, measured, ~1.9x MobileNetV2 on CPU (oneDNN)
    channels_last = True if params.channels_last == "auto" else bool(params.channels_last)
    return Runtime(device, amp_dtype, channels_last)


def configure_threads(params: TrainParams, runtime: Runtime) -> int:
    """Intra-op threads and torch's determinism switches for this run.

    Reproducible: a fixed thread count (the count changes the bytes). Otherwise one thread per CPU this
    process may use (its CPU affinity), few on a GPU run, and cuDNN autotuning + TF32 on CUDA.
    """
    pin = pinning(params.reproducible, params.num_threads)
    cuda = runtime.device.type == "cuda"
    if pin.threads is not None:
        threads = pin.threads
    else:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = min(usable, 4) if cuda else usable
    torch.set_num_threads(threads)
    apply_determinism(params.reproducible, cuda)
    return threads


class BatchSource:
    """uint8 image batches and labels on the device for index tensors."""

    def __init__(self, split: SplitData, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        images = torch.from_numpy(split.images)
        labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
        self.resident = self.cuda and split.images.nbytes <= RESIDENT_BYTES
        if self.resident:
            self.images, self.labels = images.to(device), labels.to(device)
        else:
            self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resident:
            index = index.to(self.device, non_blocking=True)
            return self.images[index], self.labels[index]
        images, labels = self.images[index], self.labels[index]
        if self.cuda:
            images = images.pin_memory().to(self.device, non_blocking=True)
            labels = labels.pin_memory().to(self.device, non_blocking=True)
        return images, labels


def model_input(images_u8: torch.Tensor, spec: PreprocessSpec, runtime: Runtime) -> torch.Tensor:
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    return normalize_torch(images_u8, spec).contiguous(memory_format=fmt)


def autocast(runtime: Runtime):
    return torch.autocast(runtime.device.type, dtype=runtime.amp_dtype, enabled=runtime.amp_dtype is not None)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, source: BatchSource, spec: PreprocessSpec, runtime: Runtime, batch_size: int
) -> torch.Tensor:
    """float32 logits (on the device) for a whole split, in eval mode."""
    model.eval()
    outputs = []
    for start in range(0, len(source), batch_size):
        images, _ = source.get(torch.arange(start, min(start + batch_size, len(source))))
        with autocast(runtime):
            outputs.append(model(model_input(images, spec, runtime)).float())
    return torch.cat(outputs)


def evaluate(
    model: nn.Module, source: BatchSource, spec: PreprocessSpec, runtime: Runtime, batch_size: int
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a split, without augmentation or label smoothing."""
    logits = predict_logits(model, source, spec, runtime, batch_size)
    labels = source.labels.to(logits.device)
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def build_optimizer(plan: TransferPlan, params: TrainParams) -> torch.optim.Optimizer:
    groups = optimizer_param_groups(plan, params.weight_decay)
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum, nesterov=params.momentum > 0)
    return torch.optim.AdamW(groups, lr=params.lr)


ONECYCLE_START = 1 / 25  # one-cycle starts at lr / 25 ...
ONECYCLE_END = 1 / 25e4  # ... and ends at lr / 25e4, as torch's OneCycleLR defaults


def lr_factor(step: int, total: int, warmup: int, scheduler: str) -> float:
    """Multiplier of each group's peak LR at `step` (0-based) of `total`, after `warmup` rising steps.

    cosine: linear warm-up from ~0, then cosine to zero. onecycle: cosine rise from lr/25, then
    cosine fall to lr/25e4 (torch's OneCycleLR curve, without its momentum cycling). Written as a
    plain function so that any step count works, down to a one-step run.
    """
    if step < warmup:
        if scheduler == "cosine":
            return (step + 1) / warmup
        return ONECYCLE_START + (1 - ONECYCLE_START) * (1 - math.cos(math.pi * step / warmup)) / 2
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    floor = 0.0 if scheduler == "cosine" else ONECYCLE_END
    return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2


def schedule_steps(params: TrainParams, steps_per_epoch: int) -> tuple[int, int]:
    """(total steps, warm-up steps) of the run's LR schedule."""
    total = params.epochs * steps_per_epoch
    return total, min(round(params.warmup_epochs * steps_per_epoch), total - 1)


def build_scheduler(optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int):
    """A per-step LambdaLR over every param group (discriminative LRs keep their ratios)."""
    total, warmup = schedule_steps(params, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, total=total, warmup=warmup, scheduler=params.scheduler)
    )


PATIENCE_LR_FRACTION = 0.5  # early-stopping patience counts once the LR has annealed to this fraction of its peak


def first_patience_epoch(params: TrainParams, steps_per_epoch: int) -> int:
    """0-based index of the first epoch whose stall counts toward early stopping.

    Both schedules anneal: validation accuracy while the LR is still high is noisy and says little
    about where the run ends, since most of its gain comes as the LR falls. So an epoch counts only
    when the LR of its last step has come down to PATIENCE_LR_FRACTION of the peak (past the warm-up
    and half of the decay). With the default recipe (10 epochs, 1 warm-up) that is epoch 6 (1-based),
    so the earliest stop is after epoch 8, and never at epoch 5 near the peak.
    """
    total, warmup = schedule_steps(params, steps_per_epoch)
    for epoch in range(params.epochs):
        last_step = (epoch + 1) * steps_per_epoch - 1
        if last_step >= warmup and lr_factor(last_step, total, warmup, params.scheduler) <= PATIENCE_LR_FRACTION:
            return epoch
    return params.epochs - 1


class Progress:
    """A tqdm bar with loss and images/s on a terminal; a plain log line every LOG_EVERY_S otherwise."""

    def __init__(self, total: int, description: str) -> None:
        self.description = description
        self.total = total
        self.bar = None
        self.last_log = time.perf_counter()
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)

    def update(self, step: int, loss: Callable[[], float], images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0 or step == self.total:
                self.bar.set_postfix(loss=f"{loss():.4f}", img_s=f"{images_per_s:.0f}")
        elif time.perf_counter() - self.last_log >= LOG_EVERY_S:
            self.last_log = time.perf_counter()
            log.info("%s step %d/%d loss %.4f %.0f images/s", self.description, step, self.total, loss(), images_per_s)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class EarlyStopping:
    patience: int | None
    best_accuracy: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0  # 1-based; 0: none yet
    bad_epochs: int = 0
    counts_from: int = 0  # 1-based first epoch whose stall counts toward patience (see first_patience_epoch)

    def update(self, epoch: int, accuracy: float, loss: float) -> bool:
        """Record epoch `epoch` (1-based); True when it is the best so far (higher accuracy, then lower loss)."""
        improved = accuracy > self.best_accuracy or (accuracy == self.best_accuracy and loss < self.best_loss)
        if improved:
            self.best_accuracy, self.best_loss, self.best_epoch, self.bad_epochs = accuracy, loss, epoch, 0
        elif epoch >= self.counts_from:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience


class EpochSink:
    """Receives the metric history (e.g. DVCLive); `start` replays the epochs done before a resume."""

    def start(self, history: list[dict]) -> None:  # pragma: no cover - interface
        pass

    def epoch(self, record: dict) -> None:  # pragma: no cover - interface
        pass


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    resumed_from_epoch: int  # epochs done before this run started (0: a fresh start)
    stopped_early: bool
    interrupted: bool  # stopped on purpose after `stop_after_epoch` (tests), outputs not written
    extra: dict = field(default_factory=dict)


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _last_unfreeze_epoch(plan: TransferPlan) -> int:
    return max((g.trainable_from for g in plan.groups if g.trainable_from != NEVER), default=0)


def train_one_epoch(
    model: nn.Module,
    source: BatchSource,
    spec: PreprocessSpec,
    params: TrainParams,
    runtime: Runtime,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    criterion: nn.Module,
    generator: torch.Generator,
    steps: int,
    description: str,
) -> dict:
    n = len(source)
    batch_size = min(params.batch_size, n)
    order = torch.randperm(n, generator=generator)
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    progress = Progress(steps, description)
    start = time.perf_counter()
    for step in range(steps):
        images, labels = source.get(order[step * batch_size : (step + 1) * batch_size])
        x = model_input(images, spec, runtime)
        x = augment_batch(x, params.augment, generator)
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(runtime):
            logits = model(x)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach().float()
        correct += (logits.detach().argmax(1) == labels).sum()
        seen = (step + 1) * batch_size
        progress.update(step + 1, lambda t=loss_sum, s=step: t.item() / (s + 1), seen / (time.perf_counter() - start))
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
    seconds = time.perf_counter() - start
    progress.close()
    return {
        "train_loss": loss_sum.item() / steps,
        "train_accuracy": correct.item() / (steps * batch_size),
        "images_per_s": steps * batch_size / seconds,
        "train_seconds": seconds,
    }


def fit(
    model: nn.Module,
    plan: TransferPlan,
    train: SplitData,
    val: SplitData,
    spec: PreprocessSpec,
    params: TrainParams,
    runtime: Runtime,
    store: CheckpointStore,
    sink: EpochSink | None = None,
    stop_after_epoch: int | None = None,
) -> FitResult:
    """Train per the plan, resuming from `store` when it holds this run's checkpoint; best weights end in `model`."""
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(plan, params)
    steps = max(1, len(train) // params.batch_size)  # full batches only: BatchNorm dislikes a tiny last one
    scheduler = build_scheduler(optimizer, params, steps)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
    criterion = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    generator = torch.Generator().manual_seed(params.seed)
    # stalls count toward patience once every group trains and the LR has annealed (first_patience_epoch)
    counts_from = 1 + max(_last_unfreeze_epoch(plan), first_patience_epoch(params, steps))
    stopper = EarlyStopping(params.early_stopping_patience, counts_from=counts_from)
    history: list[dict] = []
    first_epoch = 0

    resumed = store.load_last()
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        _restore_rng(resumed["rng"], generator)
        stopper = EarlyStopping(params.early_stopping_patience, **resumed["early_stopping"], counts_from=counts_from)
        history = list(resumed["history"])
        first_epoch = int(resumed["epoch"])
        log.info("resuming from the checkpoint of epoch %d/%d in %s", first_epoch, params.epochs, store.directory)
    else:
        store.clear()
    if sink is not None:
        sink.start(history)

    train_source, val_source = BatchSource(train, runtime.device), BatchSource(val, runtime.device)
    eval_batch = max(2 * params.batch_size, 64)
    last_unfreeze = _last_unfreeze_epoch(plan)
    stopped_early = stopper.should_stop
    for epoch in range(first_epoch, params.epochs):
        if stopped_early:
            break
        plan.apply(model, epoch)
        if epoch == first_epoch or epoch <= last_unfreeze:
            log.info("epoch %d: %s", epoch + 1, plan.describe(epoch))
        stats = train_one_epoch(
            model,
            train_source,
            spec,
            params,
            runtime,
            optimizer,
            scheduler,
            scaler,
            criterion,
            generator,
            steps,
            f"epoch {epoch + 1}/{params.epochs}",
        )
        eval_start = time.perf_counter()
        val_loss, val_accuracy = evaluate(model, val_source, spec, runtime, eval_batch)
        record = {
            "epoch": epoch + 1,
            **stats,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": max(g["lr"] for g in optimizer.param_groups),
            "eval_seconds": time.perf_counter() - eval_start,
        }
        history.append(record)
        improved = stopper.update(epoch + 1, val_accuracy, val_loss)
        if improved:
            store.save_best(model.state_dict(), epoch + 1)
        store.save_last(
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(generator),
                "early_stopping": {
                    "best_accuracy": stopper.best_accuracy,
                    "best_loss": stopper.best_loss,
                    "best_epoch": stopper.best_epoch,
                    "bad_epochs": stopper.bad_epochs,
                },
                "history": history,
            }
        )
        if sink is not None:
            sink.epoch(record)
        log.info(
            "epoch %d/%d train loss %.4f acc %.4f | val loss %.4f acc %.4f%s | %.0f images/s, %.1f s",
            epoch + 1,
            params.epochs,
            record["train_loss"],
            record["train_accuracy"],
            val_loss,
            val_accuracy,
            " (best)" if improved else "",
            record["images_per_s"],
            record["train_seconds"] + record["eval_seconds"],
        )
        stopped_early = stopper.should_stop
        if stopped_early and epoch + 1 < params.epochs:
            log.info(
                "early stopping: val accuracy has not improved for %d epochs (best %.4f at epoch %d)",
                stopper.bad_epochs,
                stopper.best_accuracy,
                stopper.best_epoch,
            )
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < params.epochs:
            log.info("stopping after epoch %d as asked; a re-run resumes from its checkpoint", epoch + 1)
            return FitResult(
                history, stopper.best_epoch, stopper.best_accuracy, stopper.best_loss, first_epoch, False, True
            )

    model.load_state_dict(store.load_best())
    return FitResult(
        history,
        stopper.best_epoch,
        stopper.best_accuracy,
        stopper.best_loss,
        first_epoch,
        stopped_early and len(history) < params.epochs,
        False,
    )
