"""An emulated cluster whose owner was killed outright (SIGKILL: no teardown) leaves its network
namespaces, veth pairs and bridge; the next netns cluster to start removes them, and only
those whose owner is gone (``real.launcher.netns.sweep_orphans``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from real.launcher import netns


def _record(owners: Path, bridge: str, pid: int) -> None:
    owners.mkdir(parents=True, exist_ok=True)
    (owners / bridge).write_text(f"{pid} {netns._start_time(pid)}\n")


def test_only_the_set_ups_of_owners_gone_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    dead_pid = int(gone.stdout)
    owners = tmp_path / "owners"
    owners.mkdir()
    # The killed owner's record: its PID with the start time it had (any number: it is gone).
    (owners / "gkdead1").write_text(f"{dead_pid} 12345\n")
    _record(owners, "gklive1", os.getpid())  # a cluster still running: its owner is alive
    # A PID reused by another process: the start time tells them apart.
    (owners / "gkreuse").write_text(f"{os.getpid()} 1\n")
    calls: list[tuple[str, ...]] = []
    listed = "gkdead1-ctl (id: 3)\ngkdead1-n0 (id: 4)\ngklive1-n0 (id: 5)\ngkreuse-st\nother\n"

    def fake_ip(*args: str, check: bool = True) -> Any:
        calls.append(args)
        return SimpleNamespace(stdout=listed if args == ("netns", "list") else "")

    monkeypatch.setattr(netns, "ip", fake_ip)
    assert netns.sweep_orphans(owners) == ["gkdead1", "gkreuse"]
    deleted = [args for args in calls if args[-1] != "list"]
    assert deleted == [
        ("netns", "del", "gkdead1-ctl"),
        ("netns", "del", "gkdead1-n0"),
        ("link", "del", "gkdead1"),
        ("netns", "del", "gkreuse-st"),
        ("link", "del", "gkreuse"),
    ]
    assert sorted(p.name for p in owners.iterdir()) == ["gklive1"]


def test_no_record_no_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "ip", lambda *a, **k: pytest.fail("ip called"))
    assert netns.sweep_orphans(tmp_path / "none") == []
