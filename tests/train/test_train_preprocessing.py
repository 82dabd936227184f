"""The torch twin of the preprocessing contract, and the batched augmentation built on it."""

from __future__ import annotations

import numpy as np
import torch

from transferline.config import AugmentParams
from transferline.data.preprocessing import PreprocessSpec, normalize
from transferline.data.preprocessing_torch import normalize_torch
from transferline.model.augment import augment_batch

SPEC = PreprocessSpec(40, "crop", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_normalize_torch_equals_the_numpy_contract_bit_for_bit():
    images = np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    expected = normalize(images, SPEC)
    actual = normalize_torch(torch.from_numpy(images), SPEC)
    assert actual.dtype == torch.float32 and actual.shape == (6, 3, 40, 40)
    assert np.array_equal(expected.view(np.uint32), actual.contiguous().numpy().view(np.uint32))
    assert actual.is_contiguous(memory_format=torch.channels_last)  # NHWC pixels: no layout copy needed


def _halves(n: int) -> torch.Tensor:
    """Images dark on the left half, bright on the right."""
    images = np.zeros((n, 40, 40, 3), dtype=np.uint8)
    images[:, :, 20:] = 255
    return normalize_torch(torch.from_numpy(images), SPEC)


def test_augmentation_crops_and_mirrors_within_the_image_and_is_seeded():
    batch = _halves(64)
    params = AugmentParams(crop_scale_min=0.5, hflip=True)
    out = augment_batch(batch, params, torch.Generator().manual_seed(1))
    again = augment_batch(batch, params, torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and torch.equal(out, again)
    assert out.min() >= batch.min() - 1e-5 and out.max() <= batch.max() + 1e-5  # crops inside: no padding values
    left, right = out[..., :20].mean(dim=(1, 2, 3)), out[..., 20:].mean(dim=(1, 2, 3))
    mirrored = (left > right).sum().item()
    assert 10 < mirrored < 54  # about half the images flipped
    crops_differ = (out - batch).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert crops_differ.float().mean() > 0.8  # (a crop close to the whole, unflipped image can equal it)

    unflipped = augment_batch(batch, AugmentParams(crop_scale_min=0.5, hflip=False), torch.Generator().manual_seed(1))
    # without flips a left-dark image stays left-dark (or uniform, when the crop fell in one half)
    assert (unflipped[..., :20].mean(dim=(1, 2, 3)) <= unflipped[..., 20:].mean(dim=(1, 2, 3)) + 1e-6).all()


def test_disabled_augmentation_is_the_identity():
    batch = _halves(4)
    assert augment_batch(batch, AugmentParams(enabled=False), torch.Generator()) is batch


def test_constant_images_stay_constant_under_augmentation():
    images = np.full((8, 40, 40, 3), 77, dtype=np.uint8)
    batch = normalize_torch(torch.from_numpy(images), SPEC)
    out = augment_batch(batch, AugmentParams(crop_scale_min=0.2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, batch.contiguous(), rtol=0, atol=1e-6)
