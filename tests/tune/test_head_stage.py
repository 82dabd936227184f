"""The train stage fits the head a head-only trial describes: the same probe params, the same head."""

from __future__ import annotations

import numpy as np
import torch

from stages import train as train_stage
from transferline.model.backbones import build_model, feature_dim
from transferline.model.features import cache_key
from transferline.model.head import fit_probe
from transferline.model.training import resolve_runtime
from transferline.search.search_space import resolve_params
from transferline.search.tuning import load_tuning_data


def test_the_train_stage_honours_the_head_params(tiny_prepared, tmp_path, monkeypatch):
    data = load_tuning_data(tiny_prepared)
    base = {"strategy": "feature_extraction", "device": "cpu", "batch_size": 8}
    trial = {"train.probe_l2": 0.05, "train.probe_standardize": False, "train.probe_label_smoothing": 0.2}
    params = resolve_params(base, trial)
    calls = []
    monkeypatch.setattr(train_stage, "fit_probe", lambda *a, **k: calls.append(k) or fit_probe(*a, **k))
    torch.manual_seed(0)
    model, weights = build_model(params.backbone, len(data.classes), params.pretrained)
    key = cache_key(params.backbone, weights, data.data_version, data.preprocess, feature_dim(model))
    features_dir = tmp_path / "features"
    train_stage.fit_feature_extraction(
        model, data.train, data.val, data.spec, params, resolve_runtime(params), features_dir, key, None
    )
    assert calls == [{"standardize": False, "label_smoothing": 0.2}]
    train_x, val_x = (np.load(features_dir / f"{split}.npy") for split in ("train", "val"))
    expected = fit_probe(train_x, data.train.labels, val_x, data.val.labels, 3, [0.05], False, 0.2)
    default = fit_probe(train_x, data.train.labels, val_x, data.val.labels, 3, [0.05])
    assert not np.allclose(expected.weight, default.weight, atol=1e-3)  # the params make a difference here
    torch.testing.assert_close(model.head.weight.detach(), torch.from_numpy(expected.weight))
    torch.testing.assert_close(model.head.bias.detach(), torch.from_numpy(expected.bias))
