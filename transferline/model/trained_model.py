"""The trained model on disk: `models/model.pt` (state dict) and `models/model.json` (how to rebuild and feed it).

Later stages (evaluate, export) and the service rebuild the model from model.json alone: the
backbone name and class list give the architecture, `preprocess` (PreprocessSpec.to_dict())
gives the input, fed as `transferline.data.preprocessing.normalize` produces it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from transferline import atomic
from transferline.errors import DataError
from transferline.model.backbones import LAST_LAYER, TransferModel, build_model

MODEL_FILE = "model.pt"
META_FILE = "model.json"
FORMAT = "transferline.model/1"


def save_trained_model(
    directory: Path, model: TransferModel, meta: dict, extra_files: dict[str, dict] | None = None
) -> None:
    """Write the files together: a reader never sees weights without their description, or the reverse.

    `extra_files` are JSON documents that belong to this model (models/advice.json), written in the same swap.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic.atomic_dir(directory) as tmp:
        torch.save(state, tmp / MODEL_FILE)
        atomic.write_json(tmp / META_FILE, {"format": FORMAT, **meta})
        for name, document in (extra_files or {}).items():
            atomic.write_json(tmp / name, document)


def read_meta(directory: Path) -> dict:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist: run the train stage first (dvc repro train)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: unknown model format {meta.get('format')!r}, expected {FORMAT}")
    return meta


def load_trained_model(directory: Path) -> tuple[TransferModel, dict]:
    """(model in eval mode on CPU, its model.json)."""
    meta = read_meta(directory)
    layers = tuple(meta.get("feature_layers", LAST_LAYER))  # the depths a feature_extraction head reads
    model, _ = build_model(meta["backbone"], len(meta["classes"]), pretrained=False, feature_layers=layers)
    state = torch.load(Path(directory) / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), meta
