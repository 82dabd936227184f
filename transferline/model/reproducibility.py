"""Pinned math for `train.reproducible`: the same model bytes from the same inputs on other machines.

Same seeds are not enough across machines: oneDNN (convolutions), ATen's vectorised kernels and MKL
(matrix products) each pick the widest instruction set the CPU has (AVX2, AVX-512, AMX), and every
choice sums in another order; the intra-op thread count changes how reductions are split. Pinned:

- `ONEDNN_MAX_CPU_ISA=AVX2` and `ATEN_CPU_CAPABILITY=avx2`: every x86-64 machine we target has AVX2;
- `MKL_CBWR=COMPATIBLE`: MKL's conditional numerical reproducibility on the one code branch that MKL
  documents as giving the same results on Intel and non-Intel CPUs (the `AVX2` branch falls back to
  MKL's own per-CPU dispatch on AMD processors, so it would not pin an AMD EPYC against an Intel Xeon);
- one intra-op thread count: `train.num_threads`, else DEFAULT_THREADS (never "one per core"), shared out over
  the data-parallel processes of one machine (DEFAULT_THREADS // processes, at least 1 each): the count
  then depends on the params and the process count, never on the machine's cores;
- `torch.use_deterministic_algorithms(True)` (it changes no CPU result today, and guards later ops), without
  its NaN fill of new tensors (a cost, and no change for kernels that write what they return).

What this pins is enough for machines with the same kind of CPU, and for any thread pool or instruction
set setting on one machine; it was not enough across kinds: an AMD EPYC and an Intel Xeon, both capped at
AVX2, gave different bytes (bench/results/repro.md), because oneDNN's convolutions block their
reductions by the CPU's cache sizes. `reproducible: portable` adds portable_kernels.py: convolutions
through MKL's pinned GEMM and fixed-order element-wise ops, nothing through oneDNN; that did not give the
two CPUs the same bytes either (bench/results/repro.md; bench/repro_fingerprint.py looks for the rest).

The three library variables are read once, when each library starts, so they must be in the
environment before the process first computes anything: the train stage re-executes itself with
them (`reexec_pinned`), and `is_pinned` tells a process whether it was started that way.

On CUDA: `CUBLAS_WORKSPACE_CONFIG=:4096:8`, cuDNN deterministic with autotuning off, TF32 off, and
deterministic algorithms in warn-only mode. What stays machine-dependent there: a model trained on a GPU
differs from one trained on a CPU, and from one trained on another GPU model or CUDA/cuDNN version
(kernels are chosen per GPU), and ops without a deterministic CUDA kernel (e.g. the backward of the
adaptive average pooling every supported backbone ends with) only warn, so even two runs on one GPU may differ.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("transferline.model.reproducibility")

ONEDNN_ISA = "AVX2"
ATEN_CAPABILITY = "avx2"
MKL_BRANCH = "COMPATIBLE"
# Reproducible runs use this many intra-op threads unless train.num_threads says otherwise. Fixed, not
# per machine: the thread count changes the bytes (1, 2 and 4 threads gave three different models with
# every cap on). 2 = this project's reference machine; a bigger machine trains no faster in reproducible
# mode unless num_threads is raised, on every machine that must agree.
DEFAULT_THREADS = 2
CUBLAS_WORKSPACE = ":4096:8"
PORTABLE = "portable"
MARKER = "TRANSFERLINE_REPRODUCIBLE"  # in a pinned process: the pinning it was started with


@dataclass(frozen=True)
class Pinning:
    """What `train.reproducible` and `train.num_threads` ask of the process and of torch."""

    reproducible: bool
    threads: int | None  # None: not pinned (one per usable core, the caller decides)
    env: dict[str, str]  # must be in the environment before the process first computes
    portable: bool = False  # convolutions off oneDNN (portable_kernels.py): the same bytes across CPU kinds

    def describe(self) -> str:
        if not self.reproducible:
            return "off"
        return ", ".join(f"{k}={v}" for k, v in self.env.items() if k != MARKER)


def pinning(reproducible: bool | str, num_threads: int | None, processes: int = 1) -> Pinning:
    """The settings for these params: pure, so a test (or a launcher of trial workers) can read them.

    `processes`: data-parallel processes on this machine (torchrun's local world size), which share the
    default thread count out between them.
    """
    if reproducible not in (True, False, PORTABLE):
        raise ValueError(f"train.reproducible: {reproducible!r} is not true, false or {PORTABLE!r}")
    if not reproducible:
        return Pinning(False, num_threads, {})
    threads = num_threads or max(1, DEFAULT_THREADS // processes)
    env = {
        "ONEDNN_MAX_CPU_ISA": ONEDNN_ISA,
        "ATEN_CPU_CAPABILITY": ATEN_CAPABILITY,
        "MKL_CBWR": MKL_BRANCH,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "CUBLAS_WORKSPACE_CONFIG": CUBLAS_WORKSPACE,
    }
    portable = reproducible == PORTABLE
    if portable:
        env["TRANSFERLINE_KERNELS"] = PORTABLE  # part of the marker: a portable run never passes for a pinned one
    env[MARKER] = ",".join(f"{key}={value}" for key, value in env.items())  # which pinning was applied
    return Pinning(True, threads, env, portable)


def is_pinned(pin: Pinning, environ: Mapping[str, str] | None = None) -> bool:
    """True when the environment (this process's by default) already holds every pinned variable."""
    environ = os.environ if environ is None else environ
    return all(environ.get(key) == value for key, value in pin.env.items())


def reexec_pinned(pin: Pinning) -> None:
    """Replace this process by the same command with the pinned environment, unless it already has it.

    Same pid, same arguments (`python -m stages.train ...`): a caller or DVC sees one process. The marker
    names the pinning applied, so a process started by a pinned one with other settings (another thread
    count) re-executes once, and one whose environment did not take stops instead of looping (its record
    then says `pinned: false`).
    """
    if not pin.reproducible or is_pinned(pin) or os.environ.get(MARKER) == pin.env[MARKER]:
        return
    env = {**os.environ, **pin.env}
    log.info("train.reproducible: restarting with %s", pin.describe())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)


def apply_determinism(reproducible: bool | str, cuda: bool) -> None:
    """Process-wide torch switches: deterministic algorithms, and on CUDA no autotuning and no TF32;
    `portable` on a CPU also keeps convolutions off oneDNN (portable_kernels.py).

    Off: the fast settings (cuDNN autotuning and TF32 on CUDA; deterministic algorithms off).
    """
    import torch

    from transferline.model.portable_kernels import set_portable_kernels

    set_portable_kernels(reproducible == PORTABLE and not cuda)
    reproducible = bool(reproducible)

    # warn-only on CUDA: ops without a deterministic CUDA kernel (adaptive pooling's backward) would raise
    torch.use_deterministic_algorithms(reproducible, warn_only=cuda)
    if reproducible:
        # Deterministic mode would also fill every new tensor with NaN before a kernel overwrites it (a guard
        # against kernels that read memory they never wrote): a pass over every activation, for no change in
        # what correct kernels compute.
        torch.utils.deterministic.fill_uninitialized_memory = False
    if cuda:
        torch.backends.cudnn.benchmark = not reproducible  # autotuning picks kernels by timing: run-dependent
        torch.backends.cudnn.deterministic = reproducible
        torch.backends.cuda.matmul.allow_tf32 = not reproducible
        torch.backends.cudnn.allow_tf32 = not reproducible
