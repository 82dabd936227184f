"""bench.repro_fingerprint: digests of a training step's pieces, per CPU and pinned mode."""

from __future__ import annotations

import json

import pytest

from bench.repro_fingerprint import (
    EMULATED_CPU,
    MODES,
    first_difference,
    markdown,
    merge_runs,
    qemu_user,
    record_entry,
    run,
    run_worker,
    sensitivity_markdown,
)


def _run(cpu: str, mode: str, digests: list[str], torch: str = "2.14.1") -> dict:
    probes = [{"probe": f"probe {i}", "sha256": value, "sum": 0.0} for i, value in enumerate(digests)]
    return {
        "cpu": cpu,
        "isa": ["avx2"],
        "mode": mode,
        "pinned": True,
        "threads": 2,
        "aten_cpu_capability": "AVX2",
        "versions": {"torch": torch},
        "probes": probes,
    }


def test_the_table_names_the_first_probe_where_two_cpus_disagree():
    amd = _run("AMD EPYC", "portable", ["aaaaaaaa1", "bbbbbbbb1", "cccccccc1"])
    intel = _run("Intel Xeon", "portable", ["aaaaaaaa1", "bbbbbbbb2", "cccccccc2"])
    same = _run("Intel Xeon", "on", ["aaaaaaaa1"])
    assert first_difference(amd, intel) == "probe 1"
    assert first_difference(amd, amd) is None
    table = markdown([amd, intel, same])
    assert "- Intel Xeon against AMD EPYC: first difference: **probe 1**." in table
    assert "| probe 0 | `aaaaaaaa` | = |" in table
    assert "| probe 1 | `bbbbbbbb` | **`bbbbbbbb`** |" in table
    assert "- Only Intel Xeon so far" in table  # the mode with one CPU says so instead of claiming agreement


def test_a_new_run_replaces_the_record_of_its_cpu_mode_and_versions_only():
    old = _run("AMD EPYC", "on", ["a"])
    other_torch = _run("AMD EPYC", "on", ["b"], torch="2.15.0")
    new = _run("AMD EPYC", "on", ["c"])
    runs = merge_runs(merge_runs([old], other_torch), new)
    assert [(r["versions"]["torch"], r["probes"][0]["sha256"]) for r in runs] == [("2.15.0", "b"), ("2.14.1", "c")]


def test_each_mode_is_fingerprinted_pinned_and_the_digests_do_not_depend_on_the_callers_thread_settings(
    tmp_path, monkeypatch
):
    """Two pinned modes, each in its own process; a rerun from a caller with other thread and ISA settings
    (which the pinned environment replaces) gives the same digests, so a difference between two CPUs is the CPU's."""
    monkeypatch.setenv("TRANSFERLINE_BENCH_RESULTS_DIR", str(tmp_path))
    entries = run(MODES)
    recorded = json.loads((tmp_path / "repro_ops.json").read_text())["runs"]
    assert [r["mode"] for r in recorded] == list(MODES) and all(r["pinned"] for r in recorded)
    on, portable = ({p["probe"]: p["sha256"] for p in entry["probes"]} for entry in entries)
    forward = [name for name in on if name.startswith("forward ")]
    assert len(forward) > 100 and "forward head (Linear)" in forward  # every leaf module of MobileNetV2
    assert any(name.startswith("gradient ") for name in on) and "parameters after one adamw step" in on
    # the modes really differ: oneDNN's convolutions against the portable GEMMs sum in other orders
    assert on["forward body.features.0.0 (Conv2d)"] != portable["forward body.features.0.0 (PortableConv2d)"]
    assert on["random initialisation (seed 0)"] == portable["random initialisation (seed 0)"]

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    again = run_worker("on")
    assert first_difference(recorded[0], {"probes": again["probes"]}) is None
    # while undoing a pinned variable inside the worker does move what that variable steers
    unpinned = run_worker("on", {"MKL_CBWR": None})
    assert first_difference(recorded[0], unpinned) == "matmul 2304x96 @ 96x576 (pointwise convolution)"
    assert (tmp_path / "repro_ops.md").read_text().count("## train.reproducible") == 2


def test_the_sensitivity_table_says_how_many_probes_each_variable_moves():
    table = {"AMD EPYC": {"portable": {"MKL_CBWR=AVX2": {"moved": 2, "of": 3, "first": ["probe 0", "probe 1"]}}}}
    lines = sensitivity_markdown(table)
    assert lines[0] == "## Which pieces each pinned variable steers, on AMD EPYC"
    assert "| portable | MKL_CBWR=AVX2 | 2 of 3 | probe 0; probe 1 |" in lines


def test_a_pinned_training_step_gives_the_same_bytes_on_an_emulated_intel_cpu():
    """The default mode's training step (initialisation, augmentation, forward, loss, backward, AdamW) run as
    another vendor's CPU, whose code paths dispatch on its own vendor, model and caches and whose approximate
    instructions compute differently: every one of the 310 digests equals this machine's.
    (tests/train/test_exact_math.py shows that the emulation does move a vendor-dependent computation.)"""
    native = run_worker("on")
    emulated = run_worker("on", emulate=EMULATED_CPU)
    assert emulated["emulated"]["model"] == EMULATED_CPU
    assert len(emulated["probes"]) == len(native["probes"]) > 300
    assert first_difference(native, emulated) is None
    record = record_entry(emulated)
    assert record["cpu"].startswith(f"{EMULATED_CPU} emulated by qemu-user ")
    assert record["cpu"] != record_entry(native)["cpu"]  # kept as its own record beside the native one


def test_emulation_without_a_recent_qemu_user_says_how_to_install_it(tmp_path, monkeypatch):
    old = tmp_path / "qemu-x86_64"
    old.write_text("#!/bin/sh\necho 'qemu-x86_64 version 7.2.0 (Debian 1:7.2+dfsg-7)'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match=r"not qemu-user 8 or newer \(qemu-x86_64 version 7\.2\.0.*make bench-tools"):
        qemu_user()
    old.unlink()
    with pytest.raises(SystemExit, match="needs qemu-x86_64"):
        qemu_user()
