"""The one ONNX classifier: uint8 pixels in, softmax probabilities out, for the gate and the service alike.

The gate scores the champion and the candidate with it, and the service answers requests with it, so a
model cannot score one way offline and another way in production. It needs numpy and ONNX Runtime only
(no torch, no scikit-learn): the service image ships without the training stack.

The provider actually running is read back from the session (`get_providers()`), never assumed:
onnxruntime-gpu silently falls back to CPU when CUDA cannot load, and `ort.get_device()` says
"GPU" even then.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np

from transferline.data.preprocessing import PreprocessSpec, normalize
from transferline.errors import TransferlineError

log = logging.getLogger("transferline.onnx")

# The exported graph's contract (transferline/evaluation/onnx_export.py writes it): `pixels`, float32
# (N, 3, S, S) normalised by `transferline.data.preprocessing.normalize`, in; `logits` (N, classes), out.
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
DISTANCE_NAME = "feature_distance"  # (N,) Mahalanobis distance of the features to the nearest class

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ProviderPreference = Literal["auto", "cuda", "cpu"]


class ProviderUnavailable(TransferlineError):
    """`provider: cuda` was asked for and CUDA cannot run here."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by each row's maximum so large logits cannot overflow."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def nvidia_device_present() -> bool:
    """A cheap look for an NVIDIA device, so CPU-only machines never try (and loudly fail) to load CUDA."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


def create_session(onnx_path: Path, preference: ProviderPreference = "cpu", threads: int = 0):
    """A session on CUDA when preferred and usable, else CPU; raises if `cuda` is required and fails.

    `threads`: ONNX Runtime intra-op threads (0: its default, one per core).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    want_cuda = preference == "cuda" or (
        preference == "auto" and CUDA in ort.get_available_providers() and nvidia_device_present()
    )
    providers = [CUDA, CPU] if want_cuda else [CPU]
    if want_cuda and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, when the system has none
        except OSError as exc:
            log.warning("could not preload CUDA libraries: %s", exc)
    session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    active = session.get_providers()[0]
    if preference == "cuda" and active != CUDA:
        raise ProviderUnavailable(
            f"serve.provider is 'cuda' but ONNX Runtime runs on {active}: check the GPU, CUDA and cuDNN libraries"
        )
    if want_cuda and active != CUDA:
        log.warning("CUDA provider not usable here; serving on %s", active)
    return session


def has_distance(session) -> bool:
    """Whether the model answers feature_distance too (bundles exported before it did not)."""
    return DISTANCE_NAME in {output.name for output in session.get_outputs()}


class OnnxClassifier:
    """Images in (uint8 pixels, as `resize_for_model` makes them), class probabilities out; one session each."""

    def __init__(self, onnx_path: Path, classes: list[str], spec: PreprocessSpec, session) -> None:
        self.onnx_path = onnx_path
        self.classes = classes
        self.spec = spec
        self.session = session
        self.warm = False

    @classmethod
    def open(
        cls,
        onnx_path: Path,
        classes: list[str],
        spec: PreprocessSpec,
        preference: ProviderPreference = "cpu",
        threads: int = 0,
    ) -> OnnxClassifier:
        return cls(onnx_path, classes, spec, create_session(onnx_path, preference, threads))

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def logits(self, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float64 (N, classes) logits, `batch_size` images per run (None: all at
        once), so scoring a whole test split needs no more memory than one batch."""
        step = batch_size or max(len(pixels), 1)
        logits = [
            self.session.run([OUTPUT_NAME], {INPUT_NAME: normalize(pixels[start : start + step], self.spec)})[0]
            for start in range(0, len(pixels), step)
        ]
        return np.concatenate(logits).astype(np.float64)

    @functools.cached_property
    def has_distance(self) -> bool:
        return has_distance(self.session)

    @property
    def answer_outputs(self) -> tuple[str, ...]:
        """The outputs `answers` runs: the logits, and the feature distances where the graph has them."""
        return (OUTPUT_NAME, DISTANCE_NAME) if self.has_distance else (OUTPUT_NAME,)

    def answers(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, S, S, 3) -> float64 logits (N, classes) and feature distances (N,), in one run; the
        distances are None for a model that does not compute them."""
        outputs = self.session.run(list(self.answer_outputs), {INPUT_NAME: normalize(pixels, self.spec)})
        logits = outputs[0].astype(np.float64)
        return logits, outputs[1].astype(np.float64).reshape(-1) if len(outputs) > 1 else None

    def probabilities(self, pixels: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """uint8 (N, S, S, 3) -> float64 (N, classes) softmax probabilities."""
        return softmax(self.logits(pixels, batch_size))

    def warm_up(self, batch_sizes: tuple[int, ...]) -> float:
        """Run each batch size once, so the first real request pays no allocation; returns seconds."""
        start = time.perf_counter()
        size = self.spec.image_size
        for batch in batch_sizes:
            logits, distances = self.answers(np.zeros((batch, size, size, 3), dtype=np.uint8))
            probs = softmax(logits)
            if probs.shape != (batch, len(self.classes)) or not np.isfinite(probs).all():
                raise RuntimeError(
                    f"warm-up at batch {batch} gave shape {probs.shape} or non-finite values; "
                    f"expected ({batch}, {len(self.classes)})"
                )
            if distances is not None and (distances.shape != (batch,) or not np.isfinite(distances).all()):
                raise RuntimeError(f"warm-up at batch {batch} gave feature distances of shape {distances.shape}")
        self.warm = True
        return time.perf_counter() - start
