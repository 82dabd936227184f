"""Shifted and foreign images made from the data at hand: what the OOD check and the drift tests are
measured against, so their figures come from real images rather than synthetic feature vectors.

All functions take and return uint8 (N, S, S, 3) arrays (the prepared pixel cache's layout) and are
deterministic for a seed. Covariate shifts (blur, brightness, rotation, noise) keep the classes but move
the inputs: "near" shifts. Noise images and images of another data set carry none of the classes: "far".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter


def _per_image(images: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(fn(Image.fromarray(image)).convert("RGB")) for image in images])


def blur(images: np.ndarray, radius: float = 1.5) -> np.ndarray:
    """Gaussian blur, as from a defocused camera."""
    return _per_image(images, lambda im: im.filter(ImageFilter.GaussianBlur(radius)))


def brightness(images: np.ndarray, factor: float = 1.6) -> np.ndarray:
    """Pixel values scaled by `factor` (over- or under-exposure), clipped to 0..255."""
    return np.clip(images.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def rotate(images: np.ndarray, degrees: float = 30.0) -> np.ndarray:
    """Rotation about the centre, corners filled with black: a mounted camera knocked askew."""
    return _per_image(images, lambda im: im.rotate(degrees, resample=Image.Resampling.BILINEAR))


def gaussian_noise(images: np.ndarray, sd: float = 40.0, seed: int = 0) -> np.ndarray:
    """Additive sensor noise of standard deviation `sd` grey levels."""
    rng = np.random.default_rng(seed)
    return np.clip(images.astype(np.float32) + rng.normal(0, sd, images.shape), 0, 255).astype(np.uint8)


def noise_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Uniform noise and smooth random colour fields: inputs with no class at all."""
    rng = np.random.default_rng(seed)
    half = count // 2
    uniform = rng.integers(0, 256, (half, size, size, 3), dtype=np.uint8)
    coarse = rng.integers(0, 256, (count - half, 4, 4, 3), dtype=np.uint8)
    smooth = _per_image(coarse, lambda im: im.resize((size, size), Image.Resampling.BICUBIC))
    return np.concatenate([uniform, smooth])


NEAR_SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "blur": blur,
    "brightness": brightness,
    "rotation": rotate,
    "noise": gaussian_noise,
}
