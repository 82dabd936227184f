"""Torch twin of `transferline.data.preprocessing.normalize`, so batches can be normalised on the GPU.

It performs the same float32 operations in the same order (cast, divide by 255, subtract mean,
divide by std), so on CPU its output equals the numpy function's bit for bit
(tests/train/test_train_preprocessing.py proves it). The numpy function stays the contract.
"""

from __future__ import annotations

import torch

from transferline.data.preprocessing import PreprocessSpec


def normalize_torch(batch_nhwc: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S) with channels-last strides (a view, no copy of layout)."""
    if batch_nhwc.ndim != 4 or batch_nhwc.shape[-1] != 3:
        raise ValueError(f"expected a batch shaped (N, H, W, 3), got {tuple(batch_nhwc.shape)}")
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=batch_nhwc.device).reshape(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=batch_nhwc.device).reshape(1, 3, 1, 1)
    chw = batch_nhwc.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return (chw - mean) / std
