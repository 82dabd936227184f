"""The prepared pixel cache (`data/prepared/cache/<split>_{images,labels}.npy`), read and checked in one place.

Every stage after `prepare` reads images from here, so a cache that does not match the data set's
description fails with the same precise message everywhere instead of as a shape error deep inside a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferline.data.manifest import MANIFEST_NAME, read_manifest
from transferline.errors import DataError


@dataclass
class SplitData:
    images: np.ndarray  # uint8 (N, S, S, 3), possibly memory-mapped
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


def read_dataset(prepared_dir: Path) -> dict:
    """dataset.json of the prepared data; DataError when prepare has not run or kept no pixel cache."""
    path = prepared_dir / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist: run the prepare stage first (dvc repro prepare)")
    dataset = json.loads(path.read_text())
    if not dataset.get("cached"):
        raise DataError(f"{prepared_dir} has no pixel cache: the later stages read it, set prepare.cache: true")
    return dataset


def load_split(prepared_dir: Path, name: str, num_classes: int, image_size: int) -> SplitData:
    """One split's pixels (memory-mapped copy-on-write: nothing is read up front) and labels, checked."""
    cache = prepared_dir / "cache"
    images = np.load(cache / f"{name}_images.npy", mmap_mode="c")
    labels = np.load(cache / f"{name}_labels.npy").astype(np.int64)
    if images.shape[1:] != (image_size, image_size, 3) or images.dtype != np.uint8 or len(images) != len(labels):
        raise DataError(f"{cache}/{name}_*.npy: expected uint8 (N, {image_size}, {image_size}, 3) and N labels")
    if len(labels) == 0:
        raise DataError(f"the {name} split is empty: more images are needed")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{cache}/{name}_labels.npy holds labels outside 0..{num_classes - 1}")
    return SplitData(images, labels)


def split_paths(prepared_dir: Path, name: str, expected: int) -> list[str]:
    """The raw path (relative to data/raw) of each image of a split, in cache order: prepare writes
    manifest.csv and the cache in the same (split, label, path) order, so row i is cache row i."""
    paths = [row.path for row in read_manifest(prepared_dir) if row.split == name]
    if len(paths) != expected:
        raise DataError(
            f"{prepared_dir / MANIFEST_NAME} lists {len(paths)} {name} images, the cache holds {expected}: "
            "run prepare again"
        )
    return paths
