"""Flow-run overrides are validated as the stages will read them before params.yaml is written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.params_override import apply_overrides
from tests.conftest import PROJECT_ROOT
from transferline.env import tool_env
from transferline.errors import ParamsError


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy2(PROJECT_ROOT / "params.yaml", path)
    return path


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"train.epochs": 1}, "train.warmup_epochs: Value error, must be below epochs (1)"),  # warmup_epochs is 1
        ({"train.frozen_blocks": 99}, "train.frozen_blocks: 99 is more than the"),  # the strategy's own check
        ({"train.weights_path": "no/such.pth"}, "train.weights_path:"),
        ({"serve.top_k_default": 50}, "top_k_default (50) must not exceed top_k_max (20)"),
        ({"prepare.val_fraction": "many"}, "prepare.val_fraction"),
        ({"gate.champion_metric": "loss"}, "gate.champion_metric"),
    ],
)
def test_an_invalid_override_names_the_key_and_leaves_the_file_untouched(params_file, overrides, named):
    before = params_file.read_bytes()
    with pytest.raises(ParamsError) as caught:
        apply_overrides(params_file, overrides)
    assert named in str(caught.value)
    assert f"{params_file} left unchanged" in str(caught.value)
    assert params_file.read_bytes() == before


def test_a_valid_override_is_written_with_comments_kept(params_file):
    changed = apply_overrides(params_file, {"train.epochs": 3, "train.warmup_epochs": 0.5})
    assert changed == {"train.epochs": (5, 3), "train.warmup_epochs": (1, 0.5)}
    text = params_file.read_text()
    assert "# may be fractional" in text
    written = yaml.safe_load(text)["train"]
    assert (written["epochs"], written["warmup_epochs"]) == (3, 0.5)


def test_weights_path_is_checked_against_the_project_root_not_the_working_directory(params_file, monkeypatch):
    (params_file.parent / "weights.pth").write_bytes(b"state dict")
    monkeypatch.chdir(PROJECT_ROOT)  # where weights.pth is not
    assert apply_overrides(params_file, {"train.weights_path": "weights.pth"}) == {
        "train.weights_path": (None, "weights.pth")
    }


def test_pipeline_cli_refuses_a_bad_override_in_one_line_before_any_run(params_file):
    before = params_file.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--repo", str(params_file.parent), "--set", "train.epochs=1"],
        cwd=PROJECT_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "train.warmup_epochs" in result.stderr
    assert params_file.read_bytes() == before
