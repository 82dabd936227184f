"""Which blocks the OOD score reads, and that the taps read them without changing the model."""

from __future__ import annotations

import pytest
import torch

from transferline.model.backbones import BACKBONES, build_model
from transferline.model.feature_taps import HEAD_FEATURES, TappedBody, tap_blocks


def test_depths_pick_blocks_by_relative_position_and_the_last_block_is_the_heads_input():
    names = [f"features.{i}" for i in range(19)]  # MobileNetV2's blocks
    assert tap_blocks(names, (0.33, 0.67, 1.0)) == ["features.6", "features.12", HEAD_FEATURES]
    assert tap_blocks(names, (0.99,)) == [HEAD_FEATURES]
    assert tap_blocks(["a", "b"], (0.1, 0.2, 1.0)) == ["a", HEAD_FEATURES]  # one tap per block


@pytest.mark.parametrize("depths", [(), (0.0,), (1.5,)])
def test_depths_outside_the_backbone_are_refused(depths):
    with pytest.raises(ValueError):
        tap_blocks(["a", "b"], depths)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_answers_pooled_features_at_each_tap(backbone):
    """Random init (no weights needed): each tapped block yields (N, channels), the head's tap the body's output."""
    image_size = 75 if backbone == "inception_v3" else 64
    model = build_model(backbone, 3, pretrained=False)[0].eval()
    taps = tap_blocks([name for name, _ in model.blocks()], (0.33, 0.67, 1.0))
    x = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        features = TappedBody(model, taps)(x)
        body = model.body(x)
    assert len(features) == len(taps) >= 2
    assert all(f.dim() == 2 and f.shape[0] == 2 for f in features)
    torch.testing.assert_close(features[taps.index(HEAD_FEATURES)], body)


def test_an_unknown_block_is_named_in_the_error():
    model = build_model("resnet18", 3, pretrained=False)[0]
    with pytest.raises(ValueError, match=r"no block named 'layer9'.*layer1"):
        TappedBody(model, ["layer9"])
