"""Flow-run parameters written into params.yaml, where DVC sees them and dvc.lock records them.

Keys are dotted (`train.epochs`); the file keeps its comments and order. Unknown sections or keys
are refused, and the overridden file is validated by the stages' own typed params (every section,
plus the train strategy checks) before it is written: a refused override leaves params.yaml as it was.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from transferline import atomic
from transferline.config import TrainParams, parse_all_sections
from transferline.errors import ParamsError


def apply_overrides(params_file: Path, overrides: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Set each dotted key; returns {key: (old, new)} for the keys that changed. Nothing is written unless
    the whole overridden file is valid."""
    text, changed = overridden_params(params_file, overrides)
    if changed:
        atomic.write_text(params_file, text)
    return changed


def overridden_params(params_file: Path, overrides: dict[str, Any]) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """The params file's text with the overrides applied, validated; and {key: (old, new)} of the changes."""
    if not overrides:
        return "", {}
    if not params_file.is_file():
        raise ParamsError(f"{params_file}: params file not found (run from the project root, or give --repo)")
    editor = YAML()
    editor.preserve_quotes = True
    data = editor.load(params_file.read_text())
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
    if not changed:
        return "", {}
    buffer = io.StringIO()
    editor.dump(data, buffer)
    text = buffer.getvalue()
    try:
        check_params_text(text, params_file.parent, train_changed=any(key.startswith("train.") for key in changed))
    except ParamsError as exc:
        raise ParamsError(f"{params_file} left unchanged, overrides refused: {exc}") from None
    return text, changed


def check_params_text(text: str, root: Path, train_changed: bool = True) -> None:
    """Validate a whole params file as the stages will read it; raises ParamsError naming the bad key."""
    sections = parse_all_sections(yaml.safe_load(text) or {})
    if train_changed:
        check_train_strategy(sections["train"], root)


def check_train_strategy(params: TrainParams, root: Path) -> None:
    """The train stage's own pre-flight checks (frozen blocks vs the backbone, weights file), with no model
    built; weights_path is resolved against the project root, where the stage will run."""
    from transferline.model.strategies import check_params

    if params.weights_path is not None and not params.weights_path.is_absolute():
        params = params.model_copy(update={"weights_path": root / params.weights_path})
    check_params(params)
