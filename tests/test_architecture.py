"""The layout of docs/architecture.md, checked on the source: imports point one way (cli -> studies -> training ->
models -> layers, training -> data, survival a leaf), no import circle anywhere in src, covfuse imports at the top
of modules outside cli/ but for the lazy ones docs/developing.md lists, and cli/ uses only public names."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Sequence

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "covfuse"
# What each sub-package may import from covfuse (besides itself); `errors` and `io` (atomic
# writes) are torch-free leaf utilities.
LEAVES = {"errors", "io"}
ALLOWED = {
    "layers": set(),
    "survival": set(),
    "data": LEAVES | {"survival"},
    "models": LEAVES | {"layers", "survival"},
    "training": LEAVES | {"layers", "models", "data", "survival"},
    "studies": LEAVES | {"layers", "models", "data", "training", "survival"},
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
               "dataclasses", "functools", "itertools", "logging", "os", "statistics", "time",
               "hashlib", "json", "platform"}  # the standard library's, for autotune's on-disk cache
    for path in (PACKAGE / "layers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"


def _third_party_roots(path: Path) -> set[str]:
    """Top-level modules ``path`` imports (absolute imports, inside functions too)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_survival_imports_no_other_covfuse_package_and_only_torch_numpy_scipy():
    """covfuse.survival is the one home of the survival estimators, scores and Cox loss: every package may
    import it, so it imports nothing of covfuse outside itself (no relative imports either), and of third
    parties only torch, numpy and scipy."""
    paths = sorted((PACKAGE / "survival").rglob("*.py"))
    assert paths, "src/covfuse/survival/ is missing"
    allowed = {"torch", "numpy", "scipy", "__future__", "dataclasses", "typing", "math", "covfuse"}
    for path in paths:
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level], f"{path.name}: relative import"
        assert covfuse_imports(path) <= {"survival"}, f"{path.name} imports covfuse.{covfuse_imports(path) - {'survival'}}"
        assert _third_party_roots(path) <= allowed, f"{path.name} imports {_third_party_roots(path) - allowed}"


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


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """covfuse modules ``path`` imports, at module level or inside functions (a lazy import still ties
    two modules together), leaving out ``if TYPE_CHECKING:`` blocks (never run)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from covfuse.data import cache` imports the module covfuse.data.cache
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= subs or {node.module}
    return {m for m in found if m in modules}


def import_cycles(packages: Sequence[str]) -> list[list[str]]:
    """The import cycles among the modules of ``packages`` (strongly connected components of the
    import graph with more than one module, or a module importing itself)."""
    paths = {_module_name(p): p for pkg in packages for p in (PACKAGE / pkg).rglob("*.py")}
    graph = {m: _imported_modules(paths[m], set(paths)) - {m} for m in sorted(paths)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:  # Tarjan's algorithm
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in sorted(graph[m]):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while True:
                n = stack.pop()
                component.append(n)
                if n == m:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in graph:
        if m not in index:
            visit(m)
    return cycles


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The finder itself, on a made-up package: a -> b -> c -> a (one lazy import) and d -> a."""
    pkg = tmp_path / "covfuse" / "fake"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from covfuse.fake.b import x\n")
    (pkg / "b.py").write_text("from covfuse.fake import c\n")
    (pkg / "c.py").write_text("def f():\n    import covfuse.fake.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nfrom covfuse.fake.a import y\n"
                              "if TYPE_CHECKING:\n    from covfuse.fake.d import z\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "covfuse")
    assert import_cycles(["fake"]) == [["covfuse.fake.a", "covfuse.fake.b", "covfuse.fake.c"]]


@pytest.mark.parametrize("package", ["data", "cli", "survival"])
def test_no_import_cycles(package):
    assert import_cycles([package]) == []


SRC_PACKAGES = ["layers", "models", "data", "survival", "training", "studies", "bench"]
DEVELOPING = PACKAGE.parents[1] / "docs" / "developing.md"


def test_no_import_cycles_anywhere_in_src():
    """Tarjan over every module of src (cli included), imports inside functions counted."""
    assert import_cycles([*SRC_PACKAGES, "cli"]) == []


def listed_lazy_imports() -> set[tuple[str, str]]:
    """(module, imported module) pairs of docs/developing.md's table of imports kept inside functions."""
    text = DEVELOPING.read_text()
    section = text.split("## Imports inside functions", 1)[1].split("\n## ", 1)[0]
    pairs = set()
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and (cells[0] == "covfuse" or cells[0].startswith("covfuse.")):
            pairs.add((cells[0], cells[1]))
    return pairs


def function_level_imports() -> set[tuple[str, str]]:
    """(module, imported covfuse module) for every import of a covfuse module inside a function, outside cli/."""
    found = set()
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "covfuse":
                    # `from covfuse.data import cache` imports the module covfuse.data.cache
                    subs = {f"{node.module}.{a.name}" for a in node.names} & modules
                    found |= {(_module_name(path), m) for m in (subs or {node.module})}
                elif isinstance(node, ast.Import):
                    found |= {(_module_name(path), a.name) for a in node.names if a.name.startswith("covfuse")}
    return found


def test_imports_inside_functions_are_the_listed_lazy_ones():
    """Outside cli/, a covfuse import sits at the top of its module unless docs/developing.md lists it
    (each one keeps a heavy dependency off a path that must stay light)."""
    found = function_level_imports()
    listed = listed_lazy_imports()
    assert found - listed == set(), "import these at the top, or list them with a reason in docs/developing.md"
    assert listed - found == set(), "docs/developing.md lists lazy imports that no longer exist"


def test_cli_imports_no_private_name_of_another_package():
    offenders = []
    for path in (PACKAGE / "cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("covfuse.") \
                    and not node.module.startswith("covfuse.cli"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                module_private = [p for p in node.module.split(".") if p.startswith("_")]
                if private or module_private:
                    offenders.append(f"{path.name}: from {node.module} import {', '.join(a.name for a in node.names)}")
    assert offenders == []
