"""Image bytes and files to model input exactly as the service prepares them: decode, then resize.

The service calls `prepare_pixels` on every upload and the gate `load_pixels` on the test files, then both
hand the pixels to transferline/evaluation/onnx_classifier.py: one path from bytes to probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferline.data.imaging import ImageLimits, decode_image
from transferline.data.preprocessing import PreprocessSpec, normalize, resize_for_model


def prepare_pixels(data: bytes, spec: PreprocessSpec, limits: ImageLimits) -> np.ndarray:
    """Untrusted bytes -> uint8 (S, S, 3), by the same functions as training; raises ImageRejected."""
    return resize_for_model(decode_image(data, limits).rgb, spec)


def load_pixels(paths: list[Path], spec: PreprocessSpec, limits: ImageLimits | None = None) -> np.ndarray:
    """uint8 (N, S, S, 3) model-input pixels for image files, through the service's decode path."""
    limits = limits or ImageLimits()
    return np.stack([prepare_pixels(p.read_bytes(), spec, limits) for p in paths])


def torch_logits(model, images: np.ndarray, spec: PreprocessSpec, batch_size: int) -> np.ndarray:
    """PyTorch logits for uint8 (N, S, S, 3) images, normalised by the shared definition."""
    import torch

    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(normalize(images[start : start + batch_size], spec))
            outputs.append(model(batch).float().numpy())
    return np.concatenate(outputs)
