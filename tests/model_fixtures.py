"""Small real models for tests of evaluation, export and gating: trained in a second, not mocked."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from transferline.data.preprocessing import PreprocessSpec, normalize


class TinyConvNet(nn.Module):
    """A small CNN with BatchNorm, so export exercises Conv+BN fusion like the real backbones; a body
    answering pooled features and a linear head, as the pipeline's TransferModel."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(16, num_classes)
        self.taps = (None,)  # the head reads the body's output, as TransferModel's usual head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def blocks(self) -> list[tuple[str, list[nn.Module]]]:
        """Two blocks, as TransferModel.blocks names a backbone's: what the OOD score's taps pick from."""
        return [("conv1", list(self.body[:4])), ("conv2", list(self.body[4:]))]


def fit_tiny_model(images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec, steps: int = 60) -> nn.Module:
    torch.manual_seed(0)
    model = TinyConvNet(int(labels.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x = torch.from_numpy(normalize(np.asarray(images), spec))
    y = torch.from_numpy(np.asarray(labels))
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def degrade(model: nn.Module, images: np.ndarray, labels: np.ndarray, spec: PreprocessSpec) -> nn.Module:
    """One SGD step with an absurd learning rate on shuffled labels: the classic broken candidate."""
    import copy

    broken = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(broken.parameters(), lr=1e4)
    x = torch.from_numpy(normalize(np.asarray(images), spec))
    y = torch.from_numpy((np.asarray(labels) + 1) % (int(labels.max()) + 1))
    nn.functional.cross_entropy(broken(x), y).backward()
    optimizer.step()
    return broken.eval()
