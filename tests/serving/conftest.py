"""Shared fixtures for the service tests: two registered models in a throwaway BentoML home, built once.

The models are real: a MobileNetV2 exported to ONNX by the project's own `export_onnx`, registered and
promoted by the registry CLI (a subprocess, so this process never binds BentoML to a model store).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["amber", "azure", "jade"]
IMAGE_SIZE = 32
QUIET = {"DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true"}


@dataclass(frozen=True)
class ServingModels:
    home: Path  # BENTOML_HOME holding both models; the champion is v1
    export_dir: Path
    passed_gate: Path
    failed_gate: Path
    workdirs: dict[str, Path]  # data version -> a directory whose lineage reports that version
    v1: str  # tag trained on "data-v1", the champion
    v2: str  # tag trained on "data-v2", registered, not promoted


def registry_cli(
    home: Path, *args: str, cwd: Path | None = None, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m serving.registry` against the BentoML home `home`; by default in a project directory
    beside it, so promote and rollback write that directory's champion.json, not the checkout's.

    With `env` (the serve settings of a test's service), promote and rollback swap that service; without,
    they run with --no-swap, so a test never touches a service someone runs at the default address."""
    if cwd is None:
        cwd = home.parent / "project"
        cwd.mkdir(parents=True, exist_ok=True)
    swap = [] if env is not None else ["--no-swap"]
    env = {**os.environ, **QUIET, "BENTOML_HOME": str(home), **(env or {})}
    env.pop("TRANSFERLINE_MODEL_TAG", None)
    result = subprocess.run(
        [sys.executable, "-m", "serving.registry", *swap, *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"registry {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def lineage_workdir(root: Path, data_version: str) -> Path:
    """A directory where `collect_lineage` finds this data version (and a params.yaml to digest)."""
    (root / "data" / "prepared").mkdir(parents=True)
    (root / "data" / "prepared" / "dataset.json").write_text(json.dumps({"data_version": data_version}))
    shutil.copyfile(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    return root


def copy_home(models: ServingModels, target: Path) -> Path:
    """A private copy of the BentoML home, for tests that promote or roll back."""
    shutil.copytree(models.home, target, ignore=shutil.ignore_patterns("prometheus_multiproc_dir", "*.lock"))
    return target


@pytest.fixture(scope="session")
def serving_models(tmp_path_factory: pytest.TempPathFactory) -> ServingModels:
    from bench.synthetic_bundle import mobilenet_v2, write_export_dir, write_gate_dir

    root = tmp_path_factory.mktemp("serving-models")
    export_dir = root / "export"
    write_export_dir(mobilenet_v2(len(CLASSES), image_size=IMAGE_SIZE), CLASSES, IMAGE_SIZE, export_dir)
    workdirs = {version: lineage_workdir(root / version, version) for version in ("data-v1", "data-v2")}
    write_gate_dir(root / "gate-passed", True, {"data_version": "data-v1"})
    write_gate_dir(root / "gate-failed", False, {"data_version": "data-v1"}, accuracy=0.42)
    home = root / "bentoml"
    tags = {}
    for version, workdir in workdirs.items():
        out = registry_cli(
            home, "register", "--export-dir", str(export_dir), "--gate-dir", str(root / "gate-passed"), cwd=workdir
        ).stdout
        tags[version] = out.strip().splitlines()[-1]
    registry_cli(home, "promote", tags["data-v1"])
    return ServingModels(
        home, export_dir, root / "gate-passed", root / "gate-failed", workdirs, tags["data-v1"], tags["data-v2"]
    )


def server_env(home: Path, **settings: str) -> dict[str, str]:
    """Environment for a test server: its own home, defaults for every serve setting unless given."""
    env = {
        **QUIET,
        "BENTOML_HOME": str(home),
        "TRANSFERLINE_PARAMS": str(home / "no-params.yaml"),  # defaults, so the project's params.yaml can change
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    settings.setdefault("log_dir", str(home / "predictions"))  # the prediction log stays out of the project
    env.update({f"TRANSFERLINE_SERVE_{key.upper()}": value for key, value in settings.items()})
    return env


@pytest.fixture(scope="session", autouse=True)
def no_inherited_serve_settings():
    """Servers started here must not pick up a developer's TRANSFERLINE_* settings."""
    names = [
        n
        for n in os.environ
        if n.startswith(("TRANSFERLINE_SERVE_", "TRANSFERLINE_API_TOKEN", "TRANSFERLINE_MODEL_TAG"))
    ]
    saved = {name: os.environ.pop(name) for name in names}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="module")
def corpus_server(serving_models: ServingModels, tmp_path_factory: pytest.TempPathFactory):
    """The champion served with the limits tests/serving/hostile_uploads.py writes its expectations for."""
    from flows.local_server import running_server
    from tests.serving.hostile_uploads import SERVER_LIMITS

    env = server_env(serving_models.home, **SERVER_LIMITS.settings())
    with running_server(PROJECT_ROOT, tmp_path_factory.mktemp("serve") / "serve.log", env) as running:
        yield running
