"""Stage prepare: bad files are quarantined with reasons, duplicates never cross splits, splits are sound."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from stages import prepare
from tests.conftest import class_image, jpeg_bytes
from transferline.config import PrepareParams, PreprocessParams
from transferline.errors import DataError

PREPROCESS = PreprocessParams(image_size=16)


def run_prepare(tmp_path: Path, raw: Path, **overrides) -> dict:
    params = PrepareParams(**{"min_per_class": 3, "max_bad_fraction": 0.2, **overrides})
    return prepare.run(params, PREPROCESS, raw, tmp_path / "prepared", tmp_path / "metrics.json", workers=1)


def manifest(tmp_path: Path) -> list[dict[str, str]]:
    with open(tmp_path / "prepared" / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_clean_folder_gives_manifest_cache_and_metrics(tmp_path, image_tree):
    raw = image_tree({"cat": 20, "dog": 20, "fox": 20})
    metrics = run_prepare(tmp_path, raw)
    rows = manifest(tmp_path)
    assert len(rows) == 60
    assert metrics["splits"]["train"]["per_class"] == {"cat": 14, "dog": 14, "fox": 14}
    assert metrics["splits"]["test"]["image_size"]["width"] == {"min": 24, "max": 24, "mean": 24.0}
    dataset = json.loads((tmp_path / "prepared" / "dataset.json").read_text())
    assert dataset["classes"] == ["cat", "dog", "fox"]
    assert dataset["data_version"] == metrics["data_version"]
    images = np.load(tmp_path / "prepared" / "cache" / "val_images.npy")
    labels = np.load(tmp_path / "prepared" / "cache" / "val_labels.npy")
    assert images.shape == (9, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    val_rows = [r for r in rows if r["split"] == "val"]
    assert [r["label"] for r in val_rows] == ["cat"] * 3 + ["dog"] * 3 + ["fox"] * 3


def test_cache_holds_the_pixels_of_the_manifest_rows(tmp_path, image_tree):
    from PIL import Image

    from transferline.data.preprocessing import PreprocessSpec, resize_for_model

    raw = image_tree({"cat": 10, "dog": 10})
    run_prepare(tmp_path, raw)
    rows = [r for r in manifest(tmp_path) if r["split"] == "train"]
    images = np.load(tmp_path / "prepared" / "cache" / "train_images.npy")
    spec = PreprocessSpec.from_params(PREPROCESS)
    for index in (0, len(rows) - 1):
        expected = resize_for_model(Image.open(raw / rows[index]["path"]).convert("RGB"), spec)
        np.testing.assert_array_equal(images[index], expected)


def test_bad_files_are_quarantined_with_their_reason(tmp_path, image_tree):
    raw = image_tree({"cat": 20, "dog": 20})
    (raw / "cat" / "broken.jpg").write_bytes(jpeg_bytes(class_image(0, 999))[:200])
    (raw / "cat" / "empty.png").write_bytes(b"")
    (raw / "dog" / "notes.png").write_text("this is text, not a PNG")
    metrics = run_prepare(tmp_path, raw)
    report = json.loads((tmp_path / "prepared" / "quarantine.json").read_text())
    reasons = {item["path"]: item["reason"] for item in report["quarantined"]}
    assert set(reasons) == {"cat/broken.jpg", "cat/empty.png", "dog/notes.png"}
    assert "truncated" in reasons["cat/broken.jpg"]
    assert reasons["cat/empty.png"] == "empty file (0 bytes)"
    assert reasons["dog/notes.png"] == "not a recognised image format"
    assert metrics["quarantined"] == 3 and metrics["usable"] == 40
    assert (tmp_path / "prepared" / "quarantine" / "dog" / "notes.png").read_text().startswith("this is text")
    assert not any(r["path"] in reasons for r in manifest(tmp_path))


def test_documents_renamed_png_are_quarantined_without_running_ghostscript(tmp_path, image_tree, monkeypatch):
    import io
    import subprocess

    from PIL import EpsImagePlugin, Image

    def forbidden(*args, **kwargs):
        raise AssertionError("a raw file reached Ghostscript")

    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", forbidden)
    raw = image_tree({"cat": 20, "dog": 20})
    for name, fmt in (("drawing.png", "EPS"), ("scan.png", "PDF")):
        buffer = io.BytesIO()
        Image.fromarray(class_image(0, 500)).save(buffer, format=fmt)
        (raw / "cat" / name).write_bytes(buffer.getvalue())
    metrics = run_prepare(tmp_path, raw, max_bad_fraction=0.1)
    report = json.loads((tmp_path / "prepared" / "quarantine.json").read_text())
    reasons = {item["path"]: item["reason"] for item in report["quarantined"]}
    assert reasons == {
        "cat/drawing.png": "not a recognised image format: PostScript/EPS is not decoded here",
        "cat/scan.png": "not a recognised image format: PDF is not decoded here",
    }
    assert metrics["quarantined"] == 2 and metrics["usable"] == 40
    assert (tmp_path / "prepared" / "quarantine" / "cat" / "drawing.png").read_bytes().startswith(b"%!PS-Adobe")


def test_huge_file_is_quarantined_unread(tmp_path, image_tree):
    raw = image_tree({"cat": 20, "dog": 20})
    (raw / "dog" / "huge.png").write_bytes(b"\0" * 5000)
    run_prepare(tmp_path, raw, max_file_bytes=4000)
    report = json.loads((tmp_path / "prepared" / "quarantine.json").read_text())
    assert report["quarantined"][0]["reason"] == "file is 5000 bytes, above prepare.max_file_bytes"


def test_duplicates_are_removed_before_splitting(tmp_path, image_tree):
    raw = image_tree({"cat": 30, "dog": 30})
    for i in range(10):  # the same bytes under another name, in the same class
        (raw / "cat" / f"copy_{i}.png").write_bytes((raw / "cat" / f"img_{i:03d}.png").read_bytes())
    (raw / "dog" / "stolen.png").write_bytes((raw / "cat" / "img_020.png").read_bytes())
    metrics = run_prepare(tmp_path, raw)
    rows = manifest(tmp_path)
    shas = [r["sha256"] for r in rows]
    assert len(shas) == len(set(shas)), "an image appears twice"
    assert metrics["usable"] == 59  # 60 originals, minus the one whose label conflicts
    report = json.loads((tmp_path / "prepared" / "quarantine.json").read_text())
    conflicts = [d for d in report["duplicates_removed"] if "label conflict" in d["reason"]]
    assert {d["path"] for d in conflicts} == {"cat/img_020.png", "dog/stolen.png"}
    copies = [d for d in report["duplicates_removed"] if d["reason"].startswith("exact duplicate")]
    assert len(copies) == 10


def test_no_sha_in_two_splits_and_split_is_deterministic(tmp_path, image_tree):
    raw = image_tree({"a": 25, "b": 17, "c": 11})
    run_prepare(tmp_path, raw)
    first = {r["sha256"]: r["split"] for r in manifest(tmp_path)}
    run_prepare(tmp_path, raw)
    assert {r["sha256"]: r["split"] for r in manifest(tmp_path)} == first
    assert len(first) == 53


def test_one_class_fails_clearly(tmp_path, image_tree):
    raw = image_tree({"cat": 20})
    with pytest.raises(DataError, match=r"need at least 2 classes.*found only 'cat'"):
        run_prepare(tmp_path, raw)
    assert not (tmp_path / "prepared").exists()


def test_too_many_bad_files_fails_and_keeps_previous_output(tmp_path, image_tree):
    raw = image_tree({"cat": 10, "dog": 10})
    run_prepare(tmp_path, raw)
    before = (tmp_path / "prepared" / "manifest.csv").read_bytes()
    for i in range(6):
        (raw / "dog" / f"bad_{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"6 of 26 files \(23.1%\) are unusable.*dog/bad_0.png"):
        run_prepare(tmp_path, raw)
    assert (tmp_path / "prepared" / "manifest.csv").read_bytes() == before
    assert not list(tmp_path.glob(".prepared.*"))


def test_class_below_minimum_fails_naming_it(tmp_path, image_tree):
    raw = image_tree({"cat": 20, "dog": 4})
    with pytest.raises(DataError, match=r"below prepare\.min_per_class=5 usable images: 'dog' has 4"):
        run_prepare(tmp_path, raw, min_per_class=5)


def test_parallel_workers_give_the_same_result(tmp_path, image_tree):
    raw = image_tree({"cat": 15, "dog": 15})
    (raw / "dog" / "bad.png").write_bytes(b"garbage")
    serial = run_prepare(tmp_path, raw)
    params = PrepareParams(min_per_class=3, max_bad_fraction=0.2)
    parallel = prepare.run(params, PREPROCESS, raw, tmp_path / "p2", tmp_path / "m2.json", workers=2)
    assert parallel == serial
    for name in ("train_images.npy", "test_images.npy"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "prepared" / "cache" / name), np.load(tmp_path / "p2" / "cache" / name)
        )
