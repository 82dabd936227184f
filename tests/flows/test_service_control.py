"""The deploy step and `flows.service_control` address the service where the service itself listens.

Both read the serve settings through serving/settings.py, so a TRANSFERLINE_SERVE_* override that moves
the service moves the deploy step's probes and the demo's client with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows import service_control
from flows.service_control import controller_from_params


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory whose params.yaml puts the service on port 3200, with no inherited overrides."""
    for name in list(os.environ):
        if name.startswith("TRANSFERLINE_SERVE_") or name == "TRANSFERLINE_PARAMS":
            monkeypatch.delenv(name)
    (tmp_path / "params.yaml").write_text("serve:\n  host: 127.0.0.1\n  port: 3200\n")
    return tmp_path


def test_the_address_comes_from_params_yaml(repo: Path):
    controller = controller_from_params(repo, environ={})
    assert (controller.host, controller.port, controller.url) == ("127.0.0.1", 3200, "http://127.0.0.1:3200")


def test_the_port_override_in_the_environment_moves_the_deploy_address(repo: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRANSFERLINE_SERVE_PORT", "3100")
    monkeypatch.setenv("TRANSFERLINE_SERVE_HOST", "127.0.0.2")
    controller = controller_from_params(repo)  # reads os.environ, as `python -m flows.pipeline` does
    assert controller.port == 3100
    assert controller.url == "http://127.0.0.2:3100"


def test_defaults_without_a_serve_section(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 1\n")
    assert controller_from_params(tmp_path, environ={}).url == "http://127.0.0.1:3000"


def test_a_relative_params_file_is_found_in_the_repo_as_the_service_finds_it(repo: Path):
    (repo / "other.yaml").write_text("serve:\n  port: 3300\n")
    assert controller_from_params(repo, environ={"TRANSFERLINE_PARAMS": "other.yaml"}).port == 3300


def test_a_bad_setting_is_one_error_line_naming_it(repo: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("TRANSFERLINE_SERVE_PORT", "70000")
    assert service_control.main(["status", "--repo", str(repo)]) == 2
    assert "serve.port" in capsys.readouterr().err
