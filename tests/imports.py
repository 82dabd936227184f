"""First-party imports of the project's modules, read statically with `ast` (nothing is imported or run).

Shared by tests/test_dvc_deps.py (each stage's dvc.yaml deps are its complete import closure) and
tests/test_layering.py (which package may import which). Every import counts, including those inside
functions: a stage that imports a module lazily still runs its code.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from tests.conftest import PROJECT_ROOT

FIRST_PARTY = ("transferline", "serving", "flows", "stages")


def module_file(module: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The file defining a dotted first-party module (a package means its __init__.py), if any."""
    if module.split(".")[0] not in FIRST_PARTY:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path, root: Path = PROJECT_ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imported_modules(path: Path, root: Path = PROJECT_ROOT) -> tuple[str, ...]:
    """Dotted names of the first-party modules `path` imports anywhere in its body (sorted, unique).

    `from a.b import c` names the module a.b.c when that is a module, else a.b (c is an attribute)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[: len(package) - node.level + 1]
                base = ".".join([*prefix, base] if base else prefix)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if module_file(submodule, root) else base)
    return tuple(sorted(name for name in found if module_file(name, root) is not None))


def is_trivial_package_init(path: Path) -> bool:
    """An __init__.py holding only a docstring and constant assignments: importing it runs no project code."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        return False
    return True


def import_closure(start: Path, root: Path = PROJECT_ROOT) -> set[Path]:
    """Every first-party file that running `start` may execute: its imports, theirs, and so on, plus the
    packages' __init__.py files on the way unless they are trivial (docstring and constants only)."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path, root):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):
                file = module_file(".".join(parts[:depth]), root)
                if file is not None and file not in seen:
                    todo.append(file)
    return {path for path in seen if path.name != "__init__.py" or not is_trivial_package_init(path)}


def first_party_files(package: str, root: Path = PROJECT_ROOT) -> list[Path]:
    return sorted(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)
