"""champion.json, the gate's declared champion: written by promote, rollback and sync, checked by the gate.

Runs the registry in a subprocess with its own BentoML home (the model store is real; the models are
stand-in bundles, since only their files' presence and metadata matter here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT
from transferline.env import QUIET_ENV

SCRIPT = """
import json, sys
from pathlib import Path
from serving import registry
from bench.synthetic_bundle import write_gate_dir
from stages.gate import default_champion_lookup
from transferline.data.preprocessing import PreprocessSpec
from transferline.errors import TransferlineError

work, project, elsewhere = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
snapshots = {}

def snap(step):
    snapshots[step] = json.loads((project / "champion.json").read_text())

def fake_model(name, md5):
    export = work / name
    export.mkdir()
    (export / "model.onnx").write_bytes(b"stand-in")
    (export / "classes.json").write_text(json.dumps({"classes": ["cat", "dog"]}))
    (export / "preprocess.json").write_text(json.dumps(PreprocessSpec(32, "crop", (0.5,) * 3, (0.25,) * 3).to_dict()))
    (export / "export_report.json").write_text("{}")
    write_gate_dir(work / f"gate-{name}", True, {"data_version": name})
    return registry.register(export, work / f"gate-{name}", {"data_version": name, "export_md5": md5})

a, b = fake_model("a", "md5-a"), fake_model("b", "md5-b")
snapshots["tags"] = [a, b]
snap("initial")
registry.promote(a, project); snap("promote_a")
registry.promote(b, project); snap("promote_b")
snapshots["lookup_in_sync"] = default_champion_lookup(project).tag
registry.rollback(project); snap("rollback")
registry.promote(b, elsewhere)  # another checkout moves the champion on
try:
    default_champion_lookup(project)
    snapshots["stale_lookup_error"] = None
except TransferlineError as exc:
    snapshots["stale_lookup_error"] = str(exc)
snapshots["sync_changed"] = registry.sync_champion_file(project); snap("sync")
snapshots["sync_again_changed"] = registry.sync_champion_file(project)
print(json.dumps(snapshots))
"""


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("champion-file")
    project, elsewhere = root / "project", root / "elsewhere"
    for directory in (project, elsewhere):
        directory.mkdir()
        (directory / "champion.json").write_text((PROJECT_ROOT / "champion.json").read_text())
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(root / "bentoml"), "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root), str(project), str(elsewhere)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_committed_file_says_there_is_no_champion_yet(lifecycle):
    assert lifecycle["initial"] == {"champion": None, "export_md5": None}


def test_promote_writes_the_tag_and_its_export_md5(lifecycle):
    a, b = lifecycle["tags"]
    assert lifecycle["promote_a"] == {"champion": a, "export_md5": "md5-a"}
    assert lifecycle["promote_b"] == {"champion": b, "export_md5": "md5-b"}
    assert lifecycle["lookup_in_sync"] == b


def test_rollback_writes_the_restored_champion(lifecycle):
    a, _ = lifecycle["tags"]
    assert lifecycle["rollback"] == {"champion": a, "export_md5": "md5-a"}


def test_the_gate_refuses_a_champion_file_that_the_registry_contradicts(lifecycle):
    a, b = lifecycle["tags"]
    error = lifecycle["stale_lookup_error"]
    assert error is not None and f"champion.json names {a} but the registry's champion is {b}" in error
    assert "python -m serving.registry sync" in error


def test_sync_rewrites_the_file_only_when_the_champion_changed(lifecycle):
    _, b = lifecycle["tags"]
    assert lifecycle["sync_changed"] is True and lifecycle["sync"] == {"champion": b, "export_md5": "md5-b"}
    assert lifecycle["sync_again_changed"] is False


def test_a_missing_or_foreign_champion_file_is_a_precise_error(tmp_path):
    from serving.registry import RegistryError, read_champion_file

    with pytest.raises(RegistryError, match=r"champion.json does not exist: it is part of the project"):
        read_champion_file(tmp_path)
    (tmp_path / "champion.json").write_text('{"tag": "x"}')
    with pytest.raises(RegistryError, match=r"is not a champion record"):
        read_champion_file(tmp_path)
    (tmp_path / "champion.json").write_text("not json")
    with pytest.raises(RegistryError, match=r"is not a champion record"):
        read_champion_file(tmp_path)


def test_the_cli_syncs_the_champion_file_of_the_project_it_is_given(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "champion.json").write_text(json.dumps({"champion": "gone:1", "export_md5": "m"}))
    env = {**os.environ, **QUIET_ENV, "BENTOML_HOME": str(tmp_path / "bentoml"), "PYTHONPATH": str(PROJECT_ROOT)}

    def sync() -> str:
        args = [sys.executable, "-m", "serving.registry", "--project", str(project), "sync"]
        result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert sync() == "champion.json: updated"  # an empty registry has no champion
    assert json.loads((project / "champion.json").read_text()) == {"champion": None, "export_md5": None}
    assert sync() == "champion.json: already current"
    assert not (tmp_path / "champion.json").exists()  # the working directory is not the project
