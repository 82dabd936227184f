"""transferline.model.exact_math: square roots whose bytes do not depend on the CPU vendor."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from bench.repro_bench import worker_env
from bench.repro_fingerprint import EMULATED_CPU, qemu_user
from transferline.model import exact_math

PROBE = """
import hashlib, json, torch
from transferline.model import exact_math
values = torch.rand(4099, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
digest = lambda t: hashlib.sha256(t.numpy().tobytes()).hexdigest()
answers = {name: digest(getattr(torch, name)(values)) for name in ("sqrt", "acos", "atan", "exp", "tanh")}
print(json.dumps({**answers, "exact_sqrt": digest(exact_math.sqrt(values))}))
"""


def _digests(prefix: list[str]) -> dict[str, str]:
    """The probe in a process pinned as the default `train.reproducible` pins the train stage."""
    argv = [*prefix, sys.executable, "-c", PROBE]
    done = subprocess.run(argv, env=worker_env("on", None), capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_square_root_is_correctly_rounded_where_torchs_cpu_one_is_not():
    values = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) * 1e-4
    correctly_rounded = np.sqrt(values.numpy().astype(np.float64)).astype(np.float32)
    assert np.array_equal(exact_math.sqrt(values).numpy(), correctly_rounded)
    assert exact_math.sqrt(values).dtype == torch.float32
    # torch's (MKL's vector maths) is within an ulp but not the IEEE result: why this module exists
    assert not np.array_equal(torch.sqrt(values).numpy(), correctly_rounded)


def test_on_an_emulated_intel_cpu_torchs_square_root_moves_and_the_exact_one_does_not():
    """The emulation sees what differs between vendors: torch's CPU sqrt gives other bytes there, the
    replacement the training path uses gives the same (so the fingerprint's agreement is not vacuous)."""
    qemu, _ = qemu_user()
    native = _digests([])
    emulated = _digests([qemu, "-cpu", EMULATED_CPU])
    moved = {name for name in native if emulated[name] != native[name]}
    assert moved == {"sqrt", "acos", "atan"}  # MKL's vector maths; exp and tanh are torch's own and agree
