"""What our processes hold per node: a process's resident memory read from /proc, the agents'
``node_memory`` events summarised, and the report's table of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from analysis.report import memory_table
from real.launcher.results import node_memory
from real.runtime.processes import resident_bytes
from shared.events import Event

MB = 1 << 20


def test_resident_bytes_grow_with_the_pages_a_process_touches() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; block = bytearray(64 << 20); block[::4096] = b'x' * (16384);"
            " print('ready', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        held = resident_bytes(child.pid)
        mine = resident_bytes(os.getpid())
        assert held is not None and mine is not None
        assert held["anon"] >= 64 * MB  # the bytearray's pages, every one touched
        assert held["file"] > 0 and held["shmem"] >= 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert resident_bytes(child.pid) is None  # reaped: gone


def entry(anon_mb: int, file_mb: int) -> dict[str, int]:
    return {"anon": anon_mb * MB, "file": file_mb * MB, "shmem": 7 * MB}


def test_the_summary_takes_medians_over_nodes_and_the_largest_spare() -> None:
    reports = [
        Event(
            1.0,
            "node_memory",
            node=n,
            details={"agent": entry(a, 100), "store": entry(s, 40), "spares": spares},
        )
        for n, a, s, spares in (
            (0, 90, 30, [entry(200, 150)]),
            (1, 100, 31, [entry(210, 150), entry(20, 30)]),  # one still starting
            (2, 130, 50, []),
        )
    ]
    trainers = [
        Event(0.9, "trainer_memory", node=n, rank=n, details=entry(a, 120))
        for n, a in ((0, 300), (1, 340), (2, 310))
    ]
    other = Event(0.5, "iteration_end", node=0, details={"duration_s": 0.1})
    footprint = node_memory([other, *trainers, *reports])
    assert footprint == {
        "nodes": 3,
        "agent": {"anon": 100 * MB, "file": 100 * MB},
        "store": {"anon": 31 * MB, "file": 40 * MB},
        "spare": {"anon": 210 * MB, "file": 150 * MB},
        "spares_per_node": 1,
        "trainer": {"anon": 310 * MB, "file": 120 * MB},  # the median over the ranks
    }
    assert "trainer" not in node_memory([other, *reports])  # type: ignore[operator]
    assert node_memory([other]) is None  # nothing reported (the simulator)
    gone = Event(1.0, "node_memory", node=3, details={"agent": None, "spares": []})
    assert node_memory([gone]) == {"nodes": 1}
    # A trainer alone (its node's agent gone before it reported) still says what it held.
    alone = node_memory(trainers[:1])
    assert alone == {"nodes": 0, "trainer": {"anon": 300 * MB, "file": 120 * MB}}


def test_the_report_lists_the_runs_that_measured_it(tmp_path: Path) -> None:
    def run(label: str, extra: dict[str, Any]) -> Any:
        summary = SimpleNamespace(extra=extra, checkpoint_memory_bytes=46e6)
        return SimpleNamespace(label=label, summary=summary, path=tmp_path / label)

    footprint = {
        "nodes": 4,
        "agent": {"anon": 120e6, "file": 130e6},
        "store": {"anon": 30e6, "file": 40e6},
        "spares_per_node": 1,
        "trainer": {"anon": 310e6, "file": 125e6},
    }
    table = memory_table([run("sim-gemini", {}), run("real-gemini", {"node_memory": footprint})])
    assert table is not None
    assert [row[0] for row in table.rows] == ["real-gemini"]
    assert table.rows[0][1:] == [
        "4",
        "120.0 MB + 130.0 MB",
        "30.0 MB + 40.0 MB",
        "-",
        "1",
        "310.0 MB + 125.0 MB",
        "46.0 MB",
    ]
    assert memory_table([run("sim-gemini", {})]) is None
