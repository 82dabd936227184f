"""A Gaussian per class over the model's penultimate features, sharing one covariance: the Mahalanobis
out-of-distribution score (Lee et al., NeurIPS 2018), fitted on the training split.

Logit scores (energy, softmax maximum) only see what the head makes of an image; an image far from every
class, such as a photo shown to a Fashion-MNIST model, can still land on a confident logit. Its features,
though, lie far from every class's cloud. The score is the squared Mahalanobis distance to the nearest
class mean.

The covariance of 1,280 features from a few thousand images is poorly determined, so it is shrunk
(Ledoit-Wolf: the amount is estimated from the data, not chosen by hand), then kept as a probabilistic
PCA: its `rank` leading directions exactly, the rest as one mean variance (Tipping and Bishop 1999). That
bounds what the model file carries (D x rank numbers, not D x D) whatever the backbone's width.

The score the exported model answers adds such distances over several depths of the backbone
(transferline/model/feature_taps.py), each standardised by its mean and standard deviation on validation
images so that no layer dominates by its width: `LayerGaussian` and `combined_distance`.

Pure numpy: fitting here; the same distance inside the exported ONNX graph is
`transferline.evaluation.onnx_export.ScoredModel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RANK = 256
CONDITION_FLOOR = 1e-4


@dataclass(frozen=True)
class FeatureGaussian:
    means: np.ndarray  # (classes, D) class means of the training features
    components: np.ndarray  # (D, r) leading directions of the shared within-class covariance
    variances: np.ndarray  # (r,) its variance along each of them
    residual_variance: float  # the mean variance of the remaining D - r directions (0.0 when r == D)

    @property
    def rank(self) -> int:
        return int(self.components.shape[1])

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N,) squared Mahalanobis distance of each feature row to its nearest class mean."""
        features = np.asarray(features, dtype=np.float64)
        offsets = features[:, None, :] - self.means[None, :, :]  # (N, classes, D)
        projected = offsets @ self.components  # (N, classes, r)
        within = np.sum(projected**2 / self.variances, axis=-1)
        if self.residual_variance > 0:
            rest = np.sum(offsets**2, axis=-1) - np.sum(projected**2, axis=-1)
            within = within + np.maximum(rest, 0.0) / self.residual_variance
        return within.min(axis=1)


def fit_feature_gaussian(
    features: np.ndarray, labels: np.ndarray, num_classes: int, rank: int = DEFAULT_RANK
) -> FeatureGaussian:
    """Class means and the shrunk shared covariance of training features, in probabilistic-PCA form."""
    from sklearn.covariance import ledoit_wolf

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    if len(counts) > num_classes or np.any(counts == 0):
        missing = [int(k) for k in np.flatnonzero(counts[:num_classes] == 0)]
        raise ValueError(f"the feature Gaussian needs training features of every class; none for {missing}")
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    means = np.stack([features[labels == k].mean(axis=0) for k in range(num_classes)])
    covariance, _ = ledoit_wolf(features - means[labels], assume_centered=True)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    keep = min(rank, features.shape[1])
    # A direction (nearly) without variance, such as a feature no training image activates, would divide
    # float32 rounding by almost zero: no direction is kept below 1e-4 of the mean variance.
    floor = max(float(np.mean(eigenvalues)), 1e-12) * CONDITION_FLOOR
    rest = eigenvalues[keep:]
    return FeatureGaussian(
        means=means,
        components=np.ascontiguousarray(eigenvectors[:, :keep]),
        variances=np.maximum(eigenvalues[:keep], floor),
        residual_variance=float(max(rest.mean(), floor)) if len(rest) else 0.0,
    )


@dataclass(frozen=True)
class LayerGaussian:
    """One tapped layer's Gaussian, and where its distances lie on validation images (their mean and
    standard deviation), which puts layers of any width on one scale before they are added."""

    tap: str | None  # the block (transferline/model/feature_taps.py); None: the features the head reads
    gaussian: FeatureGaussian
    center: float
    scale: float


def standardisation(distances: np.ndarray) -> tuple[float, float]:
    """(mean, standard deviation) of validation distances; a constant layer gets scale 1, not 0."""
    distances = np.asarray(distances, dtype=np.float64)
    scale = float(distances.std())
    return float(distances.mean()), scale if scale > 1e-12 else 1.0


def combined_distance(layers: list[LayerGaussian], features: list[np.ndarray]) -> np.ndarray:
    """(N,) the sum over layers of each one's standardised distance; `features` in the layers' order."""
    if len(layers) != len(features):
        raise ValueError(f"{len(layers)} layers but {len(features)} feature matrices")
    pairs = zip(layers, features, strict=True)
    return sum((layer.gaussian.distances(f) - layer.center) / layer.scale for layer, f in pairs)
