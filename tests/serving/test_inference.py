"""The ONNX Runtime side of the service: provider choice read back from the session, outputs, warm-up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.serving.conftest import CLASSES, ServingModels
from transferline.data.preprocessing import PreprocessSpec
from transferline.evaluation.onnx_classifier import (
    CPU,
    CUDA,
    OnnxClassifier,
    ProviderUnavailable,
    create_session,
    nvidia_device_present,
)


def classifier(models: ServingModels, preference: str = "cpu") -> OnnxClassifier:
    spec = PreprocessSpec.from_dict(json.loads((models.export_dir / "preprocess.json").read_text()))
    path = models.export_dir / "model.onnx"
    return OnnxClassifier(path, CLASSES, spec, create_session(path, preference, threads=1))


def test_cpu_preference_runs_on_cpu(serving_models):
    assert classifier(serving_models, "cpu").provider == CPU


def test_auto_uses_cuda_only_where_it_can_run(serving_models):
    provider = classifier(serving_models, "auto").provider
    assert provider in (CPU, CUDA)
    if not nvidia_device_present():
        assert provider == CPU  # and onnxruntime-gpu's "GPU" device string is not taken at its word


def test_cuda_preference_refuses_to_fall_back(serving_models):
    if nvidia_device_present():
        assert classifier(serving_models, "cuda").provider == CUDA
    else:
        with pytest.raises(ProviderUnavailable, match="runs on CPUExecutionProvider"):
            classifier(serving_models, "cuda")


def test_probabilities_top_k_and_warm_up(serving_models):
    model = classifier(serving_models)
    assert not model.warm
    assert model.warm_up((1, 4)) >= 0 and model.warm
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    probabilities = model.probabilities(pixels)
    assert probabilities.shape == (5, len(CLASSES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    top = model.top_k(probabilities[0], 10)
    assert [p.label for p in top] == [CLASSES[i] for i in np.argsort(-probabilities[0])]
    assert len(model.top_k(probabilities[0], 2)) == 2


def test_scoring_in_batches_gives_the_same_probabilities(serving_models):
    """The gate scores test splits `batch_size` images at a time; the service runs whole batches at once."""
    model = classifier(serving_models)
    pixels = np.random.default_rng(1).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    whole = model.probabilities(pixels)
    np.testing.assert_allclose(model.probabilities(pixels, batch_size=3), whole, rtol=0, atol=1e-6)
    assert whole.dtype == np.float64


def test_softmax_is_stable_for_large_logits():
    from transferline.evaluation.onnx_classifier import softmax

    probabilities = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-12)
