"""Pooled features from inside the backbone, not only from its end: what the out-of-distribution score reads.

Fine-tuned last layers learn to ignore what does not separate the classes (colour on grey clothes,
texture on solar cells), so an image can look ordinary there and still be foreign. Earlier blocks keep
that: Lee et al. (NeurIPS 2018) score the Mahalanobis distance at several depths and add them up. On the
default model, a flag set to reject 5% of validation images lets 76% of the solar cells through at the
last layer and none a third of the way in (bench/results/monitoring.md).

A tap names a block of the backbone's block structure (transferline/model/backbones.py); its output is
average-pooled over space. None is the body's own output, the pooled features the head reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

HEAD_FEATURES = None  # the tap of the features the head reads


def tap_blocks(block_names: Sequence[str], depths: Sequence[float]) -> list[str | None]:
    """The blocks at relative `depths` (0 < d <= 1, input to output): depth d taps block round(d * (n - 1))
    of n. The last block's pooled output is what the head reads, so it (and 1.0) taps the head's features.
    Depths that land on the same block count once."""
    if not depths:
        raise ValueError("at least one depth is needed")
    taps: list[str | None] = []
    for depth in depths:
        if not 0 < depth <= 1:
            raise ValueError(f"a tap depth must be in (0, 1], got {depth}")
        index = round(depth * (len(block_names) - 1))
        tap = HEAD_FEATURES if index >= len(block_names) - 1 else block_names[index]
        if tap not in taps:
            taps.append(tap)
    return taps


def pooled(output: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) by the spatial mean; (N, D) as it is."""
    return output.mean(dim=(2, 3)) if output.dim() == 4 else output.flatten(1)


class TappedBody(nn.Module):
    """A model's body answering one pooled feature matrix per tap, in the taps' order. The block outputs
    are caught by forward hooks registered for the one call, so the model keeps no hook afterwards."""

    def __init__(self, model: nn.Module, taps: Sequence[str | None]) -> None:
        super().__init__()
        self.body = model.body
        self.taps = list(taps)
        blocks = dict(model.blocks()) if any(t is not HEAD_FEATURES for t in self.taps) else {}
        unknown = [t for t in self.taps if t is not HEAD_FEATURES and t not in blocks]
        if unknown:
            raise ValueError(f"no block named {unknown[0]!r} in this backbone; blocks: {', '.join(blocks)}")
        self._ends = {t: blocks[t][-1] for t in self.taps if t is not HEAD_FEATURES}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        caught: dict[str, torch.Tensor] = {}
        handles = [
            module.register_forward_hook(lambda _m, _i, out, name=name: caught.__setitem__(name, out))
            for name, module in self._ends.items()
        ]
        try:
            features = self.body(x)
        finally:
            for handle in handles:
                handle.remove()
        return [features if t is HEAD_FEATURES else pooled(caught[t]) for t in self.taps]
