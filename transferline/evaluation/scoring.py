"""Scoring an ONNX model on image files exactly as the service would: decode, resize, normalise, run.

The gate uses it to score the champion and the candidate on the same test images in one run,
each with its own preprocessing spec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferline.data.imaging import ImageLimits, decode_image
from transferline.data.preprocessing import PreprocessSpec, normalize, resize_for_model
from transferline.evaluation.metrics import softmax
from transferline.evaluation.onnx_export import INPUT_NAME, OUTPUT_NAME


def load_pixels(paths: list[Path], spec: PreprocessSpec, limits: ImageLimits | None = None) -> np.ndarray:
    """uint8 (N, S, S, 3) model-input pixels for image files, through the shared decode path."""
    limits = limits or ImageLimits()
    return np.stack([resize_for_model(decode_image(p.read_bytes(), limits).rgb, spec) for p in paths])


def onnx_probabilities(session, pixels: np.ndarray, spec: PreprocessSpec, batch_size: int = 64) -> np.ndarray:
    outputs = []
    for start in range(0, len(pixels), batch_size):
        batch = normalize(pixels[start : start + batch_size], spec)
        outputs.append(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])
    return softmax(np.concatenate(outputs).astype(np.float64))


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
