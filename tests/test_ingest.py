"""Stage ingest: the built-in data set as a stratified subset, and a user's folder copied as-is."""

import gzip
import json

import numpy as np
import pytest

from stages import ingest
from transferline.config import IngestParams
from transferline.data import fashion_mnist
from transferline.errors import AssetError, DataError


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def tiny_fashion_mnist(tmp_path):
    """Idx files in the Fashion-MNIST layout: 10 classes, 8 + 3 images each."""
    directory = tmp_path / "fmnist"
    directory.mkdir()
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 8), ("t10k", 3)):
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 255, (labels.size, 28, 28), dtype=np.uint8)
        image_file, label_file = fashion_mnist.SPLIT_FILES[split]
        (directory / image_file).write_bytes(gzip.compress(idx_bytes(images)))
        (directory / label_file).write_bytes(gzip.compress(idx_bytes(labels)))
    return directory


def test_fashion_mnist_subset_is_stratified_and_seeded(tmp_path, tiny_fashion_mnist):
    params = IngestParams(source="fashion_mnist", path=tiny_fashion_mnist, per_class=5, seed=1)
    report = ingest.run(params, tmp_path / "raw", tmp_path / "ingest.json")
    assert report.counts == {name: 5 for name in sorted(fashion_mnist.CLASS_NAMES)}
    first = sorted(p.name for p in (tmp_path / "raw" / "bag").iterdir())
    ingest.run(params, tmp_path / "raw", tmp_path / "ingest.json")
    assert sorted(p.name for p in (tmp_path / "raw" / "bag").iterdir()) == first
    assert json.loads((tmp_path / "ingest.json").read_text())["images"] == 50


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path):
    params = IngestParams(source="fashion_mnist", path=tmp_path / "nowhere")
    with pytest.raises(AssetError, match="make assets"):
        ingest.run(params, tmp_path / "raw", tmp_path / "ingest.json")
    assert not (tmp_path / "raw").exists()


def test_folder_source_copies_images_byte_for_byte(tmp_path, image_tree):
    root = image_tree({"cat": 4, "dog": 3})
    (root / "dog" / "nested").mkdir()
    (root / "dog" / "nested" / "x.JPG").write_bytes(b"not really a jpeg")
    (root / "dog" / "notes.txt").write_text("hello")
    (root / "README.md").write_text("loose file")
    (root / ".DS_Store").write_text("hidden")
    params = IngestParams(source="folder", path=root, per_class=None)
    report = ingest.run(params, tmp_path / "raw", tmp_path / "ingest.json")
    assert report.counts == {"cat": 4, "dog": 4}
    copied = tmp_path / "raw" / "dog" / "nested__x.JPG"
    assert copied.read_bytes() == b"not really a jpeg"  # judged later by prepare, not here
    assert (tmp_path / "raw" / "cat" / "img_000.png").read_bytes() == (root / "cat" / "img_000.png").read_bytes()
    reasons = {item["path"].rsplit("/", 1)[1]: item["reason"] for item in report.skipped}
    assert reasons == {"README.md": "not inside a class folder", "notes.txt": reasons["notes.txt"]}
    assert "extension .txt" in reasons["notes.txt"]


def test_folder_source_caps_per_class(tmp_path, image_tree):
    root = image_tree({"cat": 9, "dog": 3})
    report = ingest.run(IngestParams(source="folder", path=root, per_class=5), tmp_path / "raw", tmp_path / "r")
    assert report.counts == {"cat": 5, "dog": 3}


def test_empty_class_folder_is_an_error_and_leaves_previous_output(tmp_path, image_tree):
    root = image_tree({"cat": 3, "dog": 3})
    raw = tmp_path / "raw"
    ingest.run(IngestParams(source="folder", path=root, per_class=None), raw, tmp_path / "r.json")
    before = sorted(p.relative_to(raw) for p in raw.rglob("*"))
    (root / "fox").mkdir()
    (root / "fox" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"no image files in .*: fox"):
        ingest.run(IngestParams(source="folder", path=root, per_class=None), raw, tmp_path / "r.json")
    assert sorted(p.relative_to(raw) for p in raw.rglob("*")) == before
    assert not list(tmp_path.glob(".raw.*"))  # no temporary directory left behind


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ingest.run(IngestParams(source="folder", path=tmp_path / "none"), tmp_path / "raw", tmp_path / "r")
