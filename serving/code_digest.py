"""A digest of the service's code and settings, so a deploy can tell a model swap from a code change.

A running service keeps the code it imported at start, so only a restart brings new service code. The
service reports the digest of the code it runs and of its serve settings (GET /admin/status); the deploy
step computes the same from the checkout and restarts only when they differ, and swaps the model
otherwise. The files are those `bentoml build` packs as the service's code (bentofile.yaml's include):
serving/*.py, serving/*.html and transferline/**/*.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transferline.config import ServeParams
from transferline.source_digest import files_digest

CODE_PATTERNS = (("serving", "*.py"), ("serving", "*.html"), ("transferline", "**/*.py"))


def code_files(root: Path) -> list[Path]:
    files = {path for folder, pattern in CODE_PATTERNS for path in (root / folder).glob(pattern) if path.is_file()}
    return sorted(path for path in files if "__pycache__" not in path.parts)


def code_digest(root: Path) -> str:
    """sha256 over the service code's relative paths and contents under `root` (the project, or a bento's src/)."""
    return files_digest(root, code_files(root))


def settings_digest(settings: ServeParams) -> str:
    """sha256 of the serve settings as the service reads them (params.yaml plus environment overrides)."""
    canonical = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
