"""``benchmarks/teardown.py``: a killed process's connection timed to its close, nothing left."""

from __future__ import annotations

import psutil
from running import live_descendants

import benchmarks.teardown as teardown


def test_a_killed_childs_connection_is_timed_to_its_close_and_nothing_is_left() -> None:
    before = live_descendants()
    lines = teardown.table([4, 16], [1], rounds=2)
    assert len(lines) == 2
    assert lines[0].startswith("busy 1  resident     4 MiB  median ")
    assert "(range " in lines[1] and "2 rounds)" in lines[1]
    assert 0.0 < teardown.teardown_s(4) < 30.0
    assert live_descendants() == before  # the children and the spinner are reaped


def test_a_spinner_ends_with_its_owner() -> None:
    with teardown.busy(2):
        spinning = live_descendants()
        assert len(spinning) == 2
    assert not any(psutil.pid_exists(pid) for pid, _ in spinning)
