"""Every third-party module the shipped packages import is installed by `pip install transferline`.

The imports are collected statically from the source (function-level imports included: they run too),
so a module that works here only because a dev tool or another package happened to install it fails
this test, naming the module and the file that imports it.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_PACKAGES = ("transferline", "stages", "flows", "serving")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements() -> list[Requirement]:
    """The runtime dependencies of pyproject.toml (read from the file: the installed metadata may be older)."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def installed_closure(roots: list[Requirement]) -> set[str]:
    """Normalised names of the declared distributions and, recursively, of what they require on this
    platform (with the extras they were asked for)."""
    seen: set[str] = set()
    queue = [(normalized(r.name), frozenset(r.extras)) for r in roots]
    while queue:
        name, extras = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                queue.append((normalized(requirement.name), frozenset(requirement.extras)))
    return seen


def third_party_imports() -> dict[str, list[str]]:
    """Top-level third-party module -> the shipped files importing it."""
    ours = set(SHIPPED_PACKAGES)
    found: dict[str, list[str]] = {}
    for package in SHIPPED_PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ours and top != "__future__":
                        found.setdefault(top, []).append(str(path.relative_to(PROJECT_ROOT)))
    return found


def test_the_import_scan_sees_the_known_imports():
    imports = third_party_imports()
    assert {"numpy", "onnxruntime", "bentoml", "prefect", "ruamel", "httpx"} <= set(imports)
    assert "serving/service.py" in imports["bentoml"]


def test_every_third_party_import_of_the_shipped_packages_is_a_declared_runtime_dependency():
    provided = installed_closure(declared_requirements())
    distributions = metadata.packages_distributions()
    missing = []
    for module, files in sorted(third_party_imports().items()):
        owners = distributions.get(module, [])
        if not any(normalized(owner) in provided for owner in owners):
            what = ", ".join(owners) if owners else "no installed distribution"
            missing.append(f"{module} (from {what}; imported by {', '.join(sorted(set(files))[:3])})")
    assert not missing, "not provided by pyproject.toml's runtime dependencies: " + "; ".join(missing)


def test_the_dependency_walk_follows_requirements():
    closure = installed_closure([Requirement("prefect")])
    assert {"prefect", "httpx", "pydantic"} <= closure  # prefect requires both
    assert "pytest" not in closure
