"""Feature extraction: frozen-backbone features computed once per split and cached, then a linear head.

The cache (`data/features/{split}.npy`) is keyed by `key.json`: backbone, the exact weights
(hash of the checkpoint file), data version and preprocessing. A cache whose key differs from
the run's is recomputed, never reused, so it cannot go silently stale. Features are computed in
float32 (no autocast) and without augmentation.

The head fitted on them (multinomial logistic regression, L2 strength picked on the validation
split, standardisation folded into the Linear layer) lives in transferline.model.head; it is re-exported
here for the callers that import it with the cache.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from transferline import atomic
from transferline.data.preprocessing import PreprocessSpec
from transferline.model.backbones import TransferModel
from transferline.model.feature_taps import HEAD_FEATURES
from transferline.model.head import ProbeResult, fit_probe, install_head
from transferline.model.training import BatchSource, Runtime, SplitData, model_input

log = logging.getLogger("transferline.model.features")

__all__ = ["ProbeResult", "cache_key", "cached_features", "compute_features", "fit_probe", "install_head", "read_cache"]

KEY_FILE = "key.json"
FEATURE_SPLITS = ("train", "val")


def cache_key(
    backbone: str,
    weights: dict,
    data_version: str,
    preprocess: dict,
    feature_dim: int,
    taps: Sequence[str | None] = (HEAD_FEATURES,),
) -> dict:
    """What cached features depend on; `taps` (the model's, TransferModel.taps) only where the head reads
    more than the body's output, so the usual head's caches keep their key."""
    key = {
        "format": 1,
        "backbone": backbone,
        "weights": weights,
        "data_version": data_version,
        "preprocess": preprocess,
        "feature_dim": feature_dim,
    }
    if tuple(taps) != (HEAD_FEATURES,):
        key["taps"] = ["head" if tap is HEAD_FEATURES else tap for tap in taps]
    return key


@torch.inference_mode()
def compute_features(
    model: TransferModel, split: SplitData, spec: PreprocessSpec, runtime: Runtime, batch_size: int
) -> np.ndarray:
    """float32 (N, feature_dim) pooled features the head reads (TransferModel.features), body in eval mode."""
    model.eval()
    source = BatchSource(split, runtime.device)
    outputs = []
    for start in range(0, len(source), batch_size):
        images, _ = source.get(torch.arange(start, min(start + batch_size, len(source))))
        outputs.append(model.features(model_input(images, spec, runtime)).float().cpu())
    return torch.cat(outputs).numpy()


def read_cache(directory: Path, key: dict, sizes: dict[str, int]) -> dict[str, np.ndarray] | None:
    """Cached features when the key and the shapes match exactly; None (with the reason logged) otherwise."""
    key_file = directory / KEY_FILE
    if not key_file.is_file():
        return None
    stored = json.loads(key_file.read_text()).get("key") or {}
    if stored != key:
        changed = sorted(k for k in key if stored.get(k) != key[k])
        log.info("feature cache in %s does not match this run (%s): recomputing", directory, ", ".join(changed))
        return None
    features = {}
    for split, size in sizes.items():
        path = directory / f"{split}.npy"
        if not path.is_file():
            return None
        array = np.load(path)
        if array.shape != (size, key["feature_dim"]):
            log.info(
                "feature cache %s has shape %s, expected %s: recomputing", path, array.shape, (size, key["feature_dim"])
            )
            return None
        features[split] = array
    return features


def cached_features(
    model: TransferModel,
    splits: dict[str, SplitData],
    spec: PreprocessSpec,
    runtime: Runtime,
    directory: Path,
    key: dict,
    batch_size: int,
) -> tuple[dict[str, np.ndarray], bool]:
    """(features per split, whether they came from the cache)."""
    sizes = {name: len(split) for name, split in splits.items()}
    cached = read_cache(directory, key, sizes)
    if cached is not None:
        log.info("using cached features from %s", directory)
        return cached, True
    (directory / KEY_FILE).unlink(missing_ok=True)  # invalid while the arrays are being replaced
    features = {}
    for name, split in splits.items():
        start = time.perf_counter()
        features[name] = compute_features(model, split, spec, runtime, batch_size)
        seconds = time.perf_counter() - start
        log.info(
            "computed %s features %s in %.1f s (%.0f images/s)",
            name,
            features[name].shape,
            seconds,
            len(split) / seconds,
        )
        atomic.write_npy(directory / f"{name}.npy", features[name])
    atomic.write_json(directory / KEY_FILE, {"key": key, "sizes": sizes, "computed_with": {"torch": torch.__version__}})
    return features, False
