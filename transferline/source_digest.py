"""Digests of source files: which code ran, so results of different code never pass for the same.

Two users: a training run's record (the project modules the process imported,
transferline/model/run_environment.py) and the service's deploy check (the files a bento packs as the
service's code, serving/code_digest.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def files_digest(root: Path, files: Iterable[Path]) -> str:
    """sha256 over each file's path relative to `root` and its content, in path order: the same code in
    another checkout gives the same digest."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
