"""A corrupt file that appears in the user's image folder after a good run is quarantined by the next
`dvc repro`, and changes nothing else."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import class_image, png_bytes, run_tool

pytestmark = pytest.mark.slow


def repro(repo: Path) -> str:
    result = run_tool(["dvc", "repro", "prepare"], repo)
    return result.stdout + result.stderr


def manifest(repo: Path) -> list[dict[str, str]]:
    with open(repo / "data" / "prepared" / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def cached_pixels(repo: Path) -> dict[str, np.ndarray]:
    cache = repo / "data" / "prepared" / "cache"
    return {path.name: np.load(path) for path in sorted(cache.glob("*.npy"))}


def test_a_corrupt_file_appearing_in_the_raw_folder_is_quarantined_by_the_next_run(dvc_repo, image_tree):
    repo = dvc_repo
    image_tree({"cat": 16, "dog": 16, "fox": 16}, root=repo / "images")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"].update({"source": "folder", "path": "images", "per_class": None})
    params["preprocess"]["image_size"] = 16
    params["prepare"]["min_per_class"] = 3  # max_bad_fraction stays at its default (0.05): 2 bad of 50 pass
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro(repo)
    before_rows, before_pixels = manifest(repo), cached_pixels(repo)
    before_version = json.loads((repo / "data" / "prepared" / "dataset.json").read_text())["data_version"]
    assert json.loads((repo / "data" / "prepared" / "quarantine.json").read_text())["quarantined"] == []

    truncated = png_bytes(class_image(1, 500))
    (repo / "images" / "dog" / "upload_cut_short.png").write_bytes(truncated[: len(truncated) // 2])
    (repo / "images" / "dog" / "renamed_pdf.jpg").write_bytes(b"%PDF-1.4\n% not an image at all\n")
    (repo / "images" / "fox" / "notes.txt").write_text("shot list for the next session")

    output = repro(repo)
    assert "Running stage 'ingest'" in output and "Running stage 'prepare'" in output  # the new files were noticed
    report = json.loads((repo / "data" / "prepared" / "quarantine.json").read_text())
    reasons = {item["path"]: item["reason"] for item in report["quarantined"]}
    assert set(reasons) == {"dog/upload_cut_short.png", "dog/renamed_pdf.jpg"}
    assert "truncated" in reasons["dog/upload_cut_short.png"]
    assert reasons["dog/renamed_pdf.jpg"].startswith("not a recognised image format: PDF")
    quarantine = repo / "data" / "prepared" / "quarantine"
    assert (quarantine / "dog" / "renamed_pdf.jpg").read_bytes().startswith(b"%PDF")
    assert (quarantine / "dog" / "upload_cut_short.png").stat().st_size == len(truncated) // 2
    skipped = json.loads((repo / "metrics" / "ingest.json").read_text())["skipped"]
    assert [Path(item["path"]).name for item in skipped] == ["notes.txt"]  # not an image extension: never ingested
    metrics = json.loads((repo / "metrics" / "prepare.json").read_text())
    assert (metrics["files"], metrics["usable"], metrics["quarantined"]) == (50, 48, 2)

    # the good images are untouched: same rows, same splits, same pixels, hence the same data version
    assert manifest(repo) == before_rows
    after_pixels = cached_pixels(repo)
    assert after_pixels.keys() == before_pixels.keys()
    for name, array in before_pixels.items():
        np.testing.assert_array_equal(after_pixels[name], array, err_msg=name)
    assert json.loads((repo / "data" / "prepared" / "dataset.json").read_text())["data_version"] == before_version
    assert "up to date" in run_tool(["dvc", "status", "ingest", "prepare"], repo).stdout
