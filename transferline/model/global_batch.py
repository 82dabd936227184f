"""Layers that make one process's rows of a batch behave as part of the global batch, under DDP.

With N processes each sees B/N images of a global batch of B (rows r, r+N, ... on rank r; see
distributed.py). Three kinds of layer would make the result depend on N:

- BatchNorm in training mode normalises with its batch's statistics: here with those of the global batch.
  On CUDA that is torch's SyncBatchNorm (NCCL); on CPU, where torch's SyncBatchNorm has no kernels,
  `GlobalBatchNorm2d`: each process's per-channel mean and variance, combined over the processes with one
  differentiable all_reduce (float64 sums), so the backward pass sums over the processes too. Cost: one
  all_reduce per trained BatchNorm layer in the forward pass and one in the backward pass. The running
  statistics are those of the global batch, the same on every process. (Per-process statistics, the
  `per_process` choice below, are cheaper but train another model for every process count.)
- dropout and stochastic depth draw their masks from torch's global RNG for their own rows: here every
  process draws the mask of the whole global batch (the RNG is seeded alike and stays in step on every
  process) and keeps its rows, so each image gets the mask it gets in one process.

Frozen BatchNorm (eval mode) uses its running statistics and talks to no one. The state dict keys are those
of the layers replaced, so a model trained this way saves and loads as a plain one.

`train.distributed.batchnorm: per_process` keeps BatchNorm per process: cheaper on CPUs, where those
all-reduces are most of DDP's cost (bench/results/scale.md), but the model then depends on the process
count; the processes hold rank 0's running statistics, broadcast before every forward.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import StochasticDepth

log = logging.getLogger("transferline.model.global_batch")


def _shard() -> tuple[int, int]:
    """(rank, world size), or (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes, differentiable: the gradient of a sum over processes is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def global_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mean, biased variance, count) per channel of `x` (N, C, ...) over every process's rows, in float64.

    Each process's mean and variance are computed stably in float32; only their combination (sum of
    count * mean and of count * (variance + mean^2)) is float64, where the subtraction loses nothing.
    """
    dims = [0, *range(2, x.dim())]
    variance, mean = torch.var_mean(x.float(), dim=dims, correction=0)
    count = x.numel() // x.shape[1]
    mean64 = mean.double()
    local = torch.cat([mean64 * count, (variance.double() + mean64 * mean64) * count, mean64.new_full((1,), count)])
    total = _AllReduceSum.apply(local)
    channels = x.shape[1]
    n = float(total[-1].item())
    global_mean = total[:channels] / n
    global_variance = (total[channels : 2 * channels] / n - global_mean * global_mean).clamp_min(0)
    return global_mean, global_variance, n


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch (CPU, gloo); plain otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, world = _shard()
        if not self.training or world == 1:
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
                factor = 1.0 / float(self.num_batches_tracked)
        mean, variance, count = global_moments(x)
        if self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = variance * (count / max(count - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        scale = torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.double()
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.double()
        shape = (1, -1, *([1] * (x.dim() - 2)))
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))


def _global_rows_mask(shape: tuple[int, ...], probability: float, like: torch.Tensor) -> torch.Tensor:
    """A Bernoulli(probability) mask drawn for the whole global batch (the RNG advances alike everywhere),
    this process's rows of it."""
    rank, world = _shard()
    mask = torch.empty((shape[0] * world, *shape[1:]), dtype=like.dtype, device=like.device)
    return mask.bernoulli_(probability)[rank::world]


class GlobalBatchDropout(nn.Dropout):
    """nn.Dropout whose mask is this process's rows of the global batch's mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, world = _shard()
        if not self.training or self.p == 0.0 or world == 1:
            return super().forward(x)
        keep = 1.0 - self.p
        if keep == 0.0:
            return x * 0.0
        return x * _global_rows_mask(tuple(x.shape), keep, x).div_(keep)


class GlobalBatchStochasticDepth(StochasticDepth):
    """torchvision's StochasticDepth whose per-row draws are this process's rows of the global batch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, world = _shard()
        if not self.training or self.p == 0.0 or world == 1 or self.mode != "row":
            return super().forward(x)  # "batch" mode: one draw for all rows, alike on every process
        keep = 1.0 - self.p
        noise = _global_rows_mask((x.shape[0],) + (1,) * (x.dim() - 1), keep, x)
        return x * noise.div_(keep) if keep > 0.0 else x * noise


def _plain_to_global(module: nn.Module, batchnorm: bool) -> nn.Module | None:
    """The global-batch replacement of `module` (sharing its parameters and buffers), or None to keep it."""
    if type(module) is nn.BatchNorm2d and batchnorm:
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine)
        new.weight, new.bias = module.weight, module.bias
        new.track_running_stats = module.track_running_stats
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
    elif type(module) is nn.Dropout:
        new = GlobalBatchDropout(module.p)
    elif type(module) is StochasticDepth:
        new = GlobalBatchStochasticDepth(module.p, module.mode)
    else:
        return None
    return new.train(module.training)


def _replace_children(module: nn.Module, batchnorm: bool) -> int:
    replaced = 0
    for name, child in module.named_children():
        new = _plain_to_global(child, batchnorm)
        if new is None:
            replaced += _replace_children(child, batchnorm)
        else:
            module.add_module(name, new)
            replaced += 1
    return replaced


def to_global_batch(model: nn.Module, cuda: bool, batchnorm: bool = True) -> nn.Module:
    """Replace, in place, the layers of `model` that would see only this process's rows (see the module doc).

    Call it before the optimizer and the transfer plan are built: they must see the new layers. CUDA: torch's
    SyncBatchNorm for every BatchNorm; CPU: GlobalBatchNorm2d (BatchNorm1d/3d stay per process, with a warning).
    `batchnorm` false (train.distributed.batchnorm: per_process): BatchNorm stays per process, on purpose.
    """
    if cuda and batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    replaced = _replace_children(model, batchnorm)
    left = sorted({type(m).__name__ for m in model.modules() if batchnorm and _per_process_batchnorm(m, cuda)})
    if left:
        log.warning("%s layers normalise with each process's own rows (no global-batch version on CPU)", left)
    log.debug("%d layers now see the global batch", replaced)
    return model


def _per_process_batchnorm(module: nn.Module, cuda: bool) -> bool:
    if cuda or not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return False
    return not isinstance(module, GlobalBatchNorm2d | nn.SyncBatchNorm)
