"""Rebuilding the trained model from `models/` (state dict + model.json) for evaluation and export."""

from __future__ import annotations

import json
from pathlib import Path

from transferline.errors import TransferlineError


def load_trained_model(models_dir: Path):
    """The trained TransferModel in eval mode, and its metadata (classes, preprocess, backbone, ...)."""
    import torch

    from transferline.backbones import build_model

    meta_file, state_file = models_dir / "model.json", models_dir / "model.pt"
    if not meta_file.is_file() or not state_file.is_file():
        raise TransferlineError(f"no trained model in {models_dir}: run the train stage first (dvc repro train)")
    meta = json.loads(meta_file.read_text())
    model, _ = build_model(meta["backbone"], len(meta["classes"]), pretrained=False)
    model.load_state_dict(torch.load(state_file, map_location="cpu", weights_only=True))
    return model.eval(), meta
