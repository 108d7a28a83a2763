"""The dependency direction of ARCHITECTURE.md, checked on the source: cli -> studies -> training -> models -> layers."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "covfuse"
# What each sub-package may import from covfuse (besides itself); `errors` and `io` (atomic
# writes) are torch-free leaf utilities.
LEAVES = {"errors", "io"}
ALLOWED = {
    "layers": set(),
    "data": LEAVES,
    "models": LEAVES | {"layers"},
    "training": LEAVES | {"layers", "models", "data"},
    "studies": LEAVES | {"layers", "models", "data", "training"},
}


def covfuse_imports(path: Path) -> set[str]:
    """Sub-packages of covfuse imported by the module at ``path`` (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "covfuse" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package):
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(covfuse_imports(path) - ALLOWED[package] - {package})
        for path in (PACKAGE / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_layers_import_only_torch_from_third_parties():
    allowed = {"torch", "__future__", "contextlib", "contextvars", "typing", "math", "difflib", "covfuse", "collections",
               "dataclasses", "functools", "itertools", "logging", "os", "statistics", "time"}
    for path in (PACKAGE / "layers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"
