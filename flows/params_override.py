"""Flow-run parameters written into params.yaml, where DVC sees them and dvc.lock records them.

Keys are dotted (`train.epochs`); the file keeps its comments and order. Unknown sections or keys
are refused before anything runs, and the result is validated by the stages' own typed params.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from transferline.errors import ParamsError


def apply_overrides(params_file: Path, overrides: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Set each dotted key; returns {key: (old, new)} for the keys that changed."""
    if not overrides:
        return {}
    yaml = YAML()
    yaml.preserve_quotes = True
    data = yaml.load(params_file.read_text())
    changed = {}
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        if not parents:
            raise ParamsError(f"override {dotted!r}: use section.key, e.g. train.epochs")
        node = data
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise ParamsError(f"override {dotted!r}: no section {part!r} in {params_file}")
            node = node[part]
        if leaf not in node:
            raise ParamsError(f"override {dotted!r}: no key {leaf!r} in section {'.'.join(parents)}")
        if node[leaf] != value:
            changed[dotted] = (node[leaf], value)
            node[leaf] = value
    if changed:
        buffer = io.StringIO()
        yaml.dump(data, buffer)
        from transferline import atomic

        atomic.write_text(params_file, buffer.getvalue())
    return changed
