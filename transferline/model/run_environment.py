"""What a training run ran on: the CPU, the instruction sets that decide the kernels, the caps, the libraries.

Two trainings that should give the same bytes and do not are explained by this record: compare the
`isa` flags, `caps`, `threads` and `versions` of the two. Machine-dependent by nature, so it lives in
the run record (metrics/train_run.json), never in the model files whose hash must not depend on the machine.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path

from transferline.model.reproducibility import Pinning, is_pinned
from transferline.source_digest import files_digest

# The CPU flags that change which kernels oneDNN, MKL and ATen pick (prefixes of /proc/cpuinfo flags).
ISA_FLAG_PREFIXES = ("avx2", "avx512", "amx", "fma")
CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")
LIBRARIES = ("torch", "torchvision", "numpy", "onnx")


def read_cpuinfo(text: str) -> tuple[str, list[str]]:
    """(model name, the ISA flags that matter, sorted) from the text of /proc/cpuinfo."""
    name, flags = "unknown", []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == "unknown":
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = sorted(f for f in value.split() if f.startswith(ISA_FLAG_PREFIXES))
    return name, flags


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    try:
        name, flags = read_cpuinfo(cpuinfo.read_text())
    except OSError:
        import platform

        name, flags = platform.processor() or platform.machine(), []
    return {"model": name, "isa": flags, "cores_usable": len(os.sched_getaffinity(0))}


def library_versions(config: str) -> dict:
    """Python packages, plus oneDNN and MKL as this torch build reports them (`torch.__config__.show()`)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    onednn = re.search(r"MKL-DNN v([\w.]+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    versions["onednn"] = onednn.group(1) if onednn else None
    versions["mkl"] = mkl.group(1) if mkl else None
    return versions


def training_environment(pin: Pinning, device: str) -> dict:
    """The record for this process, as it is now (call it after the run's torch settings are applied)."""
    import torch

    environment = {
        "reproducible": "portable" if pin.portable else pin.reproducible,
        # convolutions on oneDNN (blocked by the CPU's cache sizes) or on portable kernels
        "convolutions": "portable (no oneDNN)" if pin.portable else "oneDNN",
        # true only when the caps were in the environment before this process started computing
        "pinned": pin.reproducible and is_pinned(pin),
        "cpu": cpu_description(),
        "caps": {name: os.environ.get(name) for name in CAP_VARIABLES},
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),  # what ATen actually dispatches to
        "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "mkl": torch.backends.mkl.is_available(),
        "onednn": torch.backends.mkldnn.is_available(),
        "device": device,
        "versions": library_versions(torch.__config__.show()),
    }
    if device.startswith("cuda"):
        environment["gpu"] = torch.cuda.get_device_name(torch.device(device))
        environment["cuda"] = {"version": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return environment


def loaded_code_digest(root: Path) -> str:
    """sha256 over the project's modules this process imported (relative path and content): the code that
    trained, so two run records compare only when it was the same (a change elsewhere does not count)."""
    root = root.absolute()
    return files_digest(root, loaded_project_files(root))


def loaded_project_files(root: Path) -> list[Path]:
    """The source files under `root` of the modules in sys.modules (not those of an environment inside it)."""
    root = root.absolute()  # not resolved: a checkout reached through a link names its files through it too
    files = set()
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if not name or not name.endswith(".py") or not Path(name).is_absolute():  # torch's _ops names "_ops.py"
            continue
        path = Path(name)
        relative = path.relative_to(root) if path.is_relative_to(root) else None
        if relative is not None and not {".venv", "site-packages"} & set(relative.parts):
            files.add(path)
    return sorted(files)
