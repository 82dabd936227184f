"""The layering of transferline/ (see the layout in README.md): a lower package never imports a higher one.

search -> model -> data; evaluation -> data; every package -> the top-level config, atomic, errors,
cli and env. Checked statically on every import, including those inside functions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.imports import first_party_files, imported_modules, module_name

# package -> the transferline packages it must never import
FORBIDDEN = {
    "data": {"model", "search", "evaluation", "monitoring"},
    "model": {"search", "evaluation", "monitoring"},
    "evaluation": {"model", "search", "monitoring"},
    "search": {"evaluation", "monitoring"},
}
TOP_LEVEL = {"config", "atomic", "errors", "cli", "env"}


def transferline_package(module: str) -> str | None:
    """`data` for transferline.data.splits; None for modules outside transferline/."""
    parts = module.split(".")
    return parts[1] if parts[0] == "transferline" and len(parts) > 1 else None


def violations(package: str, root: Path = PROJECT_ROOT) -> list[str]:
    """Imports by transferline/<package>/ of a forbidden package, or of code outside transferline/."""
    found = []
    for path in first_party_files(f"transferline/{package}", root):
        for module in imported_modules(path, root):
            target = transferline_package(module)
            outside = module.split(".")[0] != "transferline"
            if outside or target in FORBIDDEN.get(package, set()):
                found.append(f"{path.relative_to(root)} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_package_never_imports_a_higher_one(package):
    found = violations(package)
    assert not found, "layering broken: " + "; ".join(found)


def test_the_top_level_modules_import_no_package():
    """config, atomic, errors, cli, env sit below everything: they import only each other."""
    found = []
    for name in sorted(TOP_LEVEL):
        path = PROJECT_ROOT / "transferline" / f"{name}.py"
        for module in imported_modules(path):
            if transferline_package(module) not in TOP_LEVEL:
                found.append(f"{path.relative_to(PROJECT_ROOT)} imports {module}")
    assert not found, "layering broken: " + "; ".join(found)


def test_the_rule_sees_a_violation(tmp_path):
    """The check itself: a data module importing the model package inside a function is caught."""
    (tmp_path / "transferline" / "data").mkdir(parents=True)
    (tmp_path / "transferline" / "model").mkdir()
    (tmp_path / "transferline" / "model" / "training.py").write_text("X = 1\n")
    bad = tmp_path / "transferline" / "data" / "bad.py"
    bad.write_text("def f():\n    from transferline.model import training\n")
    assert violations("data", tmp_path) == ["transferline/data/bad.py imports transferline.model.training"]
    assert violations("model", tmp_path) == []
    assert module_name(tmp_path / "transferline" / "data" / "bad.py", tmp_path) == "transferline.data.bad"
