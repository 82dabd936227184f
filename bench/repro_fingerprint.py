"""Which computation makes two CPUs disagree: digests of every step of a training step, per pinned mode.

A default training gave different bytes on an AMD EPYC and an Intel Xeon in both reproducible modes
(bench/results/repro.md), and a model's hash says only that they differ, not where. This runs the
pieces of one training step of the default recipe on fixed inputs (drawn from seeded CPU generators,
whose numbers do not depend on the machine) in a process pinned as `train.reproducible` pins the train
stage, and hashes what each piece returns:

- the random initialisation of MobileNetV2 (seed 0) and the stage's normalisation and augmentation of a
  fixed uint8 batch;
- the output of every module of the model, in execution order, in a forward pass on that batch (channels
  last, as the stage trains), the loss, every parameter's gradient, and the parameters after one AdamW step;
- matrix products of the shapes the convolutions use, and element-wise transcendental functions, alone.

Run on two CPUs, the first entry whose digest differs names the computation to fix: everything before
it agrees bit for bit. Each run adds one record per CPU and mode to bench/results/repro_ops.json, and
bench/results/repro_ops.md shows the table (kept per CPU, as repro_runs.json keeps trainings).

`--sensitivity` adds, for this CPU, which probes move when one pinned variable is undone or changed.

`--emulate [MODEL]` also runs every mode under qemu-user as another CPU (default: Haswell, an Intel CPU with
AVX2, the ISA the modes pin), so one machine compares two vendors. The emulated CPU has its own vendor,
model and cache descriptors, so code that dispatches on them takes the other vendor's branch; it computes
IEEE-exact instructions bit for bit as hardware does, and approximate ones (reciprocal estimates, whose
results each vendor defines its own way) exactly, as no CPU does. So a probe that differs under emulation
rests on vendor-dependent results, and the first such probe is the computation to replace. That is how
torch's CPU `sqrt` (MKL's vector maths) was found in the augmentation and in AdamW (transferline/model/exact_math.py).
It needs qemu-user 8 or newer (`make bench-tools` installs it on Debian; 7.2 crashes on AVX2 gathers).

Usage: python -m bench.repro_fingerprint [--modes on portable] [--sensitivity] [--emulate [MODEL]]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.repro_bench import PROJECT_ROOT, REPRODUCIBLE, worker_env

RESULTS_FILE = "repro_ops"
EMULATED_CPU = "Haswell"  # qemu's model of an Intel Core with AVX2: the vendor these AMD records lacked
QEMU = "qemu-x86_64"
QEMU_MIN_MAJOR = 8
MODES = ("on", "portable")
SEED = 0
BATCH = 16
CLASSES = 10
# Each pinned variable in turn changed (None: unset, so the library picks for itself), for `--sensitivity`.
VARIANTS: dict[str, dict[str, str | None]] = {
    "MKL_CBWR unset (MKL's own dispatch)": {"MKL_CBWR": None},
    "MKL_CBWR=AVX2": {"MKL_CBWR": "AVX2"},
    "MKL_CBWR=COMPATIBLE,STRICT": {"MKL_CBWR": "COMPATIBLE,STRICT"},
    "ATEN_CPU_CAPABILITY unset (the widest)": {"ATEN_CPU_CAPABILITY": None},
    "ATEN_CPU_CAPABILITY=default (no vectors)": {"ATEN_CPU_CAPABILITY": "default"},
    "ONEDNN_MAX_CPU_ISA unset (the widest)": {"ONEDNN_MAX_CPU_ISA": None},
}


def digest(tensors: list[Any]) -> dict[str, Any]:
    """sha256 of the tensors' bytes in order, and their float64 sum (how far two differing digests are apart)."""
    sha = hashlib.sha256()
    total = 0.0
    for tensor in tensors:
        values = tensor.detach().contiguous()
        sha.update(values.cpu().numpy().tobytes())
        total += float(values.double().sum())
    return {"sha256": sha.hexdigest()[:16], "sum": total} if tensors else {"sha256": None, "sum": 0.0}


def _uniform(generator: Any, *shape: int) -> Any:
    import torch

    return torch.rand(*shape, generator=generator) * 2 - 1


def operation_probes() -> Iterator[tuple[str, list[Any]]]:
    """Single operations, on inputs that every machine draws alike."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    a, b = _uniform(generator, 2304, 96), _uniform(generator, 96, 576)
    yield "matmul 2304x96 @ 96x576 (pointwise convolution)", [a @ b]
    c, d = _uniform(generator, 576, 9216), _uniform(generator, 9216, 96)
    yield "matmul 576x9216 @ 9216x96 (a weight gradient's long sum)", [c @ d]
    w, cols = _uniform(generator, 1, 1, 32, 27), _uniform(generator, BATCH, 1, 27, 2304)
    yield "batched matmul 32x27 @ 27x2304 (im2col convolution)", [w @ cols]
    x = _uniform(generator, 1 << 16)
    yield "exp, log, tanh, sigmoid (element-wise)", [x.exp(), x.abs().add(1e-3).log(), x.tanh(), x.sigmoid()]
    yield "sum and mean of 65,536 floats", [x.sum(), x.mean()]


def training_step_probes() -> Iterator[tuple[str, list[Any] | dict[str, Any]]]:
    """One training step of the default recipe's pieces, module by module."""
    import torch

    from bench.train_bench import default_params
    from transferline.config import PreprocessParams, load_section
    from transferline.data.preprocessing import PreprocessSpec
    from transferline.data.preprocessing_torch import normalize_torch
    from transferline.model.augment import augment_batch
    from transferline.model.backbones import build_model
    from transferline.model.strategies import make_plan
    from transferline.model.training import build_optimizer

    params = default_params()
    torch.manual_seed(SEED)
    model, _ = build_model(params.backbone, CLASSES, pretrained=False)
    model.to(memory_format=torch.channels_last)
    yield f"random initialisation (seed {SEED})", list(model.state_dict().values())
    generator = torch.Generator().manual_seed(SEED)
    spec = PreprocessSpec.from_params(load_section("preprocess", PreprocessParams, PROJECT_ROOT / "params.yaml"))
    size = spec.image_size
    images = torch.randint(0, 256, (BATCH, size, size, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    x = normalize_torch(images, spec)
    yield "normalisation", [x]
    x = augment_batch(x, params.augment, generator).contiguous(memory_format=torch.channels_last)
    yield "augmentation", [x]

    # digested as each module returns: in-place layers (ReLU6) overwrite their input, a module's output, later
    forward: list[tuple[str, dict[str, Any]]] = []

    def record(module: Any, _inputs: Any, output: Any) -> None:
        forward.append((f"forward {names[module]} ({type(module).__name__})", digest([output])))

    names = {module: name for name, module in model.named_modules() if name and not list(module.children())}
    hooks = [module.register_forward_hook(record) for module in names]
    model.train()
    logits = model(x)
    for hook in hooks:
        hook.remove()
    loss = torch.nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)(logits, labels)
    yield from forward
    yield "loss", [loss]
    loss.backward()
    for name, parameter in reversed(list(model.named_parameters())):  # the order backward computes them
        yield f"gradient {name}", [parameter.grad]
    build_optimizer(make_plan(model, params), params).step()  # the train stage's optimizer, groups and all
    yield f"parameters after one {params.optimizer} step", [p.detach() for p in model.parameters()]


def fingerprint(mode: str) -> dict[str, Any]:
    """Worker, in a process started with the mode's pinned environment: the environment and every digest."""
    import torch

    from transferline.model.reproducibility import apply_determinism, pinning
    from transferline.model.run_environment import training_environment

    pin = pinning(REPRODUCIBLE[mode], None)
    apply_determinism(REPRODUCIBLE[mode], cuda=False)
    if pin.threads:
        torch.set_num_threads(pin.threads)
    probes: list[dict[str, Any]] = []
    for probes_of in (operation_probes, training_step_probes):
        for name, values in probes_of():  # tensors, or a digest taken when they existed (forward outputs)
            probes.append({"probe": name, **(values if isinstance(values, dict) else digest(values))})
    return {"mode": mode, "environment": training_environment(pin, "cpu"), "probes": probes}


def qemu_user() -> tuple[str, str]:
    """(path, version) of a qemu-user able to run torch's AVX2 kernels, or SystemExit saying how to get one."""
    path = shutil.which(QEMU)
    if path is None:
        raise SystemExit(f"--emulate needs {QEMU} (qemu-user {QEMU_MIN_MAJOR} or newer): run `make bench-tools`")
    banner = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"version (\d+)\.(\d+)\.(\d+)", banner)
    if found is None or int(found.group(1)) < QEMU_MIN_MAJOR:
        found_version = banner.strip() or "no version banner"
        raise SystemExit(f"{path} is not qemu-user {QEMU_MIN_MAJOR} or newer ({found_version}): run `make bench-tools`")
    return path, ".".join(found.groups())


def run_worker(mode: str, changes: dict[str, str | None] | None = None, emulate: str | None = None) -> dict[str, Any]:
    """One mode in its own pinned process (the caps act only at library start); `changes` undo or alter
    some of the pinned variables (None: unset); `emulate`: a qemu CPU model to run the process as."""
    env = worker_env(mode, None)
    for name, value in (changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    argv = [sys.executable, "-m", "bench.repro_fingerprint", "--worker", mode]
    if emulate:
        qemu, version = qemu_user()
        argv = [qemu, "-cpu", emulate, *argv]
    done = subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fingerprint worker ({mode}) failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if emulate:
        result["emulated"] = {"model": emulate, "qemu": version}
    return result


def moved_probes(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
    theirs = {p["probe"]: p["sha256"] for p in other["probes"]}
    return [p["probe"] for p in reference["probes"] if theirs.get(p["probe"]) != p["sha256"]]


def sensitivity(modes: tuple[str, ...] = MODES) -> dict[str, dict[str, Any]]:
    """On this machine: which probes move when one pinned variable is undone or changed. A probe that moves
    with a cap is computed by code that the cap selects, so it is where two CPUs can part if anything but
    the cap steers that selection; one that never moves depends on none of them."""
    table: dict[str, dict[str, Any]] = {}
    for mode in modes:
        base = run_worker(mode)
        table[mode] = {}
        for variant, changes in VARIANTS.items():
            moved = moved_probes(base, run_worker(mode, changes))
            table[mode][variant] = {"moved": len(moved), "of": len(base["probes"]), "first": moved[:3]}
    return table


def sensitivity_markdown(sensitivities: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for cpu, table in sensitivities.items():
        lines += [
            f"## Which pieces each pinned variable steers, on {cpu}",
            "",
            "One variable changed from the mode's pinning, everything else pinned, on this one machine "
            "(`--sensitivity`): how many probes then give other digests, and the first of them.",
            "",
            "| mode | variable | probes that move | first to move |",
            "|---|---|---|---|",
        ]
        for mode, variants in table.items():
            for variant, moved in variants.items():
                first = "; ".join(moved["first"]) or "-"
                lines.append(f"| {REPRODUCIBLE[mode]} | {variant} | {moved['moved']} of {moved['of']} | {first} |")
        lines.append("")
    return lines


def record_entry(result: dict[str, Any]) -> dict[str, Any]:
    environment = result["environment"]
    emulated = result.get("emulated")
    host = environment["cpu"]["model"]
    return {
        "cpu": f"{emulated['model']} emulated by qemu-user {emulated['qemu']} on {host}" if emulated else host,
        "isa": environment["cpu"]["isa"],
        "mode": result["mode"],
        "pinned": environment["pinned"],
        "threads": environment["threads"],
        "aten_cpu_capability": environment["aten_cpu_capability"],
        "versions": environment["versions"],
        "probes": result["probes"],
    }


def merge_runs(runs: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs with `entry` replacing any earlier one of its CPU, mode and library versions."""

    def key(run: dict[str, Any]) -> tuple:
        return run["cpu"], run["mode"], json.dumps(run["versions"], sort_keys=True)

    return [run for run in runs if key(run) != key(entry)] + [entry]


def first_difference(reference: dict[str, Any], other: dict[str, Any]) -> str | None:
    """The first probe (in run order) whose digest differs between two runs of one mode; None if all agree."""
    moved = moved_probes(reference, other)
    return moved[0] if moved else None


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = [
        "# Where two CPUs disagree: digests of a training step's pieces",
        "",
        "Written by `python -m bench.repro_fingerprint` (bench/repro_fingerprint.py says what each probe is). One "
        "record per CPU, mode and library versions; within a mode every CPU must give the first CPU's digests. "
        "Cells show the first 8 hex digits of each digest; `=` means the same digest as the first column. "
        "A CPU named 'emulated by qemu-user' is that CPU model run under emulation on the host named (`--emulate`): "
        "its vendor, model and caches steer every dispatch, and approximate instructions compute otherwise than on "
        "either vendor's hardware, so a probe that agrees there depends on no vendor-specific result.",
        "",
    ]
    for mode in MODES:
        members = [run for run in runs if run["mode"] == mode]
        if not members:
            continue
        first = members[0]
        lines += [f"## train.reproducible: {REPRODUCIBLE[mode]}", ""]
        for run in members[1:]:
            where = first_difference(first, run)
            verdict = "every probe agrees" if where is None else f"first difference: **{where}**"
            lines.append(f"- {run['cpu']} against {first['cpu']}: {verdict}.")
        if len(members) == 1:
            lines.append(f"- Only {first['cpu']} so far: run this on another kind of CPU to compare.")
        lines += [
            "",
            "| probe | "
            + " | ".join(f"{run['cpu']} ({run['aten_cpu_capability']}, {run['threads']} threads)" for run in members)
            + " |",
            "|---" * (len(members) + 1) + "|",
        ]
        others = [{p["probe"]: p["sha256"] for p in run["probes"]} for run in members[1:]]
        for probe in first["probes"]:
            cells = [f"`{probe['sha256'][:8]}`" if probe["sha256"] else "-"]
            for theirs in others:
                value = theirs.get(probe["probe"])
                cells.append("=" if value == probe["sha256"] else (f"**`{value[:8]}`**" if value else "missing"))
            lines.append(f"| {probe['probe']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def load_document(results: Path) -> dict[str, Any]:
    path = results / f"{RESULTS_FILE}.json"
    document = json.loads(path.read_text()) if path.is_file() else {}
    return {"runs": document.get("runs", []), "sensitivity": document.get("sensitivity", {})}


def run(
    modes: tuple[str, ...] = MODES, with_sensitivity: bool = False, emulate: str | None = None
) -> list[dict[str, Any]]:
    """Fingerprint each mode on this CPU (and as `emulate`) and merge the records into bench/results/repro_ops.*"""
    from bench.common import results_dir
    from transferline import atomic
    from transferline.model.run_environment import cpu_description

    results = results_dir()
    document = load_document(results)
    runs = document["runs"]
    entries = [record_entry(run_worker(mode)) for mode in modes]
    if emulate:
        entries += [record_entry(run_worker(mode, emulate=emulate)) for mode in modes]
    for entry in entries:
        runs = merge_runs(runs, entry)
    sensitivities = document["sensitivity"]
    if with_sensitivity:
        sensitivities[cpu_description()["model"]] = sensitivity(modes)
    results.mkdir(parents=True, exist_ok=True)
    atomic.write_json(results / f"{RESULTS_FILE}.json", {"runs": runs, "sensitivity": sensitivities})
    atomic.write_text(results / f"{RESULTS_FILE}.md", "\n".join([markdown(runs), *sensitivity_markdown(sensitivities)]))
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--sensitivity", action="store_true", help="also: which probes each pinned variable moves")
    parser.add_argument(
        "--emulate", nargs="?", const=EMULATED_CPU, metavar="MODEL", help=f"also as a qemu CPU (default {EMULATED_CPU})"
    )
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(fingerprint(args.worker)), flush=True)
        return 0
    if args.emulate:
        qemu_user()  # before any work: say now if it is missing
    for entry in run(tuple(args.modes), args.sensitivity, args.emulate):
        print(f"{entry['cpu']} ({entry['mode']}): {len(entry['probes'])} probes recorded")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
