"""train.reproducible: two `python -m stages.train` processes made to look like two different CPUs give the same
model bytes when it is on, and different bytes when it is off (so the pair of environments proves something)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import PROJECT_ROOT, QUIET_ENV
from transferline.model.reproducibility import DEFAULT_THREADS, MARKER, is_pinned, pinning

# What the kernels may pick from, as far as one process can tell: this CPU as it is (AVX-512 here), and
# "an AVX2-only machine with one core" (oneDNN and ATen capped, MKL on another branch, one CPU to run on).
CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS", MARKER)
NATIVE: dict[str, str] = {}
AVX2_ONE_CORE = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": "1",
}


def write_project(root: Path, prepared: Path, reproducible: bool) -> None:
    (root / "data").mkdir(parents=True)
    (root / "data" / "prepared").symlink_to(prepared, target_is_directory=True)
    train = {
        "strategy": "full",
        "frozen_blocks": 0,
        "epochs": 2,
        "warmup_epochs": 0.5,
        "batch_size": 8,
        "early_stopping_patience": None,
        "num_threads": None,  # the machine decides, unless reproducible pins it
        "reproducible": reproducible,
    }
    (root / "params.yaml").write_text(yaml.safe_dump({"train": train}))


def train_in(root: Path, caps: dict[str, str]) -> dict:
    """Run the stage in a fresh process under `caps` (on one CPU when it caps the threads at 1)."""
    env = {k: v for k, v in os.environ.items() if k not in CAP_VARIABLES}
    env.update({**QUIET_ENV, "PYTHONPATH": str(PROJECT_ROOT), "OMP_WAIT_POLICY": "PASSIVE", **caps})
    one_cpu = caps.get("OMP_NUM_THREADS") == "1"
    first_cpu = min(os.sched_getaffinity(0))
    result = subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=(lambda: os.sched_setaffinity(0, {first_cpu})) if one_cpu else None,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    digest = hashlib.sha256()
    for key, value in state.items():
        digest.update(key.encode())
        digest.update(value.numpy().tobytes())
    return {
        "state_digest": digest.hexdigest(),
        "file_digest": hashlib.sha256((root / "models" / "model.pt").read_bytes()).hexdigest(),
        "meta": (root / "models" / "model.json").read_bytes(),
        "record": json.loads((root / "metrics" / "train_run.json").read_text()),
        "log": result.stderr,
    }


def test_reproducible_training_gives_the_same_bytes_under_different_cpu_caps_and_thread_counts(prepared, tmp_path):
    runs = {}
    for name, caps in (("native", NATIVE), ("avx2_one_core", AVX2_ONE_CORE)):
        write_project(tmp_path / name, prepared, reproducible=True)
        runs[name] = train_in(tmp_path / name, caps)
    native, other = runs["native"], runs["avx2_one_core"]
    assert native["state_digest"] == other["state_digest"]
    assert native["file_digest"] == other["file_digest"]  # model.pt byte for byte
    assert native["meta"] == other["meta"]  # and model.json: the DVC hash of models/ is the same
    for run in runs.values():
        environment = run["record"]["environment"]
        assert "restarting with" in run["log"]  # the stage re-executed itself with the pinned environment
        assert environment["pinned"] is True and environment["reproducible"] is True
        assert environment["aten_cpu_capability"] == "AVX2"  # ATen really dispatched to AVX2 kernels
        assert environment["caps"]["ONEDNN_MAX_CPU_ISA"] == "AVX2" and environment["caps"]["MKL_CBWR"] == "COMPATIBLE"
        assert environment["threads"] == DEFAULT_THREADS and environment["deterministic_algorithms"] is True
        assert run["record"]["model_sha256"] == run["file_digest"]
    assert native["record"]["environment"]["cpu"]["isa"] == other["record"]["environment"]["cpu"]["isa"]
    # the same code trained both: the records say so (bench/results/repro_runs.json compares only such runs)
    assert len(native["record"]["code_digest"]) == 64
    assert native["record"]["code_digest"] == other["record"]["code_digest"]


def test_the_code_digest_covers_the_project_modules_imported_and_changes_with_their_content(tmp_path, monkeypatch):
    from transferline.model.run_environment import loaded_code_digest, loaded_project_files

    package = tmp_path / "pkg_for_code_digest"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "step.py").write_text("RATE = 1\n")
    (package / "unused.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("pkg_for_code_digest.step")
    try:
        assert [p.name for p in loaded_project_files(tmp_path)] == ["__init__.py", "step.py"]  # not unused.py
        before = loaded_code_digest(tmp_path)
        (package / "unused.py").write_text("CHANGED = True\n")
        assert loaded_code_digest(tmp_path) == before  # a module the run did not import does not count
        (package / "step.py").write_text("RATE = 2\n")
        assert loaded_code_digest(tmp_path) != before
    finally:
        for name in ("pkg_for_code_digest.step", "pkg_for_code_digest"):
            sys.modules.pop(name, None)


def test_without_reproducible_the_same_two_environments_give_different_bytes(prepared, tmp_path):
    """The control: were these two environments alike, the test above would prove nothing."""
    runs = {}
    for name, caps in (("native", NATIVE), ("avx2_one_core", AVX2_ONE_CORE)):
        write_project(tmp_path / name, prepared, reproducible=False)
        runs[name] = train_in(tmp_path / name, caps)
    native, other = runs["native"], runs["avx2_one_core"]
    assert native["state_digest"] != other["state_digest"]
    assert "restarting with" not in native["log"]
    assert native["record"]["environment"]["pinned"] is False
    assert native["record"]["environment"]["aten_cpu_capability"] != "AVX2" or not _has_avx512()
    assert other["record"]["environment"]["aten_cpu_capability"] == "AVX2"
    assert other["record"]["environment"]["threads"] == 1  # one usable CPU, one thread


def _has_avx512() -> bool:
    return any(flag.startswith("avx512") for flag in Path("/proc/cpuinfo").read_text().split())


def test_the_pinned_settings_are_a_pure_function_of_the_params():
    off = pinning(False, None)
    assert off.env == {} and off.threads is None and off.describe() == "off"
    assert pinning(False, 3).threads == 3
    pin = pinning(True, None)
    assert pin.threads == DEFAULT_THREADS and pin.env["OMP_NUM_THREADS"] == str(DEFAULT_THREADS)
    assert pin.env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and pin.env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert pin.env["MKL_CBWR"] == "COMPATIBLE" and pin.env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert pinning(True, 4).env["MKL_NUM_THREADS"] == "4"
    assert is_pinned(pin, pin.env) and not is_pinned(pin, {**pin.env, "OMP_NUM_THREADS": "7"})
    assert not is_pinned(pinning(True, 4), pin.env)  # another thread count is another pinning, marker included


@pytest.mark.parametrize("reproducible", [True, False])
def test_cuda_switches_follow_reproducible(monkeypatch, reproducible):
    """No GPU here: the cuDNN/TF32 switches are process flags that can be set without one, as a CUDA run sets them."""
    from transferline.model.reproducibility import apply_determinism

    calls = []
    monkeypatch.setattr(
        torch, "use_deterministic_algorithms", lambda mode, warn_only=False: calls.append((mode, warn_only))
    )
    cudnn, matmul, fill = torch.backends.cudnn, torch.backends.cuda.matmul, torch.utils.deterministic
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32, fill.fill_uninitialized_memory)
    try:
        fill.fill_uninitialized_memory = True
        apply_determinism(reproducible, cuda=True)
        assert cudnn.benchmark is (not reproducible) and cudnn.deterministic is reproducible
        assert matmul.allow_tf32 is (not reproducible) and cudnn.allow_tf32 is (not reproducible)
        assert fill.fill_uninitialized_memory is (not reproducible)  # no NaN pass over every new tensor
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32, fill.fill_uninitialized_memory = (
            saved
        )
    assert calls == [(reproducible, True)]  # warn-only on CUDA: adaptive pooling has no
    # deterministic backward kernel there, and raising would stop every CUDA training
