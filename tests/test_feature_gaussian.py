"""The feature Gaussian behind the Mahalanobis OOD score: exact against the textbook formula, the same
inside the exported model's graph, and it tells foreign features from the training classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferline.monitoring.feature_gaussian import (
    FeatureGaussian,
    LayerGaussian,
    combined_distance,
    fit_feature_gaussian,
    standardisation,
)
from transferline.monitoring.ood import auroc


def clusters(rng: np.random.Generator, n: int = 400, dim: int = 12, classes: int = 3):
    centres = rng.normal(0, 4, (classes, dim))
    labels = rng.integers(0, classes, n)
    mixing = rng.normal(0, 1, (dim, dim))
    return centres[labels] + rng.normal(0, 1, (n, dim)) @ mixing, labels, centres, mixing


def textbook(gaussian: FeatureGaussian, features: np.ndarray) -> np.ndarray:
    """min over classes of (f - mu)^T Sigma^-1 (f - mu), Sigma rebuilt from the probabilistic-PCA form."""
    dim = gaussian.means.shape[1]
    u = gaussian.components
    sigma = u @ np.diag(gaussian.variances) @ u.T + gaussian.residual_variance * (np.eye(dim) - u @ u.T)
    precision = np.linalg.inv(sigma)
    offsets = features[:, None, :] - gaussian.means[None]
    return np.einsum("nkd,de,nke->nk", offsets, precision, offsets).min(axis=1)


@pytest.mark.parametrize("rank", [12, 5])
def test_distances_match_the_mahalanobis_formula(rank):
    rng = np.random.default_rng(0)
    features, labels, _, _ = clusters(rng)
    gaussian = fit_feature_gaussian(features, labels, 3, rank=rank)
    assert gaussian.rank == rank and (gaussian.residual_variance > 0) == (rank < 12)
    probe = rng.normal(0, 5, (50, 12))
    np.testing.assert_allclose(gaussian.distances(probe), textbook(gaussian, probe), rtol=1e-8)


def test_the_covariance_is_shrunk_and_the_means_are_the_class_means():
    rng = np.random.default_rng(1)
    features, labels, _, _ = clusters(rng, n=30, dim=40)  # fewer images than features: the raw covariance is singular
    gaussian = fit_feature_gaussian(features, labels, 3, rank=40)
    assert np.all(gaussian.variances > 1e-3 * gaussian.variances.max())  # shrinkage keeps every direction
    for k in range(3):
        np.testing.assert_allclose(gaussian.means[k], features[labels == k].mean(axis=0))


def test_foreign_features_score_higher_than_unseen_images_of_the_classes():
    rng = np.random.default_rng(2)
    features, labels, centres, mixing = clusters(rng, n=600)
    gaussian = fit_feature_gaussian(features[:400], labels[:400], 3, rank=6)
    inside = gaussian.distances(features[400:])
    foreign = gaussian.distances(rng.normal(0, 1, (200, 12)) @ mixing + centres.mean(axis=0) + rng.normal(0, 6, 12))
    assert auroc(inside, foreign) > 0.95


def test_a_class_without_training_features_is_refused():
    rng = np.random.default_rng(3)
    features, labels, _, _ = clusters(rng)
    with pytest.raises(ValueError, match=r"none for \[3\]"):
        fit_feature_gaussian(features, labels, 4)


def test_the_exported_wrapper_computes_the_same_distance_in_float32():
    from stages.export import scored_by_layers

    rng = np.random.default_rng(4)
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 12))
    model = torch.nn.Module()
    model.body, model.head, model.taps = body, torch.nn.Linear(12, 3), (None,)
    pixels = torch.as_tensor(rng.normal(0, 1, (300, 3, 4, 4)), dtype=torch.float32)
    with torch.no_grad():
        features = body(pixels).numpy().astype(np.float64)
    labels = np.argmax(features[:, :3], axis=1)
    for rank in (12, 4):
        gaussian = fit_feature_gaussian(features, labels, 3, rank=rank)
        layers = [LayerGaussian(None, gaussian, 0.0, 1.0)]
        with torch.no_grad():
            logits, distances = scored_by_layers(model, layers)(pixels)
            np.testing.assert_allclose(logits.numpy(), model.head(body(pixels)).numpy(), rtol=1e-6)
        np.testing.assert_allclose(distances.numpy(), gaussian.distances(features), rtol=1e-3, atol=1e-3)


def test_the_exported_score_adds_standardised_distances_of_every_tapped_block():
    """An inner block's pooled output and the head's features, each centred and scaled as fitted: the graph's
    answer is combined_distance's, on any backbone that names its blocks."""
    from stages.export import scored_by_layers
    from tests.model_fixtures import TinyConvNet
    from transferline.model.feature_taps import TappedBody

    rng = np.random.default_rng(5)
    torch.manual_seed(0)
    model = TinyConvNet(3).eval()
    pixels = torch.as_tensor(rng.normal(0, 1, (240, 3, 8, 8)), dtype=torch.float32)
    with torch.no_grad():
        inner, head = (f.numpy().astype(np.float64) for f in TappedBody(model, ["conv1", None])(pixels))
    labels = rng.integers(0, 3, len(pixels))
    layers = [
        LayerGaussian("conv1", fit_feature_gaussian(inner, labels, 3, rank=8), 7.0, 2.0),
        LayerGaussian(None, fit_feature_gaussian(head, labels, 3, rank=4), -3.0, 0.5),
    ]
    with torch.no_grad():
        logits, distances = scored_by_layers(model, layers)(pixels)
        np.testing.assert_allclose(logits.numpy(), model(pixels).numpy(), rtol=1e-5, atol=1e-6)
    expected = combined_distance(layers, [inner, head])
    by_hand = (layers[0].gaussian.distances(inner) - 7.0) / 2.0 + (layers[1].gaussian.distances(head) + 3.0) / 0.5
    np.testing.assert_allclose(expected, by_hand, rtol=1e-12)
    np.testing.assert_allclose(distances.numpy(), expected, rtol=1e-3, atol=1e-3)
    assert not model.body[3]._forward_hooks  # the taps leave no hook behind
    with torch.no_grad():  # an inner block alone: the head still reads the body's output
        logits, distances = scored_by_layers(model, layers[:1])(pixels)
        np.testing.assert_allclose(logits.numpy(), model(pixels).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(distances.numpy(), combined_distance(layers[:1], [inner]), rtol=1e-3, atol=1e-3)


def test_standardisation_keeps_a_constant_layer_finite():
    assert standardisation(np.array([2.0, 4.0])) == (3.0, 1.0)
    assert standardisation(np.full(5, 7.0)) == (7.0, 1.0)


def test_the_exported_score_feeds_a_multi_layer_head_its_taps_side_by_side():
    """A feature_extraction head reading several depths (train.probe_layers): the graph's logits are the
    model's own, whichever of its taps the distance also scores."""
    from stages.export import scored_by_layers
    from transferline.model.backbones import build_model
    from transferline.model.feature_taps import TappedBody

    torch.manual_seed(0)
    model, _ = build_model("mobilenet_v2", 3, pretrained=False, feature_layers=(0.5, 1.0))
    model.eval()
    pixels = torch.randn(40, 3, 32, 32)
    with torch.no_grad():
        inner = TappedBody(model, ["features.4"])(pixels)[0].numpy().astype(np.float64)
    labels = np.arange(len(pixels)) % 3
    layers = [LayerGaussian("features.4", fit_feature_gaussian(inner, labels, 3, rank=4), 0.0, 1.0)]
    with torch.no_grad():
        logits, _ = scored_by_layers(model, layers)(pixels)
        np.testing.assert_allclose(logits.numpy(), model(pixels).numpy(), rtol=1e-5, atol=1e-5)
