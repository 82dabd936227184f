"""The backbone registry: real torchvision structures, real ImageNet weights, and clear failures without them."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from PIL import Image

from transferline.config import BackboneName
from transferline.errors import AssetError, ParamsError
from transferline.model import backbones
from transferline.model.backbones import BACKBONES, build_model, build_torchvision_model, checkpoint_file, get_spec

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_registry_matches_the_params_choices():
    assert set(typing.get_args(BackboneName)) == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_blocks_cover_every_body_parameter_exactly_once(name):
    torch.manual_seed(0)
    model, source = build_model(name, num_classes=7, pretrained=False)
    assert source == {"kind": "random-init"}
    blocks = model.blocks()
    assert [b for b, _ in blocks] == get_spec(name).block_names and len(blocks) >= 5
    owners: dict[int, str] = {}
    for block_name, modules in blocks:
        for module in modules:
            for param in module.parameters():
                assert id(param) not in owners, f"{block_name} shares a parameter with {owners.get(id(param))}"
                owners[id(param)] = block_name
    body_params = {id(p) for p in model.body.parameters()}
    assert body_params == set(owners), "every body parameter belongs to exactly one block"
    assert model.head.out_features == 7
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        features = model.body(x)
    assert features.shape == (2, backbones.feature_dim(model))
    assert model(x).shape == (2, 7)


def test_imagenet_normalisation_comes_from_the_weights():
    mean, std = backbones.imagenet_normalization(get_spec("mobilenet_v2"))
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))


def test_seeded_imagenet_mobilenet_v2_calls_chelsea_a_cat():
    from skimage import data
    from torchvision.models import get_model_weights

    spec = get_spec("mobilenet_v2")
    assert checkpoint_file(spec).is_file(), "run `make assets` (python -m transferline.data.assets weights)"
    model, source = build_torchvision_model(spec, pretrained=True)
    assert source["kind"] == "torchvision" and source["sha256"].startswith("b0353104")
    transform = get_model_weights("mobilenet_v2")[spec.weights].transforms()  # resize 256, centre crop 224
    x = transform(Image.fromarray(data.chelsea())).unsqueeze(0)
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        top = model.eval()(x).softmax(1)[0].topk(3)
    assert int(top.indices[0]) in IMAGENET_CATS
    assert float(top.values[0]) > 0.3


def test_pretrained_body_holds_the_checkpoint_weights_not_a_random_init():
    spec = get_spec("mobilenet_v2")
    state = torch.load(checkpoint_file(spec), map_location="cpu", weights_only=True)
    model, _ = build_model("mobilenet_v2", num_classes=3, pretrained=True)
    body = model.body.state_dict()
    for key in ("features.0.0.weight", "features.18.1.running_var", "features.10.conv.1.0.weight"):
        assert torch.equal(body[key], state[key])
    assert "classifier.1.weight" not in body  # the ImageNet head is gone; ours is model.head


def _block_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(url, dst, *args, **kwargs):
        raise ConnectionError(f"network blocked by the test: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def test_missing_weight_file_is_a_clear_asset_error_not_a_random_init(monkeypatch, tmp_path):
    _block_downloads(monkeypatch, tmp_path)
    assert not checkpoint_file(get_spec("mobilenet_v2")).exists()
    with pytest.raises(AssetError) as error:
        build_model("mobilenet_v2", num_classes=3, pretrained=True)
    message = str(error.value)
    assert "make assets" in message and "mobilenet_v2-b0353104.pth" in message and "network blocked" in message
    with pytest.raises(AssetError) as error:
        build_model("resnet18", num_classes=3, pretrained=True)
    assert "train.weights_path" in str(error.value) and "network access" in str(error.value)


def test_a_corrupt_cached_checkpoint_is_refused(monkeypatch, tmp_path):
    _block_downloads(monkeypatch, tmp_path)
    target = checkpoint_file(get_spec("mobilenet_v2"))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a checkpoint")
    with pytest.raises(AssetError, match="does not match the hash in its name"):
        build_model("mobilenet_v2", num_classes=3, pretrained=True)


def test_local_weights_path_loads_with_weights_only(tmp_path):
    torch.manual_seed(3)
    source_model, _ = build_torchvision_model(get_spec("resnet18"), pretrained=False)
    path = tmp_path / "resnet18.pt"
    torch.save(source_model.state_dict(), path)
    model, source = build_model("resnet18", num_classes=4, pretrained=True, weights_path=path)
    assert source["kind"] == "file" and len(source["sha256"]) == 64
    assert torch.equal(model.body.layer4[1].conv2.weight, source_model.layer4[1].conv2.weight)

    torch.save({"model": {"not": "tensors"}, "code": np.arange(3)}, tmp_path / "bad.pt")
    with pytest.raises(ParamsError, match=r"train\.weights_path"):
        build_model("resnet18", num_classes=4, pretrained=True, weights_path=tmp_path / "bad.pt")
    with pytest.raises(ParamsError, match=r"train\.weights_path: .* does not fit resnet50"):
        build_model("resnet50", num_classes=4, pretrained=True, weights_path=path)
    with pytest.raises(ParamsError, match=r"train\.weights_path: .* does not exist"):
        build_model("resnet18", num_classes=4, pretrained=True, weights_path=tmp_path / "absent.pt")
