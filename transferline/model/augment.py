"""Batched augmentation on normalised tensors: random-resized crop and horizontal flip in one resample.

One affine grid per image and a single `grid_sample` call for the whole batch, on whatever
device the batch is on: cheap on a CPU, and no per-image Python loop. The crop parameters
are drawn from a CPU generator, so a seeded run draws the same crops on any device.

Crops stay inside the image, and bilinear weights sum to one, so resampling commutes with the
per-channel normalisation: augmenting after `normalize` equals normalising an augmented image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transferline.config import AugmentParams
from transferline.model import exact_math

RATIO_RANGE = (3 / 4, 4 / 3)  # aspect ratios of the crop, as torchvision's RandomResizedCrop


def crop_thetas(n: int, params: AugmentParams, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) affine matrices mapping the output grid onto a random crop, mirrored at random."""
    scale = torch.empty(n).uniform_(params.crop_scale_min, 1.0, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(RATIO_RANGE[0]), math.log(RATIO_RANGE[1]), generator=generator)
    ratio = torch.exp(log_ratio)
    width = exact_math.sqrt(scale * ratio).clamp(max=1.0)  # fractions of the side
    height = exact_math.sqrt(scale / ratio).clamp(max=1.0)
    centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.ones(n)
    if params.hflip:
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = centre_y
    return theta


def augment_batch(
    batch: torch.Tensor, params: AugmentParams, generator: torch.Generator, shard: tuple[int, int] = (0, 1)
) -> torch.Tensor:
    """Float NCHW batch -> same shape, each image a random crop (resized back) and maybe mirrored.

    `shard` (rank, processes): the batch is rows rank::processes of a global batch (data-parallel training);
    the crops are drawn for the whole global batch, as one process would draw them, and this shard's kept.
    """
    if not params.enabled:
        return batch
    rank, processes = shard
    theta = crop_thetas(batch.shape[0] * processes, params, generator)[rank::processes]
    theta = theta.to(batch.device, batch.dtype, non_blocking=True)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
