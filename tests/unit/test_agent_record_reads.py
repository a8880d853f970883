"""A node agent reads the attempt record (a standby agent also its order) when its store watch
reports a change (and at least every ``RECORD_READ_S``), not on every pass of its loop; without
a watch, on every pass."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from real.agent import jobkeys, node_agent
from real.agent.node_agent import NodeAgent
from real.coord import keys


class RecordKV:
    """The agent's store client: the attempt record, and how often it was read."""

    def __init__(self) -> None:
        self.record = keys.encode({"attempt": 1, "state": "running"})
        self.reads = 0

    def get(self, key: str) -> bytes | None:
        assert key == jobkeys.ATTEMPT_KEY
        self.reads += 1
        return self.record


class WatchKV:
    """The watch thread's client: a change is announced by ``announce()``."""

    def __init__(self) -> None:
        self.revision = 1
        self.changed = threading.Event()

    def watch(self, prefixes: list[str], after: int | None, timeout_s: float) -> tuple[int, bool]:
        if after is None:
            return self.revision, False
        if self.changed.wait(timeout_s):
            self.changed.clear()
            return self.revision, True
        return after, False

    def announce(self) -> None:
        self.revision += 1
        self.changed.set()

    def close(self) -> None:
        pass


def agent(kv: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A NodeAgent (never run) whose loop applies records into a list."""
    made: Any = NodeAgent.__new__(NodeAgent)
    made.config = SimpleNamespace(parent_pid=None, node_id=3, kv_url="memory://")
    made.heartbeat = None
    made.kv = kv
    made.job_failed = False
    made.orphaned = False
    made.stopping = threading.Event()
    made.root_stop = threading.Event()
    made.wake = threading.Event()
    made.record_changed = threading.Event()
    made.record_changed.set()
    made.watching = False
    applied: list[dict[str, Any]] = []
    made._apply = lambda record: applied.append(record) or True
    made._watch_trainers = lambda record: None
    return made, applied


def stop(made: Any, threads: list[threading.Thread], watch: WatchKV | None = None) -> None:
    """End an agent's loop (and its watch thread) started by a test."""
    made.stopping.set()
    made.wake.set()
    if watch is not None:
        watch.changed.set()
    for thread in threads:
        thread.join(5)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def test_the_record_is_read_on_a_change_not_on_every_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kv, watch = RecordKV(), WatchKV()
    monkeypatch.setattr(node_agent, "connect_kv", lambda url: watch)
    # No safety read within the test, however slow the machine: only the watch makes reads.
    monkeypatch.setattr(node_agent, "RECORD_READ_S", 60.0)
    made, applied = agent(kv)
    threads = [
        threading.Thread(target=made._watch, args=([jobkeys.ATTEMPT_KEY],), daemon=True),
        threading.Thread(target=made._follow, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: made.watching and kv.reads >= 1)
        settled = kv.reads
        # Woken 20 times by something else (its trainers): no read of the store.
        for _ in range(20):
            made.wake.set()
            time.sleep(0.02)
        assert kv.reads - settled <= 1  # at most the read a fresh watch cursor asks for
        assert len(applied) > 20  # the loop ran, on the record it had
        kv.record = keys.encode({"attempt": 2, "state": "stopped"})
        watch.announce()
        wait_for(lambda: applied[-1]["attempt"] == 2)
    finally:
        stop(made, threads, watch)


def test_without_a_watch_the_record_is_read_on_every_pass() -> None:
    kv = RecordKV()
    made, applied = agent(kv)
    thread = threading.Thread(target=made._follow, daemon=True)
    thread.start()
    try:
        wait_for(lambda: kv.reads >= 1)
        for _ in range(10):
            made.wake.set()
            time.sleep(0.02)
        wait_for(lambda: kv.reads >= 5)
        assert kv.reads >= len(applied) - 1
    finally:
        stop(made, [thread])


class StandbyKV:
    """A standby agent's store client: its order, the attempt record, and the reads made."""

    def __init__(self, node_id: int) -> None:
        self.order_key = f"{jobkeys.REPLACEMENTS_PREFIX}{node_id}"
        self.values: dict[str, bytes] = {
            jobkeys.ATTEMPT_KEY: keys.encode(
                {"attempt": 1, "state": "running", "members": {"0": 0, "1": 1}}
            )
        }
        self.beating = {0, 1}  # the members whose heartbeat key is live
        self.reads = 0

    def get(self, key: str) -> bytes | None:
        assert key in (self.order_key, jobkeys.ATTEMPT_KEY)
        self.reads += 1
        return self.values.get(key)

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        assert prefix == keys.NODES_PREFIX
        return {keys.node_key(n): keys.encode({"beat": 1}) for n in self.beating}

    def put(self, key: str, value: bytes) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


LEASE_S = 0.1


def waiting_standby(
    kv: StandbyKV, watch: WatchKV | None
) -> tuple[Any, list[threading.Thread], list[bool]]:
    """A standby NodeAgent (never run) waiting for its slot, with or without a store watch."""
    made, _ = agent(kv)
    made.config = SimpleNamespace(
        parent_pid=None,
        node_id=5,
        kv_url="memory://",
        scenario=SimpleNamespace(detection=SimpleNamespace(lease_timeout_s=LEASE_S)),
    )
    made.slot = None
    made.members_gone = False
    took: list[bool] = []
    threads = [threading.Thread(target=lambda: took.append(made._wait_for_slot({})), daemon=True)]
    if watch is not None:
        prefixes = [jobkeys.ATTEMPT_KEY, jobkeys.REPLACEMENTS_PREFIX]
        threads.append(threading.Thread(target=made._watch, args=(prefixes,), daemon=True))
    for thread in threads:
        thread.start()
    return made, threads, took


def test_a_standby_reads_its_order_on_a_change_not_on_every_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kv, watch = StandbyKV(5), WatchKV()
    monkeypatch.setattr(node_agent, "connect_kv", lambda url: watch)
    monkeypatch.setattr(node_agent, "RECORD_READ_S", 60.0)  # no safety read within the test
    monkeypatch.setattr(node_agent, "STANDBY_POLL_S", 0.01)  # a pass every 10 ms
    made, threads, took = waiting_standby(kv, watch)
    try:
        wait_for(lambda: made.watching and kv.reads >= 2)
        settled = kv.reads
        time.sleep(0.3)  # some 30 passes
        assert kv.reads - settled <= 2  # at most the reads a fresh watch cursor asks for
        # The root's order comes due now: announced by the watch, read and taken at once.
        kv.values[kv.order_key] = keys.encode({"slot": 2, "ready_at": time.time()})
        watch.announce()
        wait_for(lambda: took == [True])
        assert made.slot == 2
    finally:
        stop(made, threads, watch)


def test_a_standby_without_a_watch_reads_on_every_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    kv = StandbyKV(5)
    monkeypatch.setattr(node_agent, "STANDBY_POLL_S", 0.01)
    made, threads, took = waiting_standby(kv, None)
    try:
        wait_for(lambda: kv.reads >= 20)  # two keys a pass: ten passes
        kv.values[jobkeys.ATTEMPT_KEY] = keys.encode({"attempt": 1, "state": "finished"})
        wait_for(lambda: took == [False])  # the job ended without it
    finally:
        stop(made, threads)


def test_a_standby_leaves_once_no_member_of_the_job_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every member agent gone (fenced, or lost with no root left): nobody will ever order
    this node into a slot, so the standby agent leaves, marked so (its exit status is 1),
    after MEMBERS_GONE_LEASES leases without a member's beat, not before."""
    kv = StandbyKV(5)
    monkeypatch.setattr(node_agent, "STANDBY_POLL_S", 0.01)
    made, threads, took = waiting_standby(kv, None)
    try:
        time.sleep(node_agent.MEMBERS_GONE_LEASES * LEASE_S * 2)
        assert took == []  # members beat: it waits on
        kv.beating = {7}  # a node that is no member of the job
        gone = time.monotonic()
        wait_for(lambda: took == [False])
        assert made.members_gone
        assert time.monotonic() - gone >= node_agent.MEMBERS_GONE_LEASES * LEASE_S
    finally:
        stop(made, threads)
