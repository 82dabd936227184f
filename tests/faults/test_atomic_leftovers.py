"""What a killed writer leaves behind: recognisable temporaries that the next write clears, and a directory
swap interrupted half-way that the next write undoes before anything else."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from transferline import atomic


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_temporaries_of_dead_writers_are_removed_by_the_next_write_and_live_ones_kept(tmp_path):
    target = tmp_path / "model.json"
    dead = tmp_path / f".model.json.{dead_pid()}.abc123.tmp"
    dead.write_text("half of a")
    dead_dir = tmp_path / f".model.json.{dead_pid()}.def456.tmp"
    dead_dir.mkdir()
    alive = tmp_path / f".model.json.{os.getpid()}.ghi789.tmp"  # a writer still at work
    alive.write_text("being written")
    sibling = f"model.json.{dead_pid()}"  # another artifact, whose name extends this one's
    other = tmp_path / f".{sibling}.{dead_pid()}.jkl000.tmp"
    other.write_text("someone else's")
    assert sorted(atomic.stale_temps(target)) == sorted([dead, dead_dir])

    atomic.write_json(target, {"ok": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.json", alive.name, other.name])
    assert target.read_text() == '{\n  "ok": true\n}\n'


def test_directory_replacement_without_an_atomic_exchange_still_replaces_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # a kernel or file system without RENAME_EXCHANGE
    target = tmp_path / "export"
    for version in ("one", "two"):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "model.onnx").write_text(version)
    assert (target / "model.onnx").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_swap_killed_between_its_two_renames_is_undone_before_the_next_write(tmp_path):
    target = tmp_path / "export"
    old = tmp_path / f".export.{dead_pid()}.abcdefgh.old"  # the previous output, moved aside; then SIGKILL
    old.mkdir()
    (old / "model.onnx").write_text("previous")

    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as tmp:  # the next write fails too
        (tmp / "model.onnx").write_text("partial")
        raise RuntimeError("export failed")
    assert (target / "model.onnx").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_finished_training_run_leaves_no_checkpoint_a_killed_run_was_writing(tmp_path):
    """`checkpoints/train` is a DVC output: what a killed save left there must not reach DVC's cache."""
    from transferline.model.checkpoints import CheckpointStore

    directory = tmp_path / "checkpoints"
    store = CheckpointStore(directory, "digest")
    store.save_last({"epoch": 1, "model": {}})
    (directory / f".best.pt.{dead_pid()}.abcdefgh.tmp").write_bytes(b"half a state dict")  # killed mid-save
    store.finish(epochs_run=2)
    assert [p.name for p in directory.iterdir()] == ["state.json"]
    assert store.read_state() == {"status": "complete", "digest": "digest", "epochs_run": 2}


def test_artifacts_get_the_permissions_of_plain_files_and_folders(tmp_path):
    """Not the private 0600/0700 of mkstemp/mkdtemp: a service run by another user must read the model."""
    previous = os.umask(0o022)
    try:
        atomic.write_bytes(tmp_path / "model.onnx", b"onnx")
        with atomic.atomic_dir(tmp_path / "export") as tmp:
            (tmp / "classes.json").write_text("[]")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "export").stat().st_mode) == 0o755
