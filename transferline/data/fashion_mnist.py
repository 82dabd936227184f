"""Reading the Fashion-MNIST idx files and choosing a stratified, seeded subset of them."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferline.data import subsets
from transferline.errors import AssetError

CLASS_NAMES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FILE_NAMES = tuple(name for pair in SPLIT_FILES.values() for name in pair)


@dataclass(frozen=True)
class FashionMnist:
    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray  # int64 (N,)
    origins: tuple[str, ...]  # "train-00012" / "t10k-00345", stable names for each image


def parse_idx(data: bytes) -> np.ndarray:
    """Decode an idx file (the MNIST format): magic, dims, big-endian sizes, uint8 payload."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(data, dtype=np.uint8, offset=header)
    if payload.size != int(np.prod(dims)):
        raise ValueError(f"idx payload has {payload.size} bytes, header says {dims}")
    return payload.reshape(dims)


def load(directory: Path) -> FashionMnist:
    missing = [name for name in FILE_NAMES if not (directory / name).is_file()]
    if missing:
        raise AssetError(
            f"Fashion-MNIST files missing in {directory}: {', '.join(missing)}. "
            "Run `make assets` (or `python -m transferline.data.assets data`) to fetch them."
        )
    images, labels, origins = [], [], []
    for split, (image_file, label_file) in SPLIT_FILES.items():
        try:
            split_images = parse_idx(gzip.decompress((directory / image_file).read_bytes()))
            split_labels = parse_idx(gzip.decompress((directory / label_file).read_bytes()))
        except (OSError, ValueError, EOFError) as exc:
            raise AssetError(f"Fashion-MNIST file in {directory} is corrupt: {exc}") from exc
        if split_images.shape[0] != split_labels.shape[0]:
            raise AssetError(f"Fashion-MNIST {split}: image and label counts differ")
        images.append(split_images)
        labels.append(split_labels.astype(np.int64))
        origins.extend(f"{split}-{i:05d}" for i in range(split_images.shape[0]))
    return FashionMnist(np.concatenate(images), np.concatenate(labels), tuple(origins))


def stratified_subset(labels: np.ndarray, origins: Sequence[str], per_class: int | None, seed: int) -> np.ndarray:
    """Indices of `per_class` images of every class (all if None), in ascending order; nested across
    `per_class` for one seed (see transferline/data/subsets.py)."""
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep = subsets.choose([origins[i] for i in members], per_class, seed)
        chosen.append(members[keep])
    return np.sort(np.concatenate(chosen))
