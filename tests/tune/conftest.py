"""Tiny real data for the search tests (3 colour classes x 12 images at 32 px via the real prepare stage),
a params.yaml whose train recipe takes about a second, and a search-space writer."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import prepare
from tests.conftest import PROJECT_ROOT, write_class_images
from transferline.config import PrepareParams, PreprocessParams
from transferline.search.tuning import StudyConfig

CLASSES = ("cat", "dog", "fox")
IMAGE_SIZE = 32
TINY_TRAIN = {
    "epochs": 2,
    "warmup_epochs": 0.5,
    "batch_size": 8,
    "early_stopping_patience": None,
    "device": "cpu",
    "strategy": "feature_extraction",
}
HEAD_ONLY_SPACE = {"train.probe_l2": {"type": "float", "low": 1.0e-3, "high": 1.0, "log": True, "grid": [0.01, 0.3]}}

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """data/prepared made by the prepare stage itself: train 8, val 2, test 2 images per class."""
    root = tmp_path_factory.mktemp("tune-data")
    write_class_images(root / "raw", dict.fromkeys(CLASSES, 12), IMAGE_SIZE)
    prepare.run(
        PrepareParams(min_per_class=3),
        PreprocessParams(image_size=IMAGE_SIZE),
        root / "raw",
        root / "prepared",
        root / "prepare.json",
        workers=1,
    )
    assert len(np.load(root / "prepared" / "cache" / "test_labels.npy")) == 6
    return root / "prepared"


@pytest.fixture
def study_config(tiny_prepared: Path, tmp_path: Path) -> Callable[..., StudyConfig]:
    """A StudyConfig over the tiny data: a copy of the project's params.yaml with a tiny train recipe."""

    def make(space: dict | None = None, train: dict | None = None, **overrides) -> StudyConfig:
        params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
        params["train"] = {**params["train"], **TINY_TRAIN, **(train or {})}
        params_file = tmp_path / "params.yaml"
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        space_file = tmp_path / "search_space.yaml"
        space_file.write_text(yaml.safe_dump(space or HEAD_ONLY_SPACE, sort_keys=False))
        values = {
            "space_file": str(space_file),
            "params_file": str(params_file),
            "prepared_dir": str(tiny_prepared),
            "work_dir": str(tmp_path / "tuning"),
            "sampler": "random",
            "trials": 3,
            **overrides,
        }
        return StudyConfig(**values)

    return make


@pytest.fixture
def prepared_without_test(tiny_prepared: Path, tmp_path: Path) -> Path:
    """A copy of the prepared data whose test split is gone: tuning must not need it."""
    copy = tmp_path / "prepared-no-test"
    shutil.copytree(tiny_prepared, copy)
    removed = list((copy / "cache").glob("test_*"))
    assert removed
    for path in removed:
        path.unlink()
    return copy
