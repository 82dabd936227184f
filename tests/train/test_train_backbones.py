"""The backbone registry: real torchvision structures, real ImageNet weights, and clear failures without them."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
from PIL import Image

from transferline.config import BackboneName
from transferline.data import assets
from transferline.data.assets import EFFICIENTNET_LITE0
from transferline.data.preprocessing import PreprocessSpec, normalize, resize_for_model
from transferline.errors import AssetError, ParamsError
from transferline.model import backbones
from transferline.model.backbones import BACKBONES, build_model, build_torchvision_model, checkpoint_file, get_spec

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
EGYPTIAN_CAT = 285


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
    size = get_spec(name).native_input_size or 64  # InceptionV3: one forward at its own 299 px
    x = torch.randn(2, 3, size, size)
    model.train()  # train mode: InceptionV3 would return a tuple if its auxiliary head were still there
    with torch.no_grad():
        features = model.body(x)
    assert isinstance(features, torch.Tensor) and features.shape == (2, backbones.feature_dim(model))
    assert model.head(features).shape == (2, 7)


def test_imagenet_normalisation_comes_from_the_weights():
    mean, std = backbones.imagenet_normalization(get_spec("mobilenet_v2"))
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    # InceptionV3 takes ImageNet-normalised input too: transform_input converts it to what its weights expect
    inception_mean, inception_std = backbones.imagenet_normalization(get_spec("inception_v3"))
    assert inception_mean == pytest.approx(mean) and inception_std == pytest.approx(std)
    # EfficientNet-Lite0 has no torchvision transform: its own statistics are recorded in the registry
    assert backbones.imagenet_normalization(get_spec("efficientnet_lite0")) == ((0.5,) * 3, (0.5,) * 3)


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


def test_seeded_efficientnet_lite0_calls_chelsea_an_egyptian_cat():
    """The real checkpoint, through our own module and the project's own preprocessing (224 px, mean = std = 0.5)."""
    from skimage import data

    spec = get_spec("efficientnet_lite0")
    assert checkpoint_file(spec).is_file(), "run `make assets` (python -m transferline.data.assets weights)"
    model, source = build_torchvision_model(spec, pretrained=True)
    assert source == {
        "kind": "package",
        "weights": EFFICIENTNET_LITE0.pip_name,
        "file": "efficientnet-lite0-57934424.pth",
        "sha256": EFFICIENTNET_LITE0.sha256,
    }
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # EfficientNet-Lite0's 4.65 M, ImageNet head
    mean, std = backbones.imagenet_normalization(spec)
    preprocess = PreprocessSpec(224, "squash", mean, std)
    x = torch.from_numpy(normalize(resize_for_model(Image.fromarray(data.chelsea()), preprocess)[None], preprocess))
    with torch.no_grad():
        probabilities = model.eval()(x).softmax(1)[0]
    assert int(probabilities.argmax()) == EGYPTIAN_CAT
    assert float(probabilities[EGYPTIAN_CAT]) > 0.5


def test_efficientnet_lite0_body_holds_every_checkpoint_tensor_renamed(tmp_path):
    from transferline.model.efficientnet_lite import checkpoint_to_ours

    raw = torch.load(checkpoint_file(get_spec("efficientnet_lite0")), map_location="cpu", weights_only=True)
    assert "_blocks.15._project_conv.weight" in raw  # the published layout, not ours
    mapped = checkpoint_to_ours(raw)
    model, _ = build_model("efficientnet_lite0", num_classes=3, pretrained=True)
    body = model.body.state_dict()
    assert set(body) == set(mapped) - {"classifier.1.weight", "classifier.1.bias"}
    for key, value in body.items():
        assert torch.equal(value, mapped[key]), key
    # a local file in the published layout (train.weights_path) is renamed too; a key we do not know is refused
    torch.save({**raw, "_blocks.3._se_reduce.weight": torch.zeros(1)}, tmp_path / "with_se.pth")
    with pytest.raises(ParamsError, match=r"train\.weights_path: unexpected key '_blocks\.3\._se_reduce\.weight'"):
        build_model("efficientnet_lite0", 3, pretrained=True, weights_path=tmp_path / "with_se.pth")


def test_efficientnet_lite0_is_seeded_with_its_sha256_checked_and_a_corrupt_copy_refused(monkeypatch, tmp_path):
    _block_downloads(monkeypatch, tmp_path)
    spec = get_spec("efficientnet_lite0")
    with pytest.raises(AssetError) as error:
        build_model("efficientnet_lite0", num_classes=3, pretrained=True)
    assert "make assets" in str(error.value) and EFFICIENTNET_LITE0.pip_name in str(error.value)

    seeded = assets.seed_checkpoint(EFFICIENTNET_LITE0)
    assert seeded == checkpoint_file(spec) and assets.sha256_of(seeded) == EFFICIENTNET_LITE0.sha256
    build_model("efficientnet_lite0", num_classes=3, pretrained=True)  # loads from the seeded copy

    corrupt = bytearray(seeded.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # one flipped byte, same size: only the hash can tell
    seeded.write_bytes(bytes(corrupt))
    with pytest.raises(AssetError, match=rf"has sha256 [0-9a-f]{{64}}, expected {EFFICIENTNET_LITE0.sha256}"):
        build_model("efficientnet_lite0", num_classes=3, pretrained=True)
    assets.seed_checkpoint(EFFICIENTNET_LITE0)  # a corrupt cached copy is replaced by the packaged one
    assert assets.sha256_of(seeded) == EFFICIENTNET_LITE0.sha256

    seeded.unlink()
    bad_source = tmp_path / EFFICIENTNET_LITE0.file
    bad_source.write_bytes(bytes(corrupt))
    monkeypatch.setattr(assets, "packaged_weights", lambda checkpoint: bad_source)
    with pytest.raises(AssetError, match="reinstall"):
        assets.seed_checkpoint(EFFICIENTNET_LITE0)
    assert not seeded.exists() and not list(seeded.parent.glob(".*.tmp"))


def test_input_size_below_the_architecture_minimum_is_a_params_error_and_inception_warns_off_299(caplog):
    with pytest.raises(ParamsError, match=r"preprocess\.image_size: 64 px is below the 75 px .*inception_v3"):
        backbones.check_input_size("inception_v3", 64, pretrained=True)
    with pytest.raises(ParamsError, match=r"preprocess\.image_size: 16 px is below the 32 px .*vgg16"):
        backbones.check_input_size("vgg16", 16, pretrained=False)
    caplog.set_level("WARNING", logger="transferline.model.backbones")
    for name, size, pretrained in (("inception_v3", 299, True), ("inception_v3", 96, False), ("vgg16", 96, True)):
        backbones.check_input_size(name, size, pretrained)
    assert not caplog.records
    backbones.check_input_size("inception_v3", 96, pretrained=True)
    assert "preprocess.image_size is 96 px but the inception_v3 ImageNet weights were trained at 299 px" in caplog.text


def test_inception_v3_has_no_auxiliary_head_and_loads_a_body_saved_without_one(tmp_path):
    torch.manual_seed(5)
    source_model, _ = build_torchvision_model(get_spec("inception_v3"), pretrained=False)
    assert source_model.AuxLogits is None and source_model.aux_logits is False
    assert source_model.transform_input is True  # as torchvision builds it for its ImageNet weights
    path = tmp_path / "inception.pt"
    torch.save(source_model.state_dict(), path)
    model, source = build_model("inception_v3", num_classes=4, pretrained=True, weights_path=path)
    assert source["kind"] == "file" and model.body.AuxLogits is None
    assert torch.equal(model.body.Mixed_7c.branch_pool.conv.weight, source_model.Mixed_7c.branch_pool.conv.weight)


@pytest.mark.parametrize(
    "strategy, extra",
    [
        ("feature_extraction", {}),
        ("partial", {"frozen_blocks": 4}),
        ("full", {}),
        ("discriminative", {"frozen_blocks": 2, "layer_groups": 3}),
    ],
)
def test_every_strategy_trains_on_efficientnet_lite0(run_train, tiny_params, tmp_path, caplog, strategy, extra):
    from transferline.model.trained_model import load_trained_model

    caplog.set_level("WARNING", logger="transferline.train")
    params = tiny_params(backbone="efficientnet_lite0", strategy=strategy, **{"epochs": 1, "warmup_epochs": 0, **extra})
    metrics = run_train(params)
    assert metrics["backbone"] == "efficientnet_lite0" and 0 <= metrics["val_accuracy"] <= 1
    # the tiny data is normalised with ImageNet statistics: the stage says they are not the weights' own
    assert "differ from the efficientnet_lite0 weights' own (0.5, 0.5, 0.5)" in caplog.text
    model, meta = load_trained_model(tmp_path / "out" / "models")
    assert meta["weights"]["sha256"] == EFFICIENTNET_LITE0.sha256
    pretrained, _ = build_model("efficientnet_lite0", num_classes=3, pretrained=True)
    trained_body, pretrained_body = model.body.state_dict(), pretrained.body.state_dict()

    def moved(block: str) -> bool:
        keys = [k for k in trained_body if k.startswith(f"{block}.")]
        return any(not torch.equal(trained_body[k], pretrained_body[k]) for k in keys)

    frozen = {"feature_extraction": 9, "partial": 4, "full": 0, "discriminative": 2}[strategy]
    unchanged = [block for block in get_spec("efficientnet_lite0").block_names if not moved(block)]
    assert unchanged == [f"features.{i}" for i in range(frozen)]


def test_inception_v3_on_images_too_small_for_it_fails_before_any_work(run_train, tiny_params, tmp_path):
    with pytest.raises(ParamsError, match=r"preprocess\.image_size: 32 px is below the 75 px"):
        run_train(tiny_params(backbone="inception_v3", pretrained=False))
    assert not (tmp_path / "out" / "models").exists()


def test_efficientnet_lite0_exports_to_onnx_with_its_same_padding_intact(tmp_path):
    """Its TensorFlow-style padding is computed in Python at trace time: ONNX Runtime must agree with PyTorch."""
    import onnxruntime as ort

    from transferline.evaluation.onnx_export import export_onnx

    torch.manual_seed(0)
    model, _ = build_model("efficientnet_lite0", num_classes=3, pretrained=True)
    info = export_onnx(model, 64, tmp_path / "lite0.onnx")
    assert info["batch_axis"]
    session = ort.InferenceSession(str(tmp_path / "lite0.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(actual - expected).max() < 1e-4


def test_inception_v3_imagenet_checkpoint_loads_strictly_then_loses_its_auxiliary_head(monkeypatch):
    """torchvision's InceptionV3 checkpoint holds AuxLogits.*: it must load strictly, and only then be dropped."""
    from torchvision.models import get_model

    spec = get_spec("inception_v3")
    assert checkpoint_file(spec).name == "inception_v3_google-0cc3c7bd.pth"  # what torchvision would download
    torch.manual_seed(1)
    # the model torchvision's own builder makes for these weights: auxiliary head and input transform on
    reference = get_model("inception_v3", weights=None, aux_logits=True, transform_input=True, init_weights=False)
    state = reference.state_dict()
    assert any(k.startswith("AuxLogits.") for k in state)
    monkeypatch.setattr(backbones, "load_imagenet_state", lambda s: (dict(state), {"kind": "torchvision"}))
    model, _ = build_model("inception_v3", num_classes=4, pretrained=True)
    assert model.body.AuxLogits is None and model.body.transform_input is True
    assert torch.equal(model.body.Mixed_6e.branch7x7dbl_5.conv.weight, reference.Mixed_6e.branch7x7dbl_5.conv.weight)
    monkeypatch.setattr(backbones, "load_imagenet_state", lambda s: ({**state, "extra": torch.zeros(1)}, {}))
    with pytest.raises(RuntimeError, match="extra"):  # strict: a checkpoint that does not fit is never half-loaded
        build_model("inception_v3", num_classes=4, pretrained=True)
