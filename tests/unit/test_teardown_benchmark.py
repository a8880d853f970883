"""``benchmarks/teardown.py``: a killed process's connection timed to its close, nothing left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
from running import ends_with_its_owner, live_descendants

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


def test_a_spinner_ends_when_the_script_is_killed_outright() -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time, benchmarks.teardown as t\n"
            "with t.busy(1):\n"
            "    print('spinning', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert owner.stdout is not None
    owner.stdout.readline()  # the spinner runs
    (spinner,) = psutil.Process(owner.pid).children()
    assert ends_with_its_owner(owner, spinner.pid)
