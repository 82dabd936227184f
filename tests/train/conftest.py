"""Tiny real data for the training tests: 3 colour classes x 12 images at 32 px, through the real prepare stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stages import prepare
from stages import train as train_stage
from tests.conftest import write_class_images
from transferline.config import PrepareParams, PreprocessParams, TrainParams

CLASSES = ("cat", "dog", "fox")
IMAGE_SIZE = 32


def write_images(raw: Path, per_class: int = 12, size: int = IMAGE_SIZE) -> None:
    write_class_images(raw, dict.fromkeys(CLASSES, per_class), size)


@pytest.fixture
def write_tiny_images() -> Callable[..., None]:
    return write_images


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """data/prepared made by the prepare stage itself: train 8, val 2, test 2 images per class."""
    root = tmp_path_factory.mktemp("tiny")
    write_images(root / "raw")
    prepare.run(
        PrepareParams(min_per_class=3),
        PreprocessParams(image_size=IMAGE_SIZE),
        root / "raw",
        root / "prepared",
        root / "prepare.json",
        workers=1,
    )
    labels = np.load(root / "prepared" / "cache" / "train_labels.npy")
    assert len(labels) == 24
    return root / "prepared"


def make_tiny_params(**overrides) -> TrainParams:
    """A recipe that takes a second or two on a CPU: 2 epochs of 3 batches of 8."""
    values = {"epochs": 2, "warmup_epochs": 0.5, "batch_size": 8, "early_stopping_patience": None, "frozen_blocks": 0}
    values["num_threads"] = 1  # tiny tensors: one thread is as fast, and immune to oversubscription
    values.update(overrides)
    return TrainParams(**values)


@pytest.fixture
def tiny_params() -> Callable[..., TrainParams]:
    return make_tiny_params


@pytest.fixture
def run_train(prepared: Path, tmp_path: Path) -> Callable[..., dict]:
    """Run the train stage's core on the tiny data, every output under tmp_path/<out>."""

    def run(params: TrainParams, out: str = "out", **kwargs) -> dict:
        base = tmp_path / out
        return train_stage.run(
            params,
            prepared_dir=prepared,
            models_dir=base / "models",
            features_dir=base / "features",
            checkpoint_dir=base / "checkpoints",
            metrics_file=base / "metrics" / "train.json",
            live_dir=kwargs.pop("live_dir", base / "dvclive"),
            **kwargs,
        )

    return run
