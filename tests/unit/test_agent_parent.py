"""A node agent started with ``--parent-pid`` leaves once its launcher is gone, whatever it is
doing: also while its node starts (store, warm trainers: seconds). It used to look only between
passes of its main loop, so an agent whose launcher was killed during start-up lived on for
about 30 s and went on starting trainers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from types import SimpleNamespace
from typing import Any

from real.agent.node_agent import PARENT_POLL_S, NodeAgent


def agent() -> Any:
    """A NodeAgent (never run) with what its parent watch uses."""
    made: Any = NodeAgent.__new__(NodeAgent)
    made.config = SimpleNamespace(node_id=3)
    made.stopping, made.wake, made.orphaned = threading.Event(), threading.Event(), False
    made.root_stop = threading.Event()
    return made


def test_an_agent_stops_once_its_launcher_is_gone() -> None:
    launcher = subprocess.Popen([sys.executable, "-c", "pass"])
    launcher.wait()  # gone (and reaped)
    made = agent()
    watch = threading.Thread(target=made._follow_parent, args=(launcher.pid,))
    watch.start()
    watch.join(10 * PARENT_POLL_S)
    assert not watch.is_alive()
    assert made.orphaned and made.stopping.is_set() and made.wake.is_set()
    assert made.root_stop.is_set()


def test_an_agent_whose_launcher_runs_is_left_alone() -> None:
    made = agent()
    watch = threading.Thread(target=made._follow_parent, args=(os.getpid(),))
    watch.start()
    watch.join(3 * PARENT_POLL_S)
    assert watch.is_alive() and not made.stopping.is_set() and not made.orphaned
    made.stopping.set()  # the agent stops for another reason: the watch ends with it
    watch.join(2 * PARENT_POLL_S)
    assert not watch.is_alive() and not made.orphaned


def test_an_agent_left_by_its_launcher_exits_1() -> None:
    made = agent()
    made.kv, made.config.parent_pid = object(), None
    made.orphaned = True
    made.stop()  # as the parent watch stops it: the main loop ends before its own check
    assert made._follow() == 1
    made.orphaned = False  # stopped otherwise (SIGTERM): 0
    assert made._follow() == 0
