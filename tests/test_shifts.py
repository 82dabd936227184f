"""The shifts keep the image layout, move the pixels the way they say, and repeat for a seed."""

from __future__ import annotations

import numpy as np
import pytest

from transferline.monitoring import shifts


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = np.zeros((4, 32, 32, 3), np.uint8)
    base[:, 8:24, 8:24] = rng.integers(60, 200, (4, 1, 1, 3))  # a flat square on black
    return base


@pytest.mark.parametrize("name", sorted(shifts.NEAR_SHIFTS))
def test_each_near_shift_keeps_the_layout_and_changes_the_pixels(images, name):
    shifted = shifts.NEAR_SHIFTS[name](images)
    assert shifted.shape == images.shape and shifted.dtype == np.uint8
    assert np.abs(shifted.astype(int) - images).mean() > 1


def test_blur_softens_edges_and_brightness_scales(images):
    edge = lambda x: np.abs(np.diff(x.astype(int), axis=2)).max()  # noqa: E731
    assert edge(shifts.blur(images)) < edge(images)
    assert shifts.brightness(images, 0.5).max() <= images.max() // 2 + 1


def test_noise_is_repeatable_for_a_seed():
    assert np.array_equal(shifts.noise_images(6, 16, seed=3), shifts.noise_images(6, 16, seed=3))
    assert not np.array_equal(shifts.noise_images(6, 16, seed=3), shifts.noise_images(6, 16, seed=4))
    assert shifts.noise_images(5, 16).shape == (5, 16, 16, 3)
