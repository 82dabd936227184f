"""Where a model came from: git commit, data versions and a digest of its params.

Recorded in the registry with every model and returned with every prediction, so an answer can
be traced back to the code and the data that trained it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import yaml


def git_commit(repo: Path) -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def dvc_out_hash(repo: Path, stage: str, out: str) -> str | None:
    """The hash DVC recorded in dvc.lock for one output of one stage."""
    lock = repo / "dvc.lock"
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for entry in stages.get(stage, {}).get("outs", []):
        if entry.get("path") == out:
            return entry.get("md5")
    return None


def params_digest(repo: Path) -> str | None:
    if not (repo / "params.yaml").is_file():
        return None
    params = yaml.safe_load((repo / "params.yaml").read_text()) or {}
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def collect_lineage(repo: Path) -> dict:
    dataset_file = repo / "data" / "prepared" / "dataset.json"
    dataset = json.loads(dataset_file.read_text()) if dataset_file.is_file() else {}
    model_file = repo / "models" / "model.json"
    model = json.loads(model_file.read_text()) if model_file.is_file() else {}
    return {
        "git_commit": git_commit(repo),
        "data_version": dataset.get("data_version", "unknown"),
        "raw_data_md5": dvc_out_hash(repo, "ingest", "data/raw"),
        "prepared_data_md5": dvc_out_hash(repo, "prepare", "data/prepared"),
        "params_digest": params_digest(repo),
        "backbone": model.get("backbone"),
        "strategy": model.get("strategy"),
    }
