"""The registry and the service over a model's life: refusal of failed gates, promotion, rollback, token, bento."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from flows.local_server import QUIET_ENV, ServerFailed, running_server, start_server
from serving.champion import NO_CHAMPION
from tests.serving import images
from tests.serving.conftest import PROJECT_ROOT, ServingModels, copy_home, registry_cli, server_env

pytestmark = pytest.mark.slow

TOKEN = "s3cret-test-token"


def classify(url: str, headers: dict | None = None) -> httpx.Response:
    cat = images.accepted_images()["cat.jpg"]
    return httpx.post(f"{url}/classify", files={"image": ("cat.jpg", cat)}, headers=headers, timeout=30)


def test_registry_cli_lists_models_and_champion(serving_models: ServingModels):
    listing = registry_cli(serving_models.home, "list").stdout
    assert f"* {serving_models.v1}" in listing and "data data-v1" in listing
    assert f"  {serving_models.v2}" in listing and "data data-v2" in listing
    assert registry_cli(serving_models.home, "champion").stdout.strip() == serving_models.v1


def test_register_refuses_a_failed_gate(serving_models: ServingModels, tmp_path: Path):
    home = copy_home(serving_models, tmp_path / "home")
    result = registry_cli(
        home,
        "register",
        "--export-dir",
        str(serving_models.export_dir),
        "--gate-dir",
        str(serving_models.failed_gate),
        cwd=serving_models.workdirs["data-v1"],
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to register a model whose gate failed" in result.stderr
    assert len(registry_cli(home, "list").stdout.strip().splitlines()) == 2


def test_promote_refuses_a_model_whose_gate_failed(serving_models: ServingModels, tmp_path: Path):
    """A model put in the store behind the registry's back, with a failed decision, cannot become champion."""
    home = copy_home(serving_models, tmp_path / "home")
    sneak_in = (
        "import bentoml\n"
        "with bentoml.models.create('transferline-classifier', metadata={'gate_decision': {'passed': False}}) as m:\n"
        "    pass\n"
        "print(m.tag)\n"
    )
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(home)}
    tag = subprocess.run(
        [sys.executable, "-c", sneak_in], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    result = registry_cli(home, "promote", tag, check=False)
    assert result.returncode == 2
    assert "its gate did not pass" in result.stderr
    assert registry_cli(home, "champion").stdout.strip() == serving_models.v1
    assert "no model 'nope:1'" in registry_cli(home, "promote", "nope:1", check=False).stderr


def test_serve_without_a_champion_stops_with_the_fix(tmp_path: Path):
    server = start_server(PROJECT_ROOT, tmp_path / "serve.log", server_env(tmp_path / "empty-home"))
    try:
        with pytest.raises(ServerFailed) as failure:
            server.wait_ready(60)
        assert server.process.returncode not in (None, 0)
        assert NO_CHAMPION in str(failure.value)
    finally:
        server.stop()


def test_promote_restart_rollback_with_token(serving_models: ServingModels, tmp_path: Path):
    """Promote v2 -> after a restart the service answers with v2 (token required); rollback -> v1 again."""
    home = copy_home(serving_models, tmp_path / "home")
    assert registry_cli(home, "promote", serving_models.v2).stdout.strip() == f"champion: {serving_models.v2}"
    env = {**server_env(home), "TRANSFERLINE_API_TOKEN": TOKEN}
    with running_server(PROJECT_ROOT, tmp_path / "v2.log", env) as server:
        assert httpx.get(f"{server.url}/readyz").status_code == 200  # probes need no token
        assert httpx.get(f"{server.url}/livez").status_code == 200
        missing = classify(server.url)
        assert missing.status_code == 401
        assert missing.json()["error"] == "missing bearer token"
        assert classify(server.url, {"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{server.url}/metadata").status_code == 401
        answer = classify(server.url, {"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200
        assert answer.json()["model_tag"] == serving_models.v2
        assert answer.json()["data_version"] == "data-v2"
    assert registry_cli(home, "rollback").stdout.strip() == f"champion: {serving_models.v1}"
    with running_server(PROJECT_ROOT, tmp_path / "v1.log", server_env(home)) as server:
        answer = classify(server.url).json()
        assert (answer["model_tag"], answer["data_version"]) == (serving_models.v1, "data-v1")
    result = registry_cli(home, "rollback", check=False)
    assert result.returncode == 2 and "nothing to roll back to" in result.stderr


def test_bento_builds_and_serves_the_model_it_was_built_with(serving_models: ServingModels, tmp_path: Path):
    home = copy_home(serving_models, tmp_path / "home")
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(home)}
    build = subprocess.run(
        [str(Path(sys.executable).parent / "bentoml"), "build", "--output", "tag"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    bento_tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = bento_tag.split(":")
    src = home / "bentos" / name / version / "src"
    # The code the service imports travels with it (a server here would also find it on PYTHONPATH).
    for module in ("serving/service.py", "transferline/data/imaging.py", "transferline/evaluation/onnx_classifier.py"):
        assert (src / module).is_file(), f"{module} is not in the bento"
    assert not (src / "bench").exists() and not (src / "tests").exists()
    registry_cli(home, "promote", serving_models.v2)  # the registry moves on; the bento must not
    with running_server(tmp_path, tmp_path / "bento.log", server_env(home), target=bento_tag) as server:
        answer = classify(server.url).json()
    assert answer["model_tag"] == serving_models.v1
