"""Per-epoch training checkpoints that a re-run with the same inputs resumes from.

`last.pt` holds everything a resumed run needs (model, optimizer, scheduler, scaler, RNG
states, epoch, early-stopping state, metric history); `best.pt` the weights of the best epoch.
Both are written atomically, so a run killed at any moment leaves the previous checkpoint
intact. Each carries the digest of what determines the run (train params and the data); a
checkpoint with another digest is stale and is never resumed. When training completes, the
weights files are removed and `state.json` says so: the directory stays small in DVC's cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from transferline import atomic

log = logging.getLogger("transferline.model.checkpoints")

FORMAT = 1
LAST, BEST, STATE = "last.pt", "best.pt", "state.json"
# Params that change where or how fast a run goes, not what it computes (data-parallel processes train the
# model one process trains: transferline/model/distributed.py), so a checkpoint resumes under other values.
NOT_IN_DIGEST = ("device", "num_threads", "distributed")


def run_digest(train_params: dict, data_version: str, preprocess: dict, classes: list[str], n_train: int) -> str:
    """What a checkpoint must agree on to be resumed: the recipe and the exact data."""
    recipe = {k: v for k, v in train_params.items() if k not in NOT_IN_DIGEST}
    payload = {
        "format": FORMAT,
        "train": recipe,
        "data_version": data_version,
        "preprocess": preprocess,
        "classes": classes,
        "n_train": n_train,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CheckpointStore:
    def __init__(self, directory: Path, digest: str) -> None:
        self.directory = Path(directory)
        self.digest = digest

    def _save(self, name: str, payload: dict) -> None:
        with atomic.atomic_path(self.directory / name) as tmp:
            torch.save(payload, tmp)

    def save_last(self, payload: dict[str, Any]) -> None:
        self._save(LAST, {**payload, "digest": self.digest, "format": FORMAT})
        self.write_state("running", epoch=payload["epoch"])

    def save_best(self, model_state: dict[str, torch.Tensor], epoch: int) -> None:
        self._save(BEST, {"model": model_state, "epoch": epoch, "digest": self.digest, "format": FORMAT})

    def load_last(self) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None (absent, or stale: written for other params or data)."""
        path = self.directory / LAST
        if not path.is_file():
            return None
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT or payload.get("digest") != self.digest:
            log.warning(
                "ignoring checkpoint %s: it was written for other params or data (digest %s, now %s); starting over",
                path,
                payload.get("digest"),
                self.digest,
            )
            self.clear()
            return None
        return payload

    def load_best(self) -> dict[str, torch.Tensor]:
        payload = torch.load(self.directory / BEST, map_location="cpu", weights_only=True)
        if payload.get("digest") != self.digest:
            raise RuntimeError(f"{self.directory / BEST} belongs to another run (digest {payload.get('digest')})")
        return payload["model"]

    def clear(self) -> None:
        """Remove the weights files, and any a killed run was writing (they would end up in DVC's cache)."""
        for name in (LAST, BEST):
            (self.directory / name).unlink(missing_ok=True)
            atomic.remove_stale_temps(self.directory / name)

    def write_state(self, status: str, **extra: Any) -> None:
        atomic.write_json(self.directory / STATE, {"status": status, "digest": self.digest, **extra})

    def finish(self, **summary: Any) -> None:
        """Training is complete: drop the weights files, keep a small record (the DVC out stays tiny)."""
        self.clear()
        self.write_state("complete", **summary)

    def read_state(self) -> dict | None:
        path = self.directory / STATE
        return json.loads(path.read_text()) if path.is_file() else None


def resume_hint(directory: Path) -> str:
    """What running the same command again will do, from the directory's state.json (for failure messages)."""
    state = CheckpointStore(directory, "").read_state() or {}
    if state.get("status") == "running":
        return (
            f"The checkpoint of epoch {state['epoch']} is in {directory}: run the same command again to resume from it"
        )
    return f"No epoch had finished ({directory} holds no checkpoint of this run): a re-run starts over"
