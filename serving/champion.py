"""Which model the service serves, and loading its files from the BentoML model store.

The tag is decided once, when the service is defined (imported): `bentoml build` then bundles exactly
that model, and a running service changes model only by a restart, never half-way through. A built
bento serves the model it was built with, whatever the registry says later.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from serving.registry import MODEL_NAME, Champion, read_pointer
from serving.registry import bundle as registry_bundle
from transferline.errors import TransferlineError

MODEL_TAG_ENV = "TRANSFERLINE_MODEL_TAG"
NO_CHAMPION = "no champion model: run the pipeline or `python -m serving.registry promote TAG`"


class NoChampion(TransferlineError):
    """There is no model to serve."""


def served_model_tag(working_dir: Path | None = None) -> str:
    """$TRANSFERLINE_MODEL_TAG (pinning), else the bento's own model, else the registry's champion.

    Checked against the model store, so a missing model stops `bentoml serve` at once with the fix,
    instead of every worker failing in turn.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    tag = os.environ.get(MODEL_TAG_ENV) or bundled_model_tag(working_dir or Path.cwd()) or read_pointer()["champion"]
    if not tag:
        raise NoChampion(NO_CHAMPION)
    try:
        return str(bentoml.models.get(tag).tag)
    except NotFound:
        raise NoChampion(f"model {tag!r} is not in the BentoML model store: {NO_CHAMPION}") from None


def bundled_model_tag(working_dir: Path) -> str | None:
    """The transferline model of the bento being served (BentoML imports a bento's code from its src/)."""
    bento_yaml = working_dir.parent / "bento.yaml"
    if working_dir.name != "src" or not bento_yaml.is_file():
        return None
    info = yaml.safe_load(bento_yaml.read_text()) or {}
    models = [m for service in info.get("services", []) for m in service.get("models", [])] + info.get("models", [])
    tags = [str(m["tag"]) for m in models if str(m.get("tag", "")).startswith(f"{MODEL_NAME}:")]
    return tags[0] if tags else None


def load_bundle(tag: str) -> Champion:
    """The model's files and lineage from the model store."""
    return registry_bundle(tag)


def promotion_time(tag: str) -> str | None:
    """When `tag` last became champion, from the registry's history (a bento carries no history)."""
    history = read_pointer()["history"]
    return next((entry["at"] for entry in reversed(history) if entry["tag"] == tag), None)
