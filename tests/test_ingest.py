"""Stage ingest: Fashion-MNIST and ELPV as stratified, nested subsets, and a user's folder copied as-is."""

import csv
import gzip
import json
import re
import typing

import numpy as np
import pytest
from PIL import Image

from stages import ingest, prepare
from transferline.config import IngestParams, IngestSource, PrepareParams, PreprocessParams, parse_section
from transferline.data import assets, elpv, fashion_mnist
from transferline.errors import AssetError, DataError, ParamsError


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


def test_every_configured_source_has_a_writer():
    assert set(ingest.SOURCES) == set(typing.get_args(IngestSource))


@pytest.mark.parametrize("per_class", [1, 3, 6])
def test_subsets_are_nested_across_sizes_for_one_seed(tmp_path, tiny_fashion_mnist, image_tree, per_class):
    """A learning curve compares like with like: the images of a smaller subset are all in a larger one."""
    root = image_tree({"cat": 9, "dog": 8})
    for source, path in (("fashion_mnist", tiny_fashion_mnist), ("folder", root)):
        names = {}
        for size in (per_class, per_class + 2):
            params = IngestParams(source=source, path=path, per_class=size, seed=3)
            raw = tmp_path / f"{source}-{size}"
            ingest.run(params, raw, tmp_path / "r.json")
            names[size] = {p.relative_to(raw) for p in raw.rglob("*.png")}
        assert len(names[per_class]) == per_class * (10 if source == "fashion_mnist" else 2)
        assert names[per_class] < names[per_class + 2]


def test_per_class_above_what_a_class_has_takes_all_and_says_so(tmp_path, tiny_fashion_mnist, image_tree):
    report = ingest.run(
        IngestParams(source="fashion_mnist", path=tiny_fashion_mnist, per_class=12), tmp_path / "raw", tmp_path / "r"
    )
    assert set(report.counts.values()) == {11}  # 8 train + 3 t10k images per class
    saved = json.loads((tmp_path / "r").read_text())
    assert saved["requested_per_class"] == 12
    assert saved["short_of_per_class"] == {name: 11 for name in fashion_mnist.CLASS_NAMES}
    root = image_tree({"cat": 9, "dog": 3})
    ingest.run(IngestParams(source="folder", path=root, per_class=5), tmp_path / "raw2", tmp_path / "r2")
    assert json.loads((tmp_path / "r2").read_text())["short_of_per_class"] == {"dog": 3}
    ingest.run(IngestParams(source="folder", path=root, per_class=None), tmp_path / "raw3", tmp_path / "r3")
    assert json.loads((tmp_path / "r3").read_text())["short_of_per_class"] == {}


def test_ten_per_class_still_prepares_into_three_splits(tmp_path, image_tree):
    """The smallest learning-curve point: 10 images a class pass prepare's default minimum and fill
    train 6 / val 2 / test 2 per class."""
    root = image_tree({"cat": 30, "dog": 30})
    ingest.run(IngestParams(source="folder", path=root, per_class=10), tmp_path / "raw", tmp_path / "r")
    metrics = prepare.run(
        PrepareParams(), PreprocessParams(image_size=16), tmp_path / "raw", tmp_path / "prep", tmp_path / "m", workers=1
    )
    assert PrepareParams().min_per_class == 10
    assert {name: split["per_class"]["cat"] for name, split in metrics["splits"].items()} == {
        "train": 6,
        "val": 2,
        "test": 2,
    }


ELPV_LABELS = """images/cell0001.png  1.0                 mono
images/cell0002.png  0.0                 poly
images/cell0003.png  0.3333333333333333  mono
images/cell0004.png  0.6666666666666666  poly
images/cell0005.png  0.0                 mono
"""


@pytest.fixture
def tiny_elpv(tmp_path):
    """Five cells in the package's layout: labels.csv and images/, one PNG per line."""
    directory = tmp_path / "elpv-src"
    (directory / "images").mkdir(parents=True)
    (directory / "labels.csv").write_text(ELPV_LABELS)
    for i in range(1, 6):
        pixels = np.full((30, 30), 40 * i, dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(directory / "images" / f"cell{i:04d}.png")
    return directory


LEVEL_CLASSES = {
    "0.0": "defect_000",
    "0.3333333333333333": "defect_033",
    "0.6666666666666666": "defect_067",
    "1.0": "defect_100",
}


def raw_listing(raw):
    return sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.png"))


@pytest.mark.parametrize(
    ("task", "classes"),
    [
        (None, {"defective", "functional"}),
        ("functional_vs_defective", {"defective", "functional"}),
        ("defect_level", {"defect_000", "defect_033", "defect_067", "defect_100"}),
    ],
)
def test_elpv_from_the_installed_package_gives_the_task_classes_deterministically(tmp_path, task, classes):
    path = elpv.packaged_dir()
    params = IngestParams(source="elpv", path=path, per_class=5, task=task, seed=2)
    report = ingest.run(params, tmp_path / "raw", tmp_path / "r.json")
    assert report.counts == {name: 5 for name in classes}
    first = raw_listing(tmp_path / "raw")
    ingest.run(params, tmp_path / "raw", tmp_path / "r.json")
    assert raw_listing(tmp_path / "raw") == first
    other_seed = params.model_copy(update={"seed": 3})
    ingest.run(other_seed, tmp_path / "raw", tmp_path / "r.json")
    assert raw_listing(tmp_path / "raw") != first

    with open(tmp_path / "raw" / ingest.ELPV_CELLS_FILE, newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in cells) == raw_listing(tmp_path / "raw")
    labels = {line.split()[0]: line.split() for line in (path / "labels.csv").read_text().splitlines()}
    for row in cells:
        _, probability, cell_type = labels[row["origin"]]
        assert row["cell_type"] == cell_type and row["path"].endswith(f"-{cell_type}.png")
        if task == "defect_level":
            assert row["label"] == LEVEL_CLASSES[probability]
        else:
            assert row["label"] == ("defective" if float(probability) >= 0.5 else "functional")
        assert (tmp_path / "raw" / row["path"]).read_bytes() == (path / row["origin"]).read_bytes()
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["task"] == (task or "functional_vs_defective")
    assert sum(sum(types.values()) for types in saved["cell_types"].values()) == 5 * len(classes)


def test_elpv_all_cells_split_by_the_half_probability(tmp_path, tiny_elpv):
    report = ingest.run(IngestParams(source="elpv", path=tiny_elpv, per_class=None), tmp_path / "raw", tmp_path / "r")
    assert report.counts == {"defective": 2, "functional": 3}  # 1.0 and 2/3 vs 0, 1/3, 0
    assert raw_listing(tmp_path / "raw") == [
        "defective/elpv-cell0001-mono.png",
        "defective/elpv-cell0004-poly.png",
        "functional/elpv-cell0002-poly.png",
        "functional/elpv-cell0003-mono.png",
        "functional/elpv-cell0005-mono.png",
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("images/cell0009.png 0.5 mono", "probability 0.5 is not one of"),
        ("images/cell0009.png 1.0 thin", "cell type 'thin'"),
        ("images/cell0009.png one mono", "'one' is not a number"),
        ("images/cell0009.png 1.0", "expected 'path probability type'"),
        ("../cell0009.png 1.0 mono", "must stay inside"),
    ],
)
def test_elpv_bad_label_lines_are_named(tmp_path, tiny_elpv, line, message):
    (tiny_elpv / "labels.csv").write_text(ELPV_LABELS + line + "\n")
    with pytest.raises(AssetError, match=rf"labels.csv line 6: .*{re.escape(message)}"):
        ingest.run(IngestParams(source="elpv", path=tiny_elpv), tmp_path / "raw", tmp_path / "r")
    assert not (tmp_path / "raw").exists()


def test_elpv_missing_data_says_how_to_get_it(tmp_path, tiny_elpv):
    with pytest.raises(AssetError, match=r"assets elpv"):
        ingest.run(IngestParams(source="elpv", path=tmp_path / "none"), tmp_path / "raw", tmp_path / "r")
    (tiny_elpv / "images" / "cell0003.png").unlink()
    with pytest.raises(AssetError, match=r"incomplete: images/cell0003.png missing"):
        ingest.run(IngestParams(source="elpv", path=tiny_elpv), tmp_path / "raw", tmp_path / "r")


def test_task_is_refused_for_other_sources():
    with pytest.raises(ParamsError, match=r"task applies only to source elpv"):
        parse_section({"ingest": {"source": "folder", "task": "defect_level"}}, "ingest", IngestParams)
    with pytest.raises(ParamsError, match=r"ingest.task"):
        parse_section({"ingest": {"source": "elpv", "task": "severity"}}, "ingest", IngestParams)


def test_assets_copy_elpv_whole_and_only_once(tmp_path, tiny_elpv):
    target = tmp_path / "external" / "elpv"
    assert assets.ensure_elpv(target, source=tiny_elpv) == target
    assert (target / "images" / "cell0005.png").read_bytes() == (tiny_elpv / "images" / "cell0005.png").read_bytes()
    assert [cell.name for cell in elpv.load(target)] == [f"cell{i:04d}" for i in range(1, 6)]
    stamp = (target / "labels.csv").stat().st_mtime_ns
    assets.ensure_elpv(target, source=tiny_elpv)
    assert (target / "labels.csv").stat().st_mtime_ns == stamp  # present: not copied again
    (target / "images" / "cell0002.png").unlink()
    assets.ensure_elpv(target, source=tiny_elpv)  # incomplete: copied again, whole
    assert (target / "images" / "cell0002.png").is_file()


def test_assets_elpv_refers_to_the_installed_package():
    assert (elpv.packaged_dir() / "images" / "cell2624.png").is_file()
    assert len(elpv.load(elpv.packaged_dir())) == 2624


def test_elpv_without_its_package_says_which_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(elpv.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AssetError, match=r"elpv-dataset package is not installed: pip install -e '\.\[elpv\]'"):
        elpv.packaged_dir()
    # the set-up step reports it as an error, not a traceback
    assert assets.main(["elpv", "--elpv-dir", str(tmp_path / "elpv")]) == 2
