"""The layout's promises, read from the source: no import loop between the project's modules,
and each layer imports only the layers below it (docs/ARCHITECTURE.md).

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a lazy import
hides a loop from Python, not from the reader.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "models", "experiments", "trainer", "service", "bench", "ccd")
# What each package must never import (besides loops, which no package may have).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "contracts": ("models", "experiments", "trainer", "service", "bench", "ccd"),
    "models": ("contracts", "experiments", "trainer", "service", "bench", "ccd"),
    "experiments": ("trainer", "service", "bench", "ccd"),
    "trainer": ("experiments", "service", "bench", "ccd"),
    "service": ("models", "experiments", "trainer", "bench", "ccd"),
    "bench": ("ccd",),
}


def module_name(path: Path) -> str:
    """``models/ccd/learner.py`` -> ``models.ccd.learner``; a package's ``__init__`` -> the package.

    >>> module_name(ROOT / "models" / "ccd" / "__init__.py")
    'models.ccd'
    """
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports: ``from a.b import c`` means ``a.b.c`` when that is
    a module, else ``a.b``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def test_no_import_loop() -> None:
    try:
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import loop: {' -> '.join(error.args[1])}")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_layers_below(package: str) -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module.split(".")[0] == package
        for target in sorted(targets)
        if target.split(".")[0] in FORBIDDEN[package]
    ]
    assert not wrong, "\n".join(wrong)
