"""Transfer strategies as plans: which layer groups train, from which epoch, at which learning rate.

A plan is computed from the backbone's block list and the params, before any training, so the
same rules drive freezing (requires_grad), BatchNorm mode and the optimizer's param groups:

- feature_extraction: the whole body is frozen; only the head learns (on cached features).
- partial: the first `frozen_blocks` blocks are frozen, the rest and the head train at `lr`.
- full: everything trains at `lr` (head at `head_lr` when set).
- discriminative: after the `frozen_blocks`, the blocks form `layer_groups` groups; the group
  k places below the head trains at lr * lr_decay**k.
`gradual_unfreeze` (any fine-tuning strategy): the head trains alone in epoch 0, then one more
group joins each epoch, from the top down, as fastai does.

Frozen parts keep BatchNorm in eval mode, so their running statistics never change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

from transferline.config import TrainParams
from transferline.errors import ParamsError
from transferline.model.backbones import BACKBONES, TransferModel

log = logging.getLogger("transferline.model.strategies")

NEVER = -1  # trainable_from value of a group that stays frozen


@dataclass
class LayerGroup:
    name: str
    modules: list[nn.Module]
    lr: float
    trainable_from: int  # first epoch (0-based) in which the group trains; NEVER: frozen throughout

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]

    def trains_in(self, epoch: int) -> bool:
        return self.trainable_from != NEVER and epoch >= self.trainable_from


@dataclass
class TransferPlan:
    strategy: str
    groups: list[LayerGroup] = field(default_factory=list)  # input to output; the head is last

    def trained_groups(self) -> list[LayerGroup]:
        return [g for g in self.groups if g.trainable_from != NEVER]

    def apply(self, model: nn.Module, epoch: int, training: bool = True) -> None:
        """Set requires_grad for `epoch`, and train/eval modes: frozen parts stay in eval mode."""
        model.train(training)
        for group in self.groups:
            trains = group.trains_in(epoch)
            for param in group.parameters():
                param.requires_grad_(trains)
            if not trains:
                for module in group.modules:
                    module.eval()

    def describe(self, epoch: int) -> str:
        parts = [f"{g.name}@{g.lr:.2g}" for g in self.groups if g.trains_in(epoch)]
        frozen = sum(1 for g in self.groups if not g.trains_in(epoch))
        return f"{self.strategy}: training {', '.join(parts) or 'nothing'}; {frozen} group(s) frozen"


def check_params(params: TrainParams) -> None:
    """Checks that need the backbone's block list or the file system; they run before any model or data is loaded
    (and again once `backbone: auto` has chosen)."""
    if params.backbone == "auto":
        return
    blocks = BACKBONES[params.backbone].blocks
    if params.frozen_blocks > len(blocks):
        raise ParamsError(
            f"train.frozen_blocks: {params.frozen_blocks} is more than the {len(blocks)} blocks of "
            f"{params.backbone} ({', '.join(name for name, _ in blocks)})"
        )
    if params.strategy == "discriminative" and params.frozen_blocks == len(blocks):
        raise ParamsError(
            f"train.frozen_blocks: {params.frozen_blocks} freezes every block of {params.backbone}, "
            "leaving nothing for discriminative learning rates"
        )
    if params.weights_path is not None and not params.weights_path.is_file():
        raise ParamsError(f"train.weights_path: {params.weights_path} does not exist")
    ignored = []
    if params.frozen_blocks and params.strategy in ("full", "feature_extraction"):
        ignored.append("frozen_blocks")
    if params.gradual_unfreeze and params.strategy == "feature_extraction":
        ignored.append("gradual_unfreeze")
    if ignored:
        log.warning("train.strategy=%s ignores train.%s", params.strategy, ", train.".join(ignored))


def _split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous chunks of near-equal size; the larger ones first (toward the input)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


def make_plan(model: TransferModel, params: TrainParams) -> TransferPlan:
    blocks = model.blocks()
    head_lr = params.head_lr or params.lr
    strategy = params.strategy
    groups: list[LayerGroup] = []

    def frozen(named_blocks: list) -> None:
        if named_blocks:
            name = named_blocks[0][0] if len(named_blocks) == 1 else f"{named_blocks[0][0]}..{named_blocks[-1][0]}"
            groups.append(LayerGroup(f"frozen:{name}", [m for _, ms in named_blocks for m in ms], 0.0, NEVER))

    def trained(named_blocks: list, lr: float) -> None:
        if named_blocks:
            name = named_blocks[0][0] if len(named_blocks) == 1 else f"{named_blocks[0][0]}..{named_blocks[-1][0]}"
            groups.append(LayerGroup(name, [m for _, ms in named_blocks for m in ms], lr, 0))

    if strategy == "feature_extraction":
        frozen(blocks)
    elif strategy == "full":
        trained(blocks, params.lr)
    elif strategy == "partial":
        frozen(blocks[: params.frozen_blocks])
        trained(blocks[params.frozen_blocks :], params.lr)
    elif strategy == "discriminative":
        frozen(blocks[: params.frozen_blocks])
        chunks = _split_evenly(blocks[params.frozen_blocks :], params.layer_groups)
        for depth, chunk in zip(range(len(chunks), 0, -1), chunks, strict=True):
            trained(chunk, params.lr * params.lr_decay**depth)
    else:  # the params model only admits the four names above
        raise ParamsError(f"train.strategy: unknown strategy {strategy!r}")
    groups.append(LayerGroup("head", [model.head], head_lr, 0))

    if params.gradual_unfreeze and strategy != "feature_extraction":
        trainable = [g for g in groups if g.trainable_from != NEVER]
        for order, group in enumerate(reversed(trainable)):
            group.trainable_from = order
    return TransferPlan(strategy, groups)


def optimizer_param_groups(plan: TransferPlan, weight_decay: float) -> list[dict]:
    """One optimizer group per (layer group, decay or not): no weight decay on biases and norms."""
    param_groups = []
    for index, group in enumerate(plan.trained_groups()):
        params = group.parameters()
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for kind, members, wd in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
            if members:
                param_groups.append(
                    {
                        "params": members,
                        "lr": group.lr,
                        "weight_decay": wd,
                        "name": f"{group.name}:{kind}",
                        "layer_group": index,
                    }
                )
    return param_groups
