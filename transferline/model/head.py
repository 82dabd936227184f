"""The feature_extraction head: multinomial logistic regression on fixed backbone features.

Fitting is split in two so a head-only search pays the fixed costs once per study. `prepare_head_features`
centres the features (exact: the unpenalised bias absorbs the shift), optionally scales them to unit
variance, and rotates them onto the eigenbasis of their covariance (exact too: the L2 penalty is
rotation-invariant), in float32 and in both layouts the matmuls want. `fit_head` then runs full-batch
L-BFGS with an analytic gradient (no autograd graph per step) on weights rescaled per eigen-direction by
the curvature there (a diagonal preconditioner: the optimum is the same, it is reached in 2-10x fewer
steps). It stops once the gradient has shrunk by `RTOL` relative to the gradient at zero (the same
criterion whatever the feature scale), capped at `MAX_ITER` iterations. Every fit starts from zero and
depends only on its features and hyperparameters, never on earlier fits: a tuning trial is reproduced
by its params alone, and a grid entry equals the single-value fit.

The loss is mean cross-entropy (with optional label smoothing) + 0.5 * l2 * ||W||^2. The whole
transform is folded into the returned weights, so the installed model is plain `body -> head`.
The fit runs on one thread: it is a few milliseconds of memory-bound matmul per step, where a second
OpenMP thread gains ~20% on an idle machine and loses 10x as soon as another process is busy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from transferline.model import exact_math
from transferline.model.backbones import TransferModel

log = logging.getLogger("transferline.model.head")

RTOL = 3e-4  # stop once max |gradient| <= RTOL * max |gradient at zero| (val predictions then match a tight fit)
MAX_ITER = 500  # L-BFGS iterations at most (a safety cap: fits stop on RTOL well before)
HISTORY = 20
STD_EPS = 1e-6  # added to each feature's std, so constant features do not divide by zero

_THREADS_LOCK = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextmanager
def single_thread() -> Iterator[None]:
    """torch on one intra-op thread while any head fit runs (reference-counted: concurrent fits nest)."""
    global _threads_users, _threads_saved
    with _THREADS_LOCK:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            if _threads_saved != 1:
                torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_users -= 1
            if _threads_users == 0 and _threads_saved != 1:
                torch.set_num_threads(_threads_saved)


@dataclass(frozen=True)
class HeadFeatures:
    """Train and val features ready for many head fits: transformed once, float32, in both layouts."""

    x: torch.Tensor  # (n, d) transformed train features: gradient = G @ x
    x_t: torch.Tensor  # (d, n) the same, contiguous: logits = W @ x_t (twice as fast as x @ W.T here)
    y: torch.Tensor  # (n,) int64
    val_x: torch.Tensor  # (m, d) transformed val features
    val_y: torch.Tensor  # (m,) int64
    variance: torch.Tensor  # (d,) float32, the train features' variance along each basis direction
    basis: np.ndarray  # (d, d) float64, orthonormal: transformed = ((raw - mean) / scale) @ basis
    mean: np.ndarray  # (d,) float64
    scale: np.ndarray  # (d,) float64 (ones when not standardised)
    standardize: bool


@dataclass
class ProbeResult:
    """The selected head. Its weights for raw features are folded on first use: a tuning trial needs only the score."""

    features: HeadFeatures = field(repr=False)
    prepared_weight: torch.Tensor = field(repr=False)  # (num_classes, feature_dim) on the transformed features
    prepared_bias: torch.Tensor = field(repr=False)
    l2: float
    val_accuracy: float
    val_loss: float
    train_accuracy: float
    trials: list[dict]
    seconds: float
    evaluations: int = 0  # loss/gradient evaluations of all fits together

    @cached_property
    def _raw(self) -> tuple[np.ndarray, np.ndarray]:
        return fold(self.features, self.prepared_weight, self.prepared_bias)

    @property
    def weight(self) -> np.ndarray:
        """(num_classes, feature_dim) float32, for raw (untransformed) features."""
        return self._raw[0]

    @property
    def bias(self) -> np.ndarray:
        return self._raw[1]


def prepare_head_features(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, standardize: bool = True
) -> HeadFeatures:
    """Centre (and optionally scale to unit variance) with the train split's statistics, then rotate."""
    with single_thread():
        mean = train_x.mean(0, dtype=np.float64)
        scale = train_x.std(0, dtype=np.float64) + STD_EPS if standardize else np.ones_like(mean)
        centred = torch.from_numpy((train_x - mean) / scale)
        eigenvalues, basis = torch.linalg.eigh(centred.T @ centred)
        rotation = basis.float()
        x = (centred.float() @ rotation).contiguous()
        val = torch.from_numpy(((val_x - mean) / scale).astype(np.float32)) @ rotation
        return HeadFeatures(
            x=x,
            x_t=x.T.contiguous(),
            y=torch.from_numpy(np.asarray(train_y, dtype=np.int64)),
            val_x=val.contiguous(),
            val_y=torch.from_numpy(np.asarray(val_y, dtype=np.int64)),
            variance=(eigenvalues.clamp(min=0) / len(x)).float(),
            basis=basis.numpy(),
            mean=mean,
            scale=scale,
            standardize=standardize,
        )


def soft_targets(y: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """(num_classes, n) target distribution: one-hot mixed with the uniform one, as in cross_entropy's smoothing."""
    targets = torch.full((num_classes, len(y)), label_smoothing / num_classes)
    targets[y, torch.arange(len(y))] += 1.0 - label_smoothing
    return targets


def preconditioner(features: HeadFeatures, num_classes: int, l2: float) -> torch.Tensor:
    """Per-direction scale sqrt(curvature): the softmax curvature at zero, (1/k)(1 - 1/k), times the variance, + l2."""
    curvature = (1.0 / num_classes) * (1.0 - 1.0 / num_classes)
    return exact_math.sqrt(curvature * features.variance + l2)


def loss_and_grad(
    params: torch.Tensor, features: HeadFeatures, targets: torch.Tensor, l2: float, precondition: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penalised cross-entropy and its gradient in the optimised variables: the flat (k, d + 1) block
    [U | b], where the head's weight (on the transformed features) is W = U / precondition."""
    k, n = targets.shape
    block = params.view(k, -1)
    weight, bias = block[:, :-1] / precondition, block[:, -1:]
    logits = torch.addmm(bias, weight, features.x_t)  # (k, n)
    log_p = torch.log_softmax(logits, 0)
    loss = -(targets * log_p).sum() / n + 0.5 * l2 * (weight * weight).sum()
    residual = (log_p.exp() - targets) / n
    grad_weight = torch.addmm(weight, residual, features.x, beta=l2) / precondition
    return loss, torch.cat([grad_weight, residual.sum(1, keepdim=True)], 1).view(-1)


def fit_head(
    features: HeadFeatures, num_classes: int, l2: float, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(weight (k, d) on the transformed features, bias (k,), loss evaluations), fitted from zero."""
    targets = soft_targets(features.y, num_classes, label_smoothing)
    precondition = preconditioner(features, num_classes, l2)
    dim = features.x.shape[1]
    with single_thread():
        _, grad_at_zero = loss_and_grad(torch.zeros(num_classes * (dim + 1)), features, targets, l2, precondition)
        params = torch.zeros(num_classes * (dim + 1), requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [params],
            lr=1,
            max_iter=MAX_ITER,
            history_size=HISTORY,
            tolerance_grad=RTOL * float(grad_at_zero.abs().max()),
            tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )
        evaluations = 0

        def closure() -> torch.Tensor:
            nonlocal evaluations
            evaluations += 1
            loss, grad = loss_and_grad(params.detach(), features, targets, l2, precondition)
            params.grad = grad
            return loss

        optimizer.step(closure)
    block = params.detach().view(num_classes, dim + 1)
    return block[:, :-1] / precondition, block[:, -1].clone(), evaluations


def fold(features: HeadFeatures, weight: torch.Tensor, bias: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Weights for raw features f: with V the basis, (((f - mean) / scale) @ V) @ W.T + b == f @ A.T + c
    where A = (W @ V.T) / scale and c = b - A @ mean."""
    raw_weight = (weight.double().numpy() @ features.basis.T) / features.scale
    raw_bias = bias.double().numpy() - raw_weight @ features.mean
    return raw_weight.astype(np.float32), raw_bias.astype(np.float32)


def score(features: HeadFeatures, weight: torch.Tensor, bias: torch.Tensor, l2: float, evaluations: int) -> dict:
    """Val accuracy and loss (the selection metric) and train accuracy of one fitted head."""
    with torch.no_grad():
        val_logits = torch.addmm(bias, features.val_x, weight.T)
        train_logits = torch.addmm(bias[:, None], weight, features.x_t)
        return {
            "l2": l2,
            "val_accuracy": (val_logits.argmax(1) == features.val_y).double().mean().item(),
            "val_loss": torch.nn.functional.cross_entropy(val_logits, features.val_y).item(),
            "train_accuracy": (train_logits.argmax(0) == features.y).double().mean().item(),
            "evaluations": evaluations,
        }


def fit_prepared(
    features: HeadFeatures, num_classes: int, l2_grid: Sequence[float], label_smoothing: float = 0.0
) -> ProbeResult:
    """The head with the best val accuracy (then loss) over `l2_grid`, each L2 fitted independently."""
    start = time.perf_counter()
    trials, best = [], None
    for l2 in sorted(l2_grid, reverse=True):
        weight, bias, evaluations = fit_head(features, num_classes, float(l2), label_smoothing)
        trial = score(features, weight, bias, float(l2), evaluations)
        trials.append(trial)
        log.info(
            "probe l2=%g: train acc %.4f, val acc %.4f (%d evaluations)",
            l2,
            trial["train_accuracy"],
            trial["val_accuracy"],
            evaluations,
        )
        if best is None or (trial["val_accuracy"], -trial["val_loss"]) > (
            best[0]["val_accuracy"],
            -best[0]["val_loss"],
        ):
            best = (trial, weight, bias)
    trial, weight, bias = best
    return ProbeResult(
        features,
        weight,
        bias,
        trial["l2"],
        trial["val_accuracy"],
        trial["val_loss"],
        trial["train_accuracy"],
        trials,
        time.perf_counter() - start,
        sum(t["evaluations"] for t in trials),
    )


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    l2_grid: Sequence[float],
    standardize: bool = True,
    label_smoothing: float = 0.0,
) -> ProbeResult:
    """Logistic regression head on raw features: prepare them, then fit the L2 grid (best on val wins)."""
    start = time.perf_counter()
    features = prepare_head_features(train_x, train_y, val_x, val_y, standardize)
    result = fit_prepared(features, num_classes, l2_grid, label_smoothing)
    result.seconds = time.perf_counter() - start
    return result


def install_head(model: TransferModel, probe: ProbeResult) -> None:
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(probe.weight))
        model.head.bias.copy_(torch.from_numpy(probe.bias))
