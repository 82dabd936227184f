"""Feature extraction: frozen-backbone features computed once per split and cached, then a linear head.

The cache (`data/features/{split}.npy`) is keyed by `key.json`: backbone, the exact weights
(hash of the checkpoint file), data version and preprocessing. A cache whose key differs from
the run's is recomputed, never reused, so it cannot go silently stale. Features are computed in
float32 (no autocast) and without augmentation.

The head is a multinomial logistic regression fitted with full-batch L-BFGS on standardised
features, its L2 strength picked on the validation split; the standardisation is then folded
into the Linear layer, so the final model is plain `body -> head` like every other strategy.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferline import atomic
from transferline.backbones import TransferModel
from transferline.preprocessing import PreprocessSpec
from transferline.training import BatchSource, Runtime, SplitData, model_input

log = logging.getLogger("transferline.features")

KEY_FILE = "key.json"
FEATURE_SPLITS = ("train", "val")


def cache_key(backbone: str, weights: dict, data_version: str, preprocess: dict, feature_dim: int) -> dict:
    return {
        "format": 1,
        "backbone": backbone,
        "weights": weights,
        "data_version": data_version,
        "preprocess": preprocess,
        "feature_dim": feature_dim,
    }


@torch.inference_mode()
def compute_features(
    model: TransferModel, split: SplitData, spec: PreprocessSpec, runtime: Runtime, batch_size: int
) -> np.ndarray:
    """float32 (N, feature_dim) pooled body features, body in eval mode."""
    model.eval()
    source = BatchSource(split, runtime.device)
    outputs = []
    for start in range(0, len(source), batch_size):
        images, _ = source.get(torch.arange(start, min(start + batch_size, len(source))))
        outputs.append(model.body(model_input(images, spec, runtime)).float().cpu())
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


@dataclass
class ProbeResult:
    weight: np.ndarray  # (num_classes, feature_dim), for raw (unstandardised) features
    bias: np.ndarray
    l2: float
    val_accuracy: float
    val_loss: float
    train_accuracy: float
    trials: list[dict]
    seconds: float


def _lbfgs_fit(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, init: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    weight = (init[0].clone() if init else torch.zeros(x.shape[1], num_classes, dtype=x.dtype)).requires_grad_()
    bias = (init[1].clone() if init else torch.zeros(num_classes, dtype=x.dtype)).requires_grad_()
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=300, history_size=20, tolerance_grad=1e-5, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def fit_probe(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, num_classes: int, l2_grid
) -> ProbeResult:
    """Logistic regression head; the L2 strength with the best val accuracy (then loss) wins."""
    start = time.perf_counter()
    mean = train_x.mean(0, dtype=np.float64)
    std = train_x.std(0, dtype=np.float64) + 1e-6
    xt = torch.from_numpy(((train_x - mean) / std).astype(np.float32))
    xv = torch.from_numpy(((val_x - mean) / std).astype(np.float32))
    yt, yv = torch.from_numpy(train_y.astype(np.int64)), torch.from_numpy(val_y.astype(np.int64))
    trials, best, init = [], None, None
    for l2 in sorted(l2_grid, reverse=True):  # strongest first: each fit warm-starts the next
        weight, bias = _lbfgs_fit(xt, yt, num_classes, float(l2), init)
        init = (weight, bias)
        with torch.no_grad():
            val_logits = xv @ weight + bias
            trial = {
                "l2": float(l2),
                "val_accuracy": (val_logits.argmax(1) == yv).double().mean().item(),
                "val_loss": nn.functional.cross_entropy(val_logits, yv).item(),
                "train_accuracy": ((xt @ weight + bias).argmax(1) == yt).double().mean().item(),
            }
        trials.append(trial)
        log.info("probe l2=%g: train acc %.4f, val acc %.4f", l2, trial["train_accuracy"], trial["val_accuracy"])
        if best is None or (trial["val_accuracy"], -trial["val_loss"]) > (
            best[0]["val_accuracy"],
            -best[0]["val_loss"],
        ):
            best = (trial, weight, bias)
    trial, weight, bias = best
    # fold the standardisation into the layer: ((f - mean) / std) @ W + b == f @ (W / std) + (b - (mean / std) @ W)
    w = weight.numpy() / std[:, None]
    b = bias.numpy() - (mean / std) @ weight.numpy()
    return ProbeResult(
        w.T.astype(np.float32),
        b.astype(np.float32),
        trial["l2"],
        trial["val_accuracy"],
        trial["val_loss"],
        trial["train_accuracy"],
        trials,
        time.perf_counter() - start,
    )


def install_head(model: TransferModel, probe: ProbeResult) -> None:
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(probe.weight))
        model.head.bias.copy_(torch.from_numpy(probe.bias))
