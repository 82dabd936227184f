"""Registry of ImageNet backbones: how each is loaded, split into blocks, and given a new head.

Every backbone becomes a `TransferModel`: `body` is the architecture's own model (torchvision's,
or `efficientnet_lite.py` for EfficientNet-Lite0) with its final Linear replaced by Identity (so it
returns pooled features), `head` is a fresh Linear for our classes. The forward pass takes float32
NCHW normalised exactly as `transferline.data.preprocessing.normalize` does; normalisation is not
inside the model, and each backbone records the mean/std its weights expect.

ImageNet weights come from torchvision's hub cache (`$TORCH_HOME/hub/checkpoints`). torchvision
backbones download through its weights API when online; offline a pre-seeded file loads with its
hash checked. `make assets` seeds MobileNetV2 and EfficientNet-Lite0 (whose checkpoint has no
download URL: the package is its only source). Random init happens only on request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from transferline.data.assets import EFFICIENTNET_LITE0, SEEDED_CHECKPOINTS, SeededCheckpoint, sha256_of
from transferline.errors import AssetError, ParamsError
from transferline.model import efficientnet_lite
from transferline.model.feature_taps import HEAD_FEATURES, TappedBody, tap_blocks
from transferline.model.portable_kernels import make_portable, portable_kernels_active

log = logging.getLogger("transferline.model.backbones")

LAST_LAYER = (1.0,)  # feature_layers of the usual head: the body's pooled output alone
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


@dataclass(frozen=True)
class BackboneSpec:
    """Static facts about one architecture; the block paths are checked by tests."""

    name: str
    weights: str | None  # the torchvision weights enum member used when pretrained; None: `seeded` only
    head_path: str  # dotted path of the final Linear, replaced by Identity in the body
    blocks: tuple[tuple[str, tuple[str, ...]], ...]  # (block name, module paths), input to output
    seeded: SeededCheckpoint | None = None  # a checkpoint outside torchvision, seeded by `make assets`
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # None: the torchvision weights'
    min_input_size: int = 32  # smaller images cannot pass through the architecture
    native_input_size: int | None = None  # set where another size is warned about (see check_input_size)
    build_kwargs: tuple[tuple[str, object], ...] = ()  # extra arguments of torchvision's builder
    builder: Callable[[], nn.Module] | None = None  # an architecture outside torchvision (ImageNet head included)
    key_map: Callable[[dict], dict] | None = None  # renames a checkpoint's keys to the architecture's

    @property
    def block_names(self) -> list[str]:
        return [name for name, _ in self.blocks]


def _numbered(prefix: str, count: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((f"{prefix}.{i}", (f"{prefix}.{i}",)) for i in range(count))


def _ranges(prefix: str, names: tuple[str, ...], bounds: tuple[int, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Named blocks over consecutive children of a Sequential: block k holds indices bounds[k]..bounds[k+1]-1."""
    return tuple(
        (name, tuple(f"{prefix}.{i}" for i in range(start, end)))
        for name, start, end in zip(names, bounds[:-1], bounds[1:], strict=True)
    )


INCEPTION_V3_SIZE = 299  # the resolution of its ImageNet weights
INCEPTION_V3_MIN_SIZE = 75  # its stem and reductions need at least this (torchvision's documented minimum)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        # MobileNetV2 V1 weights: the checkpoint `make assets` seeds for offline use.
        BackboneSpec("mobilenet_v2", "IMAGENET1K_V1", "classifier.1", _numbered("features", 19)),
        BackboneSpec(
            "mobilenet_v3_large",
            "IMAGENET1K_V2",
            "classifier.3",
            # the pre-logits Linear(960, 1280) is pretrained: it belongs to the last block
            (*_numbered("features", 16), ("features.16", ("features.16", "classifier.0"))),
        ),
        BackboneSpec(
            "resnet18",
            "IMAGENET1K_V1",
            "fc",
            (("stem", ("conv1", "bn1")), *((f"layer{i}", (f"layer{i}",)) for i in range(1, 5))),
        ),
        BackboneSpec(
            "resnet50",
            "IMAGENET1K_V2",
            "fc",
            (("stem", ("conv1", "bn1")), *((f"layer{i}", (f"layer{i}",)) for i in range(1, 5))),
        ),
        BackboneSpec("efficientnet_b0", "IMAGENET1K_V1", "classifier.1", _numbered("features", 9)),
        # EfficientNet-Lite0 (no squeeze-and-excitation, ReLU6): torchvision's efficientnet_b0 layout, our module
        BackboneSpec(
            "efficientnet_lite0",
            None,
            "classifier.1",
            _numbered("features", 9),
            seeded=EFFICIENTNET_LITE0,
            normalization=efficientnet_lite.NORMALIZATION,
            builder=efficientnet_lite.efficientnet_lite0,
            key_map=efficientnet_lite.to_module_keys,
        ),
        BackboneSpec(
            "convnext_tiny",
            "IMAGENET1K_V1",
            "classifier.2",
            (
                ("stem", ("features.0",)),
                ("stage1", ("features.1",)),
                ("stage2", ("features.2", "features.3")),  # downsampling layer + stage
                ("stage3", ("features.4", "features.5")),
                ("stage4", ("features.6", "features.7", "classifier.0")),  # + final LayerNorm
            ),
        ),
        BackboneSpec(
            "vgg16",
            "IMAGENET1K_V1",
            "classifier.6",
            (
                # five conv stages, each ending in its max-pool, then the two pretrained fully connected
                # layers (with their ReLU and Dropout: frozen, they run in eval mode like frozen BatchNorm)
                *_ranges("features", ("stage1", "stage2", "stage3", "stage4", "stage5"), (0, 5, 10, 17, 24, 31)),
                *_ranges("classifier", ("fc6", "fc7"), (0, 3, 6)),
            ),
        ),
        BackboneSpec(
            "inception_v3",
            "IMAGENET1K_V1",
            "fc",
            (
                ("stem1", ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3")),
                ("stem2", ("Conv2d_3b_1x1", "Conv2d_4a_3x3")),
                *((name, (name,)) for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b")),
                *((name, (name,)) for name in ("Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")),
            ),
            min_input_size=INCEPTION_V3_MIN_SIZE,
            native_input_size=INCEPTION_V3_SIZE,
            # transform_input: the weights (ported from TensorFlow) expect mean = std = 0.5 inputs; the flag
            # converts the ImageNet-normalised input their own eval transform asks for, as torchvision does.
            # The auxiliary classifier is built so the checkpoint loads strictly, then removed (drop_aux_head).
            build_kwargs=(("transform_input", True), ("aux_logits", True)),
        ),
    )
}


def get_spec(name: str) -> BackboneSpec:
    if name == "auto":
        raise ParamsError(
            "train.backbone: auto is resolved from the data by the train stage; here name one of "
            + ", ".join(BACKBONES)
        )
    try:
        return BACKBONES[name]
    except KeyError:
        raise ParamsError(f"train.backbone: unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


class TransferModel(nn.Module):
    """A backbone body returning pooled features, and a linear head over them.

    `taps` are the blocks whose pooled outputs the head reads, concatenated in order
    (transferline/model/feature_taps.py); the default, the body's output alone, is the usual head. A
    feature_extraction head reads several depths (`train.probe_layers`): earlier blocks keep what the
    ImageNet-specific last ones discard, which a frozen body cannot relearn (Evci et al., Head2Toe, ICML 2022).
    """

    def __init__(
        self,
        body: nn.Module,
        head: nn.Linear,
        backbone: str,
        taps: Sequence[str | None] = (HEAD_FEATURES,),
        tap_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.backbone = backbone
        self.taps = tuple(taps)
        self.tap_widths = tuple(tap_widths) if tap_widths is not None else (head.in_features,)  # each tap's features

    def last_layer(self, features: np.ndarray) -> np.ndarray:
        """The body's own pooled output among features the head reads (the last tap's columns)."""
        if self.taps[-1] is not HEAD_FEATURES:
            raise ValueError("this model's head does not read the body's output")
        return features[:, -self.tap_widths[-1] :]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads: the body's pooled output, or the taps' pooled outputs side by side."""
        if self.taps == (HEAD_FEATURES,):
            return self.body(x)
        return torch.cat(TappedBody(self, self.taps)(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def blocks(self) -> list[tuple[str, list[nn.Module]]]:
        """The body's blocks, input to output, as (name, modules)."""
        spec = BACKBONES[self.backbone]
        return [(name, [self.body.get_submodule(p) for p in paths]) for name, paths in spec.blocks]


def check_input_size(name: str, image_size: int, pretrained: bool) -> None:
    """A size the architecture cannot take is a params error; a size its weights were not made for, a warning.

    Only InceptionV3 declares a native size: the other backbones are run well below their 224 px on
    purpose (the default recipe uses 96 px), while InceptionV3's reductions leave a 1x1 grid at 75-138 px.
    """
    spec = get_spec(name)
    if image_size < spec.min_input_size:
        raise ParamsError(
            f"preprocess.image_size: {image_size} px is below the {spec.min_input_size} px that train.backbone="
            f"{name} accepts; set preprocess.image_size to {spec.native_input_size or spec.min_input_size} or more"
        )
    if pretrained and spec.native_input_size and image_size != spec.native_input_size:
        log.warning(
            "preprocess.image_size is %d px but the %s ImageNet weights were trained at %d px: transfer is "
            "usually worse at other sizes; set preprocess.image_size: %d",
            image_size,
            name,
            spec.native_input_size,
            spec.native_input_size,
        )


def weights_enum(spec: BackboneSpec):
    from torchvision.models import get_model_weights

    return get_model_weights(spec.name)[spec.weights]


def checkpoint_file(spec: BackboneSpec) -> Path:
    """Where torchvision's hub cache keeps (or would download) this backbone's ImageNet checkpoint."""
    if spec.seeded is not None:
        return Path(torch.hub.get_dir()) / "checkpoints" / spec.seeded.file
    url_path = urlparse(weights_enum(spec).url).path
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url_path).name


def imagenet_normalization(spec: BackboneSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the pretrained weights expect: recorded in the spec, else their torchvision eval transform."""
    if spec.normalization is not None:
        return spec.normalization
    transform = weights_enum(spec).transforms()
    return tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)


def _seeded_for(spec: BackboneSpec) -> SeededCheckpoint | None:
    """The packaged checkpoint `make assets` seeds for this backbone, if any."""
    if spec.seeded is not None:
        return spec.seeded
    if spec.weights is None:
        return None
    name = checkpoint_file(spec).name
    return next((c for c in SEEDED_CHECKPOINTS if c.file == name), None)


def _how_to_get(spec: BackboneSpec) -> str:
    seeded = _seeded_for(spec)
    if seeded is not None:
        return f"{seeded.how_to_get()}: it is seeded from a Python package, no hub access needed"
    return (
        "allow network access so torchvision can download it, or set train.weights_path to a local "
        "state dict of this torchvision backbone"
    )


def load_seeded_state(spec: BackboneSpec) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint that only `make assets` provides: whole-file sha256 checked, then loaded with weights_only."""
    seeded = spec.seeded
    path = checkpoint_file(spec)
    if not path.is_file():
        raise AssetError(
            f"ImageNet weights for train.backbone={spec.name} are not available ({path} is missing; they have "
            f"no download URL). To fix: {_how_to_get(spec)}."
        )
    actual = sha256_of(path)
    if actual != seeded.sha256:
        raise AssetError(
            f"{path} has sha256 {actual}, expected {seeded.sha256}: it is corrupt or not the {seeded.label} "
            f"checkpoint. Delete it and {_how_to_get(spec)}."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AssetError(f"{path} could not be loaded ({exc}); delete it and {_how_to_get(spec)}") from exc
    log.info("loading %s weights from the hub cache %s", spec.name, path)
    return dict(state), {"kind": "package", "weights": seeded.pip_name, "file": path.name, "sha256": actual}


def load_imagenet_state(spec: BackboneSpec) -> tuple[dict[str, torch.Tensor], dict]:
    """The ImageNet state dict from the hub cache (hash checked) or a torchvision download."""
    if spec.seeded is not None:
        return load_seeded_state(spec)
    weights = weights_enum(spec)
    path = checkpoint_file(spec)
    expected = HASH_IN_NAME.search(path.name)
    if path.is_file():
        # torchvision checks the hash only while downloading; a cached file is checked here
        actual = sha256_of(path)
        if expected and not actual.startswith(expected.group(1)):
            raise AssetError(
                f"{path} does not match the hash in its name ({expected.group(1)}): it is corrupt or not the "
                f"file torchvision publishes. Delete it and {_how_to_get(spec)}."
            )
        log.info("loading %s %s weights from the hub cache %s", spec.name, spec.weights, path)
    else:
        log.info("%s is not in the hub cache; downloading %s with torchvision", path.name, spec.weights)
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        if path.is_file():
            raise AssetError(f"{path} could not be loaded ({exc}); delete it and {_how_to_get(spec)}") from exc
        raise AssetError(
            f"ImageNet weights for train.backbone={spec.name} are not available offline ({path} is missing) "
            f"and the download failed ({type(exc).__name__}: {exc}). To fix: {_how_to_get(spec)}."
        ) from exc
    source = {
        "kind": "torchvision",
        "weights": f"{type(weights).__name__}.{weights.name}",
        "file": path.name,
        "sha256": sha256_of(path) if path.is_file() else None,
    }
    return state, source


def load_local_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A user's state dict for the backbone's architecture (tensors only: loaded with weights_only)."""
    if not path.is_file():
        raise ParamsError(f"train.weights_path: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ParamsError(f"train.weights_path: {path} is not a loadable state dict ({exc})") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ParamsError(f"train.weights_path: {path} does not hold a state dict of tensors")
    return dict(state), {"kind": "file", "file": str(path), "sha256": sha256_of(path)}


def _architecture(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    """The untrained architecture with its 1000-class ImageNet head."""
    if spec.builder is not None:
        return spec.builder()
    from torchvision.models import get_model

    kwargs = dict(spec.build_kwargs)
    if spec.name == "inception_v3":
        kwargs["init_weights"] = not pretrained  # its truncated-normal init is slow and overwritten anyway
    return get_model(spec.name, weights=None, **kwargs)


def _to_architecture_keys(spec: BackboneSpec, state: dict[str, torch.Tensor], weights_path: Path | None) -> dict:
    """A checkpoint in another layout (EfficientNet-Lite0's published one) renamed to the architecture's keys."""
    if spec.key_map is None:
        return state
    try:
        return spec.key_map(state)
    except KeyError as exc:
        where = "train.weights_path" if weights_path else str(checkpoint_file(spec))
        raise ParamsError(f"{where}: unexpected key {exc} for {spec.name}") from None


def drop_aux_head(model: nn.Module) -> None:
    """InceptionV3's auxiliary classifier is removed for transfer.

    It regularises training from scratch on ImageNet; here it would be a second new head trained only
    through an extra loss term, and in train mode it turns the output into a tuple that the loop, the
    ONNX export and the service would all have to special-case. Its 3.2 M parameters hang off Mixed_6e
    and feed nothing else, so removing it changes no feature the main head sees.
    """
    model.aux_logits = False
    model.AuxLogits = None


def build_torchvision_model(spec: BackboneSpec, pretrained: bool, weights_path: Path | None = None):
    """The architecture with its ImageNet head, loaded as asked; returns (model, weights source)."""
    model = _architecture(spec, pretrained)
    if not pretrained:
        if getattr(model, "AuxLogits", None) is not None:
            drop_aux_head(model)
        return model, {"kind": "random-init"}
    state, source = load_local_state(weights_path) if weights_path else load_imagenet_state(spec)
    state = _to_architecture_keys(spec, state, weights_path)
    head_keys = {f"{spec.head_path}.weight", f"{spec.head_path}.bias"}
    if weights_path:
        # a local file may come with a head for other classes: only the body has to match
        state = {k: v for k, v in state.items() if k not in head_keys}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes that do not fit
            raise ParamsError(f"train.weights_path: {weights_path} does not fit {spec.name}: {exc}") from exc
        # a body saved without InceptionV3's auxiliary classifier fits too: it is removed below anyway
        missing = [k for k in missing if k not in head_keys and not k.startswith("AuxLogits.")]
        if missing or unexpected:
            raise ParamsError(
                f"train.weights_path: {weights_path} does not fit {spec.name}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    else:
        model.load_state_dict(state)
    if getattr(model, "AuxLogits", None) is not None:
        drop_aux_head(model)
    return model, source


def build_model(
    name: str,
    num_classes: int,
    pretrained: bool,
    weights_path: Path | None = None,
    feature_layers: Sequence[float] = LAST_LAYER,
) -> tuple[TransferModel, dict]:
    """A TransferModel for `num_classes`, and a description of where its backbone weights came from.
    `feature_layers`: the relative depths (tap_blocks) whose pooled outputs the head reads."""
    spec = get_spec(name)
    model, source = build_torchvision_model(spec, pretrained, weights_path)
    old_head = model.get_submodule(spec.head_path)
    if not isinstance(old_head, nn.Linear):
        raise TypeError(f"{spec.name}: {spec.head_path} is {type(old_head).__name__}, expected Linear")
    parent_path, _, leaf = spec.head_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, nn.Identity())
    taps = tap_blocks([block for block, _ in spec.blocks], feature_layers)
    widths = [old_head.in_features] if taps == [HEAD_FEATURES] else measure_tap_widths(model, spec, taps)
    transfer = TransferModel(model, nn.Linear(sum(widths), num_classes), spec.name, taps, widths)
    if portable_kernels_active():  # train.reproducible: portable
        make_portable(transfer)
    return transfer, source


def measure_tap_widths(body: nn.Module, spec: BackboneSpec, taps: list[str | None]) -> list[int]:
    """How many features each tap gives, from one forward pass of a small blank image."""
    probe = TransferModel(body, nn.Linear(1, 1), spec.name, taps)
    size = max(spec.min_input_size, spec.native_input_size or 0, 64)
    was_training = body.training
    probe.eval()  # BatchNorm must not update its running statistics on the blank image
    try:
        with torch.no_grad():
            return [int(f.shape[1]) for f in TappedBody(probe, taps)(torch.zeros(1, 3, size, size))]
    finally:
        body.train(was_training)


def feature_dim(model: TransferModel) -> int:
    return model.head.in_features
