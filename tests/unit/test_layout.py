"""The rules between packages (DESIGN section 2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "shared": {"torch", "simpy", "sim", "real", "analysis", "gemini_ckpt", "matplotlib", "seaborn"},
    "analysis": {"sim", "real", "torch", "simpy"},
    "sim": {"real", "analysis", "torch"},
    "real": {"sim", "analysis", "simpy"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    if package == "shared":
        assert files, "shared/ must exist"
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in files
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert not offenders, f"{package}/ imports what it must not: {offenders}"


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import torch.nn\nfrom simpy import Environment\nfrom . import x\n")
    assert imported_packages(probe) == {"torch", "simpy"}
