"""The fine-tuning loop: batches from the cached uint8 pixels, augmentation on the device, AdamW or SGD,
warm-up + cosine or one-cycle, label smoothing, early stopping (counted once the LR has annealed),
best-epoch selection, and a checkpoint every epoch that a re-run resumes from.

Under torchrun the same loop runs data-parallel (DDP): each process takes its rows of every global batch of
`train.batch_size` images and the gradients are averaged; validation is shared out and summed. Rank 0 alone
reads and writes the checkpoint. See transferline/model/distributed.py for why N processes train the model
one process trains.

Model input contract: float32 NCHW normalised exactly as `transferline.data.preprocessing.normalize`
(done here by its bit-exact torch twin), so export and serving feed the model the same way.
"""

from __future__ import annotations

import functools
import gc
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
from torch.nn.parallel import DistributedDataParallel

from transferline.config import TrainParams
from transferline.data.pixel_cache import SplitData
from transferline.data.preprocessing import PreprocessSpec
from transferline.data.preprocessing_torch import normalize_torch
from transferline.errors import ParamsError
from transferline.model.augment import augment_batch
from transferline.model.checkpoints import CheckpointStore
from transferline.model.distributed import SINGLE, Ranks, cuda_device, sync_global_rng
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


def resolve_runtime(params: TrainParams, ranks: Ranks = SINGLE) -> Runtime:
    """Device `auto` is CUDA when present; explicit requests the machine cannot meet are params errors.

    Data-parallel on CUDA: process k of a machine runs on cuda:k.
    """
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
    if cuda and ranks.distributed:
        device = cuda_device(ranks)
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


def configure_threads(params: TrainParams, runtime: Runtime, processes: int = 1) -> int:
    """Intra-op threads and torch's determinism switches for this run.

    Reproducible: a fixed thread count (the count changes the bytes). Otherwise one thread per CPU this
    process may use (its CPU affinity), few on a GPU run, and cuDNN autotuning + TF32 on CUDA. `processes`
    data-parallel processes on this machine share the CPUs out.
    """
    pin = pinning(params.reproducible, params.num_threads, processes)
    cuda = runtime.device.type == "cuda"
    threads = pin.threads if pin.threads is not None else default_threads(cuda, processes)
    torch.set_num_threads(threads)
    apply_determinism(params.reproducible, cuda)
    return threads


def default_threads(cuda: bool, processes: int = 1) -> int:
    """Threads per process when nothing pins them: the CPUs this process may use, shared out, few on a GPU run."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, usable // processes)
    return min(threads, 4) if cuda else threads


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
    model: nn.Module,
    source: BatchSource,
    spec: PreprocessSpec,
    runtime: Runtime,
    batch_size: int,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32 logits (on the device) for a whole split, or for its `rows`, in eval mode."""
    model.eval()
    rows = torch.arange(len(source)) if rows is None else rows
    outputs = []
    for start in range(0, len(rows), batch_size):
        images, _ = source.get(rows[start : start + batch_size])
        with autocast(runtime):
            outputs.append(model(model_input(images, spec, runtime)).float())
    if not outputs:  # more processes than images: this one has none
        return torch.empty(0, model.head.out_features, device=runtime.device)
    return torch.cat(outputs)


def evaluate(
    model: nn.Module,
    source: BatchSource,
    spec: PreprocessSpec,
    runtime: Runtime,
    batch_size: int,
    ranks: Ranks = SINGLE,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a split, without augmentation or label smoothing.

    Data-parallel: each process scores its rows and the sums are added up, so every process gets the same
    two numbers (and takes the same early-stopping decision).
    """
    if not ranks.distributed:
        logits = predict_logits(model, source, spec, runtime, batch_size)
        labels = source.labels.to(logits.device)
        loss = nn.functional.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(1) == labels).float().mean().item()
        return loss, accuracy
    rows = ranks.rows(torch.arange(len(source)))
    logits = predict_logits(model, source, spec, runtime, batch_size, rows)
    labels = source.labels[rows].to(logits.device)
    sums = torch.stack(
        [
            nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
            (logits.argmax(1) == labels).sum().double(),
        ]
    )
    loss_sum, correct = ranks.sum(sums).tolist()
    return loss_sum / len(source), correct / len(source)


def build_optimizer(plan: TransferPlan, params: TrainParams) -> torch.optim.Optimizer:
    groups = optimizer_param_groups(plan, params.weight_decay)
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum, nesterov=params.momentum > 0)
    # fused: one kernel per step, and the only AdamW whose square root is not MKL's vendor-dependent one
    # (exact_math.py), so its bytes are the same on every x86 CPU. CPU and CUDA both have it.
    return torch.optim.AdamW(groups, lr=params.lr, fused=True)


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


class DataParallelReplicas:
    """The DDP wrapper of the model, rebuilt whenever the set of trained parameters changes.

    DDP averages the gradients of the parameters that required them when it was built; gradual unfreezing
    adds parameters epoch by epoch, so each new set gets a new wrapper (which also re-broadcasts rank 0's
    weights: a no-op, they are the same everywhere). One process: the model itself.
    """

    def __init__(self, model: nn.Module, runtime: Runtime, ranks: Ranks, sync_buffers: bool) -> None:
        self.model, self.runtime, self.ranks = model, runtime, ranks
        self.sync_buffers = sync_buffers
        self.wrapper: DistributedDataParallel | None = None
        self.trained: tuple[bool, ...] = ()

    def for_training(self) -> nn.Module:
        if not self.ranks.distributed:
            return self.model
        trained = tuple(p.requires_grad for p in self.model.parameters())
        if self.wrapper is None or trained != self.trained:
            self.close()
            cuda = self.runtime.device.type == "cuda"
            # global-batch BatchNorm: running statistics alike everywhere, nothing to broadcast; per process:
            # rank 0's, broadcast before every forward, so that validation and the saved model agree
            self.wrapper = DistributedDataParallel(
                self.model,
                device_ids=[self.runtime.device] if cuda else None,
                forward_sync_buffers=self.sync_buffers,
            )
            self.trained = trained
        return self.wrapper

    def close(self) -> None:
        """Drop the wrapper and its gradient hooks, so that a later one is the only one averaging."""
        if self.wrapper is not None:
            self.wrapper = None
            gc.collect()


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
    ranks: Ranks = SINGLE,
) -> dict:
    """One epoch; `model` is the DDP wrapper when data-parallel. Metrics are those of the global batches."""
    n = len(source)
    batch_size = global_batch_size(params.batch_size, n, ranks.world_size)
    order = torch.randperm(n, generator=generator)
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    progress = Progress(steps, description) if ranks.primary else None
    start = time.perf_counter()
    for step in range(steps):
        images, labels = source.get(ranks.rows(order[step * batch_size : (step + 1) * batch_size]))
        x = model_input(images, spec, runtime)
        x = augment_batch(x, params.augment, generator, (ranks.rank, ranks.world_size))
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
        if progress is not None:
            progress.update(
                step + 1, lambda t=loss_sum, s=step: t.item() / (s + 1), seen / (time.perf_counter() - start)
            )
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
    seconds = time.perf_counter() - start
    if progress is not None:
        progress.close()
    if ranks.distributed:  # every process's mean losses and hits, summed: the global batches' figures
        totals = ranks.sum(torch.stack([loss_sum.double(), correct.double()]))
        loss_total, correct_total = totals[0].item() / ranks.world_size, totals[1].item()
    else:
        loss_total, correct_total = loss_sum.item(), correct.item()
    return {
        "train_loss": loss_total / steps,
        "train_accuracy": correct_total / (steps * batch_size),
        "images_per_s": steps * batch_size / seconds,
        "train_seconds": seconds,
    }


def global_batch_size(batch_size: int, n: int, processes: int) -> int:
    """Images per step over all processes: train.batch_size, or the whole split when smaller, split evenly."""
    return max(processes, min(batch_size, n) // processes * processes)


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
    ranks: Ranks = SINGLE,
) -> FitResult:
    """Train per the plan, resuming from `store` when it holds this run's checkpoint; best weights end in `model`.

    Data-parallel (`ranks` of torchrun's processes, process group started): every process runs this, with
    `model` passed through global_batch.to_global_batch before `plan` was made. Rank 0 alone reads `store`
    (and broadcasts what it read), writes it and feeds `sink`; only its `model` ends with the best weights.
    """
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

    resumed = ranks.broadcast(store.load_last() if ranks.primary else None)
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
    elif ranks.primary:
        store.clear()
    sync_global_rng(ranks, runtime.device)  # dropout masks are drawn alike on every process
    if sink is not None and ranks.primary:
        sink.start(history)

    train_source, val_source = BatchSource(train, runtime.device), BatchSource(val, runtime.device)
    eval_batch = max(2 * params.batch_size, 64)
    last_unfreeze = _last_unfreeze_epoch(plan)
    stopped_early = stopper.should_stop
    replicas = DataParallelReplicas(model, runtime, ranks, params.distributed.batchnorm == "per_process")
    for epoch in range(first_epoch, params.epochs):
        if stopped_early:
            break
        plan.apply(model, epoch)
        if epoch == first_epoch or epoch <= last_unfreeze:
            log.info("epoch %d: %s", epoch + 1, plan.describe(epoch))
        stats = train_one_epoch(
            replicas.for_training(),
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
            ranks,
        )
        eval_start = time.perf_counter()
        val_loss, val_accuracy = evaluate(model, val_source, spec, runtime, eval_batch, ranks)
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
        if improved and ranks.primary:
            store.save_best(model.state_dict(), epoch + 1)
        if ranks.primary:
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
        if sink is not None and ranks.primary:
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

    replicas.close()
    if ranks.primary:
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
