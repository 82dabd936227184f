"""EfficientNet-Lite0 laid out like torchvision's EfficientNet, and a key map for its published ImageNet checkpoint.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 and a fixed stem and
head (friendly to integer quantisation). torchvision's EfficientNet builder always adds
squeeze-and-excitation and SiLU, so the architecture is written here (about a hundred lines)
instead of depending at run time on the small package whose checkpoint we load. The layout
follows torchvision's `efficientnet_b0`: `features.0` stem, `features.1..7` the seven stages,
`features.8` the 1x1 head convolution, then `avgpool` and `classifier = [Dropout, Linear]`, so the
backbone registry splits it into the same nine blocks.

The checkpoint was converted from TensorFlow: convolutions pad like TensorFlow's `SAME` (asymmetric
for stride 2 on even sizes), BatchNorm uses eps 1e-3 and momentum 0.01, and inputs are normalised
with mean = std = 0.5. `checkpoint_to_ours` renames its keys (`_blocks.i._expand_conv`, ...) to this
layout.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import StochasticDepth

# (repeats, kernel, stride, expansion, input channels, output channels) per stage, from the Lite builder
Stage = tuple[int, int, int, int, int, int]
LITE0_STAGES: tuple[Stage, ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99
DROPOUT = 0.2
STOCHASTIC_DEPTH = 0.2  # the Lite builder's drop_connect_rate, scaled by block index as the original
NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # (mean, std) the checkpoint was trained with


class SameConv2d(nn.Conv2d):
    """A Conv2d padded like TensorFlow's `SAME`: output size ceil(input / stride), any extra pixel at the end."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride = self.kernel_size[0], self.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


def conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Convolution, BatchNorm with TensorFlow's constants, and ReLU6 unless `act` is false (projections)."""
    layers: list[nn.Module] = [
        SameConv2d(in_channels, out_channels, kernel, stride, groups),
        nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual without squeeze-and-excitation: 1x1 expand, depthwise k x k, 1x1 project (+ skip)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int, drop: float) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = conv_bn(in_channels, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = conv_bn(hidden, out_channels, 1, act=False)
        self.use_skip = stride == 1 and in_channels == out_channels
        self.stochastic_depth = StochasticDepth(drop, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        if self.use_skip:
            out = self.stochastic_depth(out) + x
        return out


class EfficientNetLite(nn.Module):
    """Stem, one Sequential of MBConv blocks per stage, 1x1 head conv, pooling, dropout and the classifier."""

    def __init__(
        self,
        num_classes: int = 1000,
        stages: tuple[Stage, ...] = LITE0_STAGES,
        stochastic_depth: float = STOCHASTIC_DEPTH,
    ) -> None:
        super().__init__()
        total_blocks = sum(stage[0] for stage in stages)
        features: list[nn.Module] = [conv_bn(3, STEM_CHANNELS, 3, stride=2)]
        index = 0
        for repeats, kernel, stride, expand, in_channels, out_channels in stages:
            blocks = []
            for j in range(repeats):
                blocks.append(
                    MBConv(
                        in_channels if j == 0 else out_channels,
                        out_channels,
                        kernel,
                        stride if j == 0 else 1,
                        expand,
                        stochastic_depth * index / total_blocks,
                    )
                )
                index += 1
            features.append(nn.Sequential(*blocks))
        features.append(conv_bn(stages[-1][5], HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(HEAD_CHANNELS, num_classes))
        for module in self.modules():  # random init as torchvision's EfficientNet
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    return EfficientNetLite(num_classes)


def _block_locations(stages: tuple[Stage, ...] = LITE0_STAGES) -> list[tuple[int, int]]:
    """(stage, index in stage) of each block, in the checkpoint's flat `_blocks.i` order."""
    return [(s + 1, j) for s, stage in enumerate(stages) for j in range(stage[0])]


_BLOCK_PARTS = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0"}
_BLOCK_PARTS |= {"_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
_TOP_PARTS = {"_conv_stem": "features.0.0", "_bn0": "features.0.1", "_conv_head": "features.8.0"}
_TOP_PARTS |= {"_bn1": "features.8.1", "_fc": "classifier.1"}
_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$|^(\w+)\.(\w+)$")


def to_module_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in either layout, with this module's keys (the published one is recognised by `_conv_stem`)."""
    return checkpoint_to_ours(state) if "_conv_stem.weight" in state else state


def checkpoint_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published checkpoint's keys renamed to this module's; an unknown key raises KeyError naming it."""
    locations = _block_locations()
    renamed = {}
    for key, tensor in state.items():
        match = _KEY.match(key)
        if match is None:
            raise KeyError(key)
        if match.group(1) is not None:
            block, part, leaf = int(match.group(1)), match.group(2), match.group(3)
            if block >= len(locations) or part not in _BLOCK_PARTS:
                raise KeyError(key)
            stage, j = locations[block]
            renamed[f"features.{stage}.{j}.{_BLOCK_PARTS[part]}.{leaf}"] = tensor
        else:
            part, leaf = match.group(4), match.group(5)
            if part not in _TOP_PARTS:
                raise KeyError(key)
            renamed[f"{_TOP_PARTS[part]}.{leaf}"] = tensor
    return renamed
