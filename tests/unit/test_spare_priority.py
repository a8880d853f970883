"""Spares started while the job trains warm up below the trainers' priority, and are raised
back once warm or once they take a rank; a pool stopped while its trainers still start (a
Ctrl-C during a cluster's start) does not wait for them (``real.agent.trainer_processes``)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from running import SERVE_ATTEMPTS, stand_in_pool, wait_for

from real.agent import trainer_processes
from real.agent.trainer_processes import (
    BACKGROUND_NICENESS,
    TRAINER_NICENESS,
    TrainerPool,
    may_raise_priority,
)

# A stand-in trainer: reports "ready" once the file named by its first argument exists (its
# warm-up), then waits until the agent closes its socket or sends anything.
FAKE_TRAINER = """
import json, os, socket, sys, time
sock = socket.socket(fileno=int(os.environ["GEMINI_AGENT_FD"]))
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.01)
sock.sendall(json.dumps({"op": "ready"}).encode() + b"\\n")
sock.recv(1)
"""

# A stand-in for a standby node's trainers: one started at the trainers' priority is warm at
# once; a spare started in the background (below it) waits for the file, as the one that was
# still importing torch when its rank failed again. Assigned an attempt, a trainer says it
# resumed training there once the file named by its second argument exists (its restore).
STANDBY_TRAINER = (
    f"""
import json, os, socket, sys, time
sock = socket.socket(fileno=int(os.environ["GEMINI_AGENT_FD"]))
go, restored = sys.argv[1], sys.argv[2]
while os.nice(0) >= {BACKGROUND_NICENESS} and not os.path.exists(go):
    time.sleep(0.01)
sock.sendall(json.dumps({{"op": "ready"}}).encode() + b"\\n")
"""
    + SERVE_ATTEMPTS
)

needs_nice = pytest.mark.skipif(
    not may_raise_priority(), reason="raising a priority needs CAP_SYS_NICE or RLIMIT_NICE"
)


def niceness(pid: int) -> int:
    """The process's niceness, checked against its session's autogroup where there is one
    (with autogroups, the session's weight is what counts against other sessions)."""
    own = os.getpriority(os.PRIO_PROCESS, pid)
    autogroup = Path(f"/proc/{pid}/autogroup")
    if autogroup.exists():
        group = int(autogroup.read_text().split("nice")[1])
        return own if group == own else -100  # they disagree: no niceness matches
    return own


def pool(
    tmp_path: Path, go: Path, spares: str = "later", program: str = FAKE_TRAINER
) -> TrainerPool:
    return stand_in_pool(tmp_path, program, str(go), str(tmp_path / "restored"), spares=spares)


@needs_nice
def test_a_spare_started_while_training_warms_up_below_the_trainers(tmp_path: Path) -> None:
    go = tmp_path / "go"
    trainers = pool(tmp_path, go)
    try:
        active = trainers.active[0]
        trainers._top_up()  # what assign() does once the job trains
        (spare,) = trainers.spares[0]
        wait_for(lambda: niceness(spare.pid) == BACKGROUND_NICENESS)
        assert niceness(active.pid) == TRAINER_NICENESS
        go.touch()  # warm: it only waits from now on, at the trainers' priority
        wait_for(lambda: spare.state == "ready")
        assert niceness(spare.pid) == TRAINER_NICENESS
    finally:
        trainers.stop(grace_s=1.0)


@needs_nice
def test_a_spare_taking_a_rank_while_warming_up_is_raised_at_once(tmp_path: Path) -> None:
    go = tmp_path / "go"
    trainers = pool(tmp_path, go)
    try:
        trainers.slot = 0
        trainers._top_up()
        (spare,) = trainers.spares[0]
        wait_for(lambda: niceness(spare.pid) == BACKGROUND_NICENESS)
        trainers._retire(0)
        assert trainers._promote(0) is spare and spare.state == "starting"
        assert niceness(spare.pid) == TRAINER_NICENESS
    finally:
        go.touch()
        trainers.stop(grace_s=1.0)


@needs_nice
def test_a_standby_nodes_spares_warm_in_the_background_until_its_trainers_resume(
    tmp_path: Path,
) -> None:
    """A standby node that takes a lost node's slot raises its spares to the trainers'
    priority (they back ranks of the job from now on), but only once its trainers have
    restored: raised at the takeover, they took CPU from the recovery itself."""
    go = tmp_path / "go"
    trainers = pool(tmp_path, go, spares="background", program=STANDBY_TRAINER)
    try:
        (spare,) = trainers.spares[0]  # started with the node, not when it takes a slot
        assert trainers.wait_ready(20.0, spares=False)  # its active trainer is warm
        assert trainers.active[0].state == "ready" and spare.state == "starting"
        assert niceness(spare.pid) == BACKGROUND_NICENESS
        trainers.take_slot(3)  # a lost node's slot: the recovery begins
        assert trainers.rank(0) == 3
        trainers.assign(1, {})
        for _ in range(10):  # restoring: the agent polls on
            assert trainers.poll() == ({}, [])
            time.sleep(0.02)
        assert spare.state == "starting" and niceness(spare.pid) == BACKGROUND_NICENESS
        (tmp_path / "restored").touch()  # restored: the trainer says it trains again
        wait_for(lambda: trainers.active[0].resumed == 1)
        trainers.poll()
        assert niceness(spare.pid) == TRAINER_NICENESS
        assert trainers.wait_ready(20.0)  # and the stand-in, raised, warms up
    finally:
        trainers.stop(grace_s=1.0)


@needs_nice
def test_a_standby_nodes_spares_are_raised_after_a_bound_if_its_trainers_never_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer of the user's own that restores without our ``Checkpointer`` never says it
    resumed: its node's spares are raised ``SPARE_RAISE_BOUND_S`` after the takeover."""
    monkeypatch.setattr(trainer_processes, "SPARE_RAISE_BOUND_S", 0.3)
    trainers = pool(tmp_path, tmp_path / "go", spares="background", program=STANDBY_TRAINER)
    try:
        (spare,) = trainers.spares[0]
        assert trainers.wait_ready(20.0, spares=False)
        trainers.take_slot(0)
        trainers.assign(1, {})
        trainers.poll()
        assert niceness(spare.pid) == BACKGROUND_NICENESS
        time.sleep(0.4)
        trainers.poll()
        assert niceness(spare.pid) == TRAINER_NICENESS
    finally:
        trainers.stop(grace_s=1.0)


def test_a_pool_refuses_an_unknown_spares_mode_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    monkeypatch.setattr(TrainerPool, "_start", lambda self, *args, **kwargs: started.append(1))
    with pytest.raises(ValueError, match="spares"):
        pool(tmp_path, tmp_path / "go", spares="soon")
    assert started == []  # no trainer left behind


def test_a_stop_while_the_trainers_start_ends_the_wait_and_kills_them_at_once(
    tmp_path: Path,
) -> None:
    # Never warm (the stand-in waits for a file that never comes): what a trainer importing
    # torch looks like to its agent, which cannot read a "finish" yet.
    trainers = pool(tmp_path, tmp_path / "never")
    stop = threading.Event()
    stopper = threading.Timer(0.3, stop.set)
    try:
        (active,) = trainers.workers()
        stopper.start()
        began = time.monotonic()
        assert not trainers.wait_ready(120.0, stop)  # the stop ends the wait, not the timeout
        trainers.stop(grace_s=120.0)  # and the stop does not wait its grace for them
        assert time.monotonic() - began < 60.0
        assert active.exitcode() is not None
    finally:
        stopper.cancel()
        trainers.stop(grace_s=1.0)
