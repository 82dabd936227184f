"""The single definition of how an RGB image becomes model input.

Prepare, train, evaluate, export and the service all call these functions, so a
model is never fed differently in production than in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from transferline.config import PreprocessParams


@dataclass(frozen=True)
class PreprocessSpec:
    image_size: int
    resize: Literal["crop", "squash"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_params(cls, params: PreprocessParams) -> PreprocessSpec:
        return cls(params.image_size, params.resize, tuple(params.mean), tuple(params.std))

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": "NCHW float32, RGB, scaled to [0,1], then (x - mean) / std",
        }

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        return cls(int(data["image_size"]), data["resize"], tuple(data["mean"]), tuple(data["std"]))


def resize_for_model(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB PIL image -> uint8 array (S, S, 3). `crop`: shorter side to S, centre crop; `squash`: S x S."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    size = spec.image_size
    if spec.resize == "squash":
        resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    else:
        width, height = image.size
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        resized = resized.crop((left, top, left + size, top + size))
    return np.asarray(resized, dtype=np.uint8)


def normalize(batch_hwc: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S), scaled and standardised with the spec's constants."""
    if batch_hwc.ndim != 4 or batch_hwc.shape[-1] != 3:
        raise ValueError(f"expected a batch shaped (N, H, W, 3), got {batch_hwc.shape}")
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    chw = batch_hwc.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return (chw - mean) / std
