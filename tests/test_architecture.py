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
    # triton ships with torch's CUDA builds; only layers/hybrid_triton.py imports it, behind a check
    allowed = {"torch", "triton", "importlib", "__future__", "contextlib", "contextvars", "typing", "math", "difflib", "covfuse", "collections",
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


# What training code may use of covfuse.data: the format-blind table, the dataset/cache factory, the
# reader dispatch, and the batch helpers. Every format lives in a reader or a decoder under data/.
FORMAT_BLIND = {"covfuse.data", "covfuse.data.table", "covfuse.data.samples", "covfuse.data.readers", "covfuse.data.survival",
                "covfuse.data.groups", "covfuse.data.dataset", "covfuse.data.transforms"}
FORMAT_WORDS = ("celeba", "nifti", ".nii", "dicom", ".tif", "jpeg", ".jpg", "bids", "participants")  # input formats


def _code_strings(tree: ast.AST) -> list[str]:
    """String constants of a module that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


@pytest.mark.parametrize("path", sorted((PACKAGE / "training").rglob("*.py")), ids=lambda p: p.name)
def test_training_code_names_no_file_format(path):
    tree = ast.parse(path.read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    data_modules = {m for m in modules if m.startswith("covfuse.data")}
    assert data_modules <= FORMAT_BLIND, f"{path.name} imports {sorted(data_modules - FORMAT_BLIND)}"
    named = [s for s in _code_strings(tree) for word in FORMAT_WORDS if word in s.lower()]
    assert named == [], f"{path.name} names a file format: {named}"
