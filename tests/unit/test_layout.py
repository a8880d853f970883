"""The rules between packages and modules (docs/design.md, "Layers").

Two rules, both read from the source with :mod:`ast` (nothing is imported):

- **layers**: each top-level package imports only the packages below it. ``shared`` is the
  bottom (no torch, no simpy, nothing of ours); ``sim``, ``real`` and ``analysis`` sit on it and
  never import each other's face, the benchmarks or the CLI; ``benchmarks`` (scripts, and the
  measurements behind ``gemini-ckpt bench`` and ``calibrate``) and ``gemini_ckpt`` (the CLI and
  the public API) sit on top.
- **no cycles**: no module imports, directly or through others, a module that imports it. Every
  import counts, also one inside a function or under ``TYPE_CHECKING``: a cycle hidden that way
  is still two modules that cannot be understood one without the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "sim", "real", "analysis", "benchmarks", "gemini_ckpt")
FORBIDDEN = {
    "shared": {
        "torch",
        "simpy",
        "sim",
        "real",
        "analysis",
        "benchmarks",
        "gemini_ckpt",
        "matplotlib",
        "seaborn",
    },
    "analysis": {"sim", "real", "torch", "simpy", "benchmarks", "gemini_ckpt"},
    "sim": {"real", "analysis", "torch", "benchmarks", "gemini_ckpt"},
    "real": {"sim", "analysis", "simpy", "benchmarks", "gemini_ckpt"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level names of every absolute import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = REPO) -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def imported_modules(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """The project modules ``path`` (module ``name``) imports: ``from a.b import c`` names
    ``a.b.c`` when that is a module, else ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                if child in known:
                    yield child
                elif base in known:
                    yield base


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    return {
        name: {target for target in imported_modules(path, name, known) if target != name}
        for name, path in found.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative, so that a long chain of imports cannot exhaust the recursion limit.
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"{package}/ must exist"
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in files
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, f"{package}/ imports what it must not: {offenders}"


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == [], "modules that import each other, directly or not"


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import torch.nn\nfrom simpy import Environment\nfrom . import x\n")
    assert imported_packages(probe) == {"torch", "simpy"}


def test_the_cycle_checker_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from pkg import c\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
    )
    (package / "d.py").write_text("from . import a\n")
    found = {module_name(path, tmp_path): path for path in sorted(package.rglob("*.py"))}
    graph = {
        name: set(imported_modules(path, name, set(found))) - {name} for name, path in found.items()
    }
    assert graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
