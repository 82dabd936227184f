"""A writer to kill: rewrites large artifacts through every writer in `transferline.atomic` (and the
training checkpoint store), generation after generation, until it is SIGKILLed.

Run as `python -m tests.faults.atomic_writer DIR`, it is a small fork server, so that torch is imported
once and each writer starts writing at once: `start G` forks a writer that begins at generation G and
answers `started PID`; `wait` reaps it and answers `exited STATUS`; `quit` ends the server.

Each artifact carries its generation at both ends, so a checker tells a complete artifact of any
generation from a partial one.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from transferline import atomic
from transferline.model.checkpoints import CheckpointStore

MB = 1 << 20
BLOB = np.random.default_rng(0).bytes(20 * MB)  # incompressible, the same in every process
TEXT = BLOB[: 8 * MB].hex()[: 8 * MB]
FLOATS = 2 * MB  # 8 MB of float32
DIR_FILES = ("a.bin", "b.bin", "c.bin")
DIGEST = "fault-test"
TARGETS = (
    "blob.bin",
    "blob.txt",
    "blob.json",
    "blob.npy",
    "bundle",
    "checkpoints/last.pt",
    "checkpoints/best.pt",
    "checkpoints/state.json",
)


def framed(generation: int, body: bytes) -> bytes:
    mark = f"<{generation:012d}>".encode()
    return mark + body + mark


def unframe(data: bytes, body: bytes) -> int:
    """The generation of a complete framed artifact; AssertionError for anything partial."""
    mark_size = 14
    assert len(data) == len(body) + 2 * mark_size, f"length {len(data)}, expected {len(body) + 2 * mark_size}"
    head, tail = data[:mark_size], data[-mark_size:]
    assert head == tail, f"ends disagree: {head!r} vs {tail!r}"
    assert data[mark_size:-mark_size] == body, "body differs"
    return int(head[1:-1])


def write_generation(root: Path, generation: int) -> None:
    """One generation of every artifact, each through its atomic writer, in a shuffled order so that
    kills land in every writer."""

    def bundle() -> None:
        with atomic.atomic_dir(root / "bundle") as tmp:
            for index, name in enumerate(DIR_FILES):
                (tmp / name).write_bytes(framed(generation, BLOB[index * 4 * MB : (index + 1) * 4 * MB]))

    store = CheckpointStore(root / "checkpoints", DIGEST)
    weights = {"w": torch.full((FLOATS,), float(generation))}
    writers = [
        lambda: atomic.write_bytes(root / "blob.bin", framed(generation, BLOB)),
        lambda: atomic.write_text(root / "blob.txt", framed(generation, TEXT.encode()).decode()),
        lambda: atomic.write_json(root / "blob.json", {"generation": generation, "payload": TEXT, "end": generation}),
        lambda: atomic.write_npy(root / "blob.npy", np.full(FLOATS, generation, dtype=np.float32)),
        bundle,
        lambda: store.save_last({"epoch": generation, "model": weights}),
        lambda: store.save_best(weights, generation),
    ]
    random.Random(generation).shuffle(writers)
    for write in writers:
        write()


def read_generations(root: Path) -> dict[str, int]:
    """The generation of every artifact; AssertionError (or a decoder's error) if any is partial."""
    found = {
        "blob.bin": unframe((root / "blob.bin").read_bytes(), BLOB),
        "blob.txt": unframe((root / "blob.txt").read_text().encode(), TEXT.encode()),
    }
    document = json.loads((root / "blob.json").read_text())
    assert document["generation"] == document["end"] and document["payload"] == TEXT
    found["blob.json"] = document["generation"]
    array = np.load(root / "blob.npy", allow_pickle=False)
    assert array.shape == (FLOATS,) and array.dtype == np.float32 and (array == array[0]).all()
    found["blob.npy"] = int(array[0])
    bundle = sorted(p.name for p in (root / "bundle").iterdir())
    assert bundle == list(DIR_FILES), bundle
    parts = {
        unframe((root / "bundle" / n).read_bytes(), BLOB[i * 4 * MB : (i + 1) * 4 * MB])
        for i, n in enumerate(DIR_FILES)
    }
    assert len(parts) == 1, f"bundle files from generations {parts}: the directory was not replaced as a whole"
    found["bundle"] = parts.pop()
    store = CheckpointStore(root / "checkpoints", DIGEST)
    last = store.load_last()
    assert last is not None, "the last checkpoint was rejected"
    assert (last["model"]["w"] == last["epoch"]).all() and last["model"]["w"].shape == (FLOATS,)
    found["checkpoints/last.pt"] = last["epoch"]
    best = torch.load(root / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert (best["model"]["w"] == best["epoch"]).all() and best["model"]["w"].shape == (FLOATS,)
    found["checkpoints/best.pt"] = best["epoch"]
    state = store.read_state()
    assert state is not None and state["status"] == "running" and state["epoch"] <= last["epoch"]
    found["checkpoints/state.json"] = state["epoch"]
    return found


def serve(root: Path) -> None:
    child = None
    for line in sys.stdin:
        command, *args = line.split()
        if command == "start":
            child = os.fork()
            if child == 0:
                generation = int(args[0])
                while True:
                    write_generation(root, generation)
                    generation += 1
            print(f"started {child}", flush=True)
        elif command == "wait":
            _, status = os.waitpid(child, 0)
            print(f"exited {os.waitstatus_to_exitcode(status)}", flush=True)
        elif command == "quit":
            return


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
