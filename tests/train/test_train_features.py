"""The feature cache is reused only when it was made from the same backbone, weights, data and preprocessing."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from stages import train as train_stage
from transferline.data.preprocessing import PreprocessSpec
from transferline.model.backbones import build_model
from transferline.model.features import cache_key, cached_features, fit_probe
from transferline.model.training import Runtime


@pytest.fixture
def pieces(prepared):
    dataset = json.loads((prepared / "dataset.json").read_text())
    spec = PreprocessSpec.from_dict(dataset["preprocess"])
    torch.manual_seed(0)
    model, weights = build_model("mobilenet_v2", 3, pretrained=True)
    splits = {name: train_stage.load_split(prepared, name, 3, spec.image_size) for name in ("train", "val")}
    key = cache_key("mobilenet_v2", weights, dataset["data_version"], dataset["preprocess"], 1280)
    return model, splits, spec, key


def test_cache_is_reused_for_the_same_key_and_recomputed_for_another(pieces, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="transferline")
    model, splits, spec, key = pieces
    runtime = Runtime(torch.device("cpu"), None, True)
    first, from_cache = cached_features(model, splits, spec, runtime, tmp_path, key, 16)
    assert not from_cache and first["train"].shape == (24, 1280) and first["train"].dtype == np.float32
    stored = json.loads((tmp_path / "key.json").read_text())
    assert stored["key"]["weights"]["sha256"].startswith("b0353104") and stored["sizes"] == {"train": 24, "val": 6}

    again, from_cache = cached_features(model, splits, spec, runtime, tmp_path, key, 16)
    assert from_cache and np.array_equal(again["val"], first["val"])

    for changed in ({"data_version": "other"}, {"backbone": "resnet18"}, {"weights": {"kind": "random-init"}}):
        _, from_cache = cached_features(model, splits, spec, runtime, tmp_path, {**key, **changed}, 16)
        assert not from_cache
    assert "does not match this run (data_version)" in caplog.text
    recomputed, _ = cached_features(model, splits, spec, runtime, tmp_path, key, 16)
    np.testing.assert_allclose(recomputed["val"], first["val"], rtol=1e-5, atol=1e-5)


def test_probe_head_folds_the_standardisation_exactly():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 20))
    labels = np.repeat(np.arange(3), 30)
    features = (centres[labels] + rng.normal(0, 1, (90, 20))) * rng.uniform(0.1, 10, 20) + 5
    probe = fit_probe(features[::2], labels[::2], features[1::2], labels[1::2], 3, (1.0, 0.1))
    assert probe.val_accuracy > 0.9 and [t["l2"] for t in probe.trials] == [1.0, 0.1]
    raw_logits = features[1::2] @ probe.weight.T.astype(np.float64) + probe.bias
    assert (raw_logits.argmax(1) == labels[1::2]).mean() == pytest.approx(probe.val_accuracy)
