"""Every ``GEMINI_*`` environment variable the project mentions is named in
``real/runtime/env.py``, so that one file lists them all."""

from __future__ import annotations

import re
from pathlib import Path

from real.runtime import env

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("shared", "sim", "real", "analysis", "benchmarks", "gemini_ckpt", "examples", "docs")


def mentioned() -> dict[str, str]:
    """Each variable mentioned in code or docs, with one file that mentions it."""
    found: dict[str, str] = {}
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix in (".py", ".md", ".sh") and path.is_file():
                for name in re.findall(r"\bGEMINI_[A-Z0-9_]+", path.read_text(encoding="utf-8")):
                    found.setdefault(name.rstrip("_"), str(path.relative_to(REPO)))
    return found


def test_every_variable_is_named_in_env() -> None:
    unnamed = {name: where for name, where in mentioned().items() if name not in env.ALL}
    assert unnamed == {}, "add them to real/runtime/env.py, with what they mean"


def test_each_constant_is_its_own_name() -> None:
    constants = {n: v for n, v in vars(env).items() if n.startswith("GEMINI_")}
    assert constants and all(name == value for name, value in constants.items())
    assert set(env.ALL) == set(constants.values())
