"""``benchmarks/teardown.py``: a killed process's connection timed to its close, nothing left."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import psutil

REPO = Path(__file__).resolve().parents[2]


def _teardown() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "teardown_bench", REPO / "benchmarks" / "teardown.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["teardown_bench"] = module
    spec.loader.exec_module(module)
    return module


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def test_a_killed_childs_connection_is_timed_to_its_close_and_nothing_is_left() -> None:
    teardown = _teardown()
    before = _children()
    lines = teardown.table([4, 16], [1], rounds=2)
    assert len(lines) == 2
    assert lines[0].startswith("busy 1  resident     4 MiB  median ")
    assert "(range " in lines[1] and "2 rounds)" in lines[1]
    assert 0.0 < teardown.teardown_s(4) < 30.0
    assert _children() == before  # the children and the spinner are reaped


def test_a_spinner_ends_with_its_owner() -> None:
    teardown = _teardown()
    with teardown.busy(2):
        spinning = _children()
        assert len(spinning) == 2
        assert all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in spinning)
    assert not any(psutil.pid_exists(pid) for pid in spinning)
