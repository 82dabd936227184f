"""Every stage in dvc.yaml lists, as deps, every first-party file its code can execute.

A dep missing from dvc.yaml means a code change that DVC does not see: `dvc repro` then reports the
stage up to date while its output was made by other code. The closure is computed statically
(tests/imports.py), following imports inside functions too.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tests.imports import import_closure

PIPELINE_ORDER = ["ingest", "prepare", "train", "evaluate", "export", "gate"]


def stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    match = re.search(r"python -m (stages\.\w+)", stage["cmd"])
    assert match, f"cmd {stage['cmd']!r} does not run a stages.<name> module"
    return match.group(1)


def code_deps(stage: dict) -> set[str]:
    return {dep for dep in stage.get("deps", []) if isinstance(dep, str) and dep.endswith(".py")}


@pytest.mark.parametrize("name", list(stages()))
def test_stage_deps_are_the_complete_import_closure(name):
    stage = stages()[name]
    entry = PROJECT_ROOT.joinpath(*stage_module(stage).split(".")).with_suffix(".py")
    closure = {path.relative_to(PROJECT_ROOT).as_posix() for path in import_closure(entry)}
    listed = code_deps(stage)
    missing = sorted(closure - listed)
    assert not missing, f"dvc.yaml stage {name!r} misses deps it imports: {', '.join(missing)}"
    stale = sorted(listed - closure)
    assert not stale, f"dvc.yaml stage {name!r} lists code it no longer imports: {', '.join(stale)}"


def test_every_listed_dep_of_the_code_exists():
    for name, stage in stages().items():
        absent = sorted(dep for dep in code_deps(stage) if not (PROJECT_ROOT / dep).is_file())
        assert not absent, f"dvc.yaml stage {name!r} lists missing files: {', '.join(absent)}"


def test_stages_are_listed_in_execution_order():
    assert list(stages()) == PIPELINE_ORDER


def test_the_gate_depends_on_the_champion_file_which_exists_in_the_checkout():
    assert "champion.json" in stages()["gate"]["deps"]
    assert (PROJECT_ROOT / "champion.json").is_file(), "DVC fails on a missing dep: champion.json must be committed"


def test_the_closure_follows_imports_inside_functions(tmp_path):
    """A stage that imports a module only inside a function still depends on it."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "transferline").mkdir()
    (tmp_path / "serving").mkdir()
    (tmp_path / "stages" / "s.py").write_text("def main():\n    from serving import reg\n")
    (tmp_path / "serving" / "__init__.py").write_text('"""docstring only"""\n')
    (tmp_path / "serving" / "reg.py").write_text("import transferline.util\n")
    (tmp_path / "transferline" / "__init__.py").write_text("from transferline import util\n")
    (tmp_path / "transferline" / "util.py").write_text("X = 1\n")
    closure = {p.relative_to(tmp_path).as_posix() for p in import_closure(tmp_path / "stages" / "s.py", tmp_path)}
    # serving/__init__.py runs no code and is left out; transferline/__init__.py imports, so it counts
    assert closure == {"stages/s.py", "serving/reg.py", "transferline/__init__.py", "transferline/util.py"}


def test_the_committed_lock_records_the_committed_code_and_params():
    """Every git-tracked file a stage depends on (its code, the advisor's rule, the champion file, the
    metrics the gate reads) hashes in the working tree as dvc.lock records it: a change committed without
    `dvc repro` leaves a lock that describes other code, so `dvc repro` of the commit would not give its
    outputs back. Data deps are left to `dvc status`: a fresh checkout has not fetched them."""
    import hashlib
    import subprocess

    tracked = set(subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.split())
    lock = yaml.safe_load((PROJECT_ROOT / "dvc.lock").read_text())["stages"]
    checked, stale = 0, []
    for name, stage in lock.items():
        for dep in stage.get("deps", []):
            if dep["path"] not in tracked or "md5" not in dep:
                continue
            checked += 1
            if hashlib.md5((PROJECT_ROOT / dep["path"]).read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
    assert checked > 50  # the stages' code is tracked: an empty check would prove nothing
    assert not stale, f"dvc.lock records other contents for {stale}: run `dvc repro` and commit dvc.lock"
