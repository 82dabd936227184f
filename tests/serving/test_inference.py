"""The ONNX Runtime side of the service: provider choice read back from the session, outputs, warm-up."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from serving.served_model import ServedModel
from tests.serving.conftest import CLASSES, ServingModels
from transferline.data.preprocessing import PreprocessSpec
from transferline.evaluation.onnx_classifier import (
    CPU,
    CUDA,
    OnnxClassifier,
    ProviderUnavailable,
    create_session,
    nvidia_device_present,
    softmax,
)
from transferline.monitoring.ood import OodDetector


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


def test_probabilities_and_warm_up(serving_models):
    model = classifier(serving_models)
    assert not model.warm
    assert model.warm_up((1, 4)) >= 0 and model.warm
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    probabilities = model.probabilities(pixels)
    assert probabilities.shape == (5, len(CLASSES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)


def test_a_served_model_answers_each_image_of_a_run_in_plain_values(serving_models):
    """ServedModel.answer: per image, the labels ranked by probability (as many as `ranked`), the OOD score
    and flag and the rounded logits, as Python values the request path only reads."""
    model = classifier(serving_models)
    pixels = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    logits, distances = model.answers(pixels)
    energy = OodDetector("energy", 1.0, 0.0, 0.05, 0, 0.0)
    scores = energy.scores(logits, distances)
    detector = OodDetector("energy", 1.0, float(np.median(scores)), 0.05, 0, 0.0)  # flags half of them
    bundle = SimpleNamespace(classes=CLASSES, tag="transferline-classifier:test")
    served = ServedModel(bundle, model, detector, {}, "data", None, 0.0, ranked=3)
    answers = served.answer(pixels)
    probabilities = softmax(logits)
    assert len(answers) == 6 and 0 < sum(a.out_of_distribution for a in answers) < 6
    for answer, row, score, row_logits in zip(answers, probabilities, scores, logits, strict=True):
        order = np.argsort(-row, kind="stable")[:3]
        assert answer.labels == [CLASSES[i] for i in order]
        assert answer.probabilities == pytest.approx(row[order].tolist())
        assert answer.ood_score == pytest.approx(score) and answer.out_of_distribution == (score > detector.threshold)
        assert answer.logits == pytest.approx(row_logits.tolist(), abs=5e-5)
        assert all(type(value) is float for value in (*answer.probabilities, answer.ood_score, *answer.logits))


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
