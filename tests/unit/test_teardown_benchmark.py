"""``benchmarks/teardown.py``: a killed process's connection timed to its close, nothing left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
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


def _owner(code: str) -> tuple[subprocess.Popen[str], str]:
    """A script of ``code`` run from the repository, and the first line it prints."""
    owner = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert owner.stdout is not None
    return owner, owner.stdout.readline()


def test_a_spinner_ends_when_the_script_is_killed_outright() -> None:
    owner, _ = _owner(
        "import time, benchmarks.teardown as t\n"
        "with t.busy(1):\n"
        "    print('spinning', flush=True)\n"
        "    time.sleep(60)\n"
    )
    (spinner,) = psutil.Process(owner.pid).children()  # it runs
    assert ends_with_its_owner(owner, spinner.pid)


def test_the_slope_is_the_median_teardowns_difference_per_gib() -> None:
    times = {64: [0.010, 0.012, 0.030], 512: [0.041, 0.040, 0.050]}  # one late round each
    calls: list[int] = []

    def measure(size_mb: int) -> float:
        calls.append(size_mb)
        return times[size_mb][calls.count(size_mb) - 1]

    slope = teardown.seconds_per_gib(rounds=3, measure=measure)
    assert calls == [64, 64, 64, 512, 512, 512]
    assert slope == pytest.approx((0.041 - 0.012) * 1024 / 448)  # the medians'
    # Noise that reads a smaller teardown for more memory is no slope, not a negative one.
    assert teardown.seconds_per_gib((1, 2), 1, lambda mb: 0.01 / mb) == 0.0
    with pytest.raises(ValueError, match="small < large"):
        teardown.seconds_per_gib((64, 64))


def test_a_child_arms_its_own_end_with_no_preexec_fn() -> None:
    # The calibration times teardowns beside its threads, where ``preexec_fn`` is unsafe.
    owner, child = _owner(
        "import threading, time, benchmarks.teardown as t\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "child = t._owned('import time; time.sleep(60)')\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    assert ends_with_its_owner(owner, int(child))
