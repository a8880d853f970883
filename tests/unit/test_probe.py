"""Probing a node agent, and the detector's use of it: a lost node is found when a survivor's
collective breaks, not when its lease expires; a node that is slow but answers is not lost."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from real.coord import keys
from real.coord.detector import FailureDetector
from real.coord.embedded_kv import EmbeddedKV
from real.coord.kvserver import KVServer
from real.coord.probe import ProbeServer, probe, probe_all

TOKEN = "a-job-secret-for-these-tests"


@pytest.fixture
def kv() -> Iterator[EmbeddedKV]:
    server = KVServer("127.0.0.1", 0, TOKEN).start()
    client = EmbeddedKV("127.0.0.1", server.port, namespace="p/", token=TOKEN)
    yield client
    client.close()
    server.stop()


def silent_server() -> tuple[socket.socket, str]:
    """Accepts connections (the kernel does, even for a stopped process) but never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    return server, f"127.0.0.1:{server.getsockname()[1]}"


def test_a_live_agent_answers_with_its_own_id() -> None:
    server = ProbeServer(7, "127.0.0.1")
    try:
        assert probe(server.address, 7, timeout_s=2.0)
        assert not probe(server.address, 8, timeout_s=2.0)  # someone else's address now
    finally:
        server.close()


def test_a_dead_agent_is_refused_at_once_and_a_silent_one_after_the_bound() -> None:
    gone = ProbeServer(1, "127.0.0.1")
    address = gone.address
    gone.close()
    started = time.monotonic()
    assert not probe(address, 1, timeout_s=5.0)
    assert time.monotonic() - started < 2.0  # refused: no waiting for the bound
    listener, silent = silent_server()
    try:
        started = time.monotonic()
        assert not probe(silent, 2, timeout_s=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        listener.close()


def test_a_slow_agent_that_answers_within_the_bound_is_alive() -> None:
    """An agent paused for less than the bound (SIGSTOP, a loaded machine) answers late."""
    listener, address = silent_server()

    def late_answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(16)
            time.sleep(0.3)
            connection.sendall(b"pong 4\n")

    thread = threading.Thread(target=late_answer, daemon=True)
    thread.start()
    try:
        assert probe_all({4: address}, timeout_s=2.0) == []
    finally:
        thread.join(5)
        listener.close()


def suspect(kv: EmbeddedKV, node: int, rank: int, at: float) -> None:
    value = {"node": node, "rank": rank, "error": "Connection reset by peer", "time": at}
    kv.put(keys.suspect_key(node, rank), keys.encode(value))


def test_a_broken_collective_makes_the_detector_probe(kv: EmbeddedKV) -> None:
    probed: list[list[int]] = []

    def prober(nodes: list[int]) -> list[int]:
        probed.append(sorted(nodes))
        return [2]

    detector = FailureDetector(kv, lease_timeout_s=60.0, expected_nodes=[0, 1, 2], prober=prober)
    for node in (0, 1, 2):
        kv.put(keys.node_key(node), keys.encode({"node": node, "time": time.time()}))
    assert detector.poll() == [] and probed == []  # nothing broke: no probe
    suspect(kv, 0, 0, time.time())
    found = detector.poll()
    assert probed == [[0, 1, 2]]
    assert [(d.kind, d.node, d.detected_by) for d in found] == [("hardware", 2, "probe")]
    assert detector.poll() == []  # reported once


def test_an_exit_is_reported_at_once_and_the_members_are_probed_on_a_thread(
    kv: EmbeddedKV,
) -> None:
    """A crash's detection does not wait for every agent's answer: the exit is reported by
    the poll that reads it while the probe of every member (still waiting at the gate) runs
    on a thread of its own; a node that probe finds lost is reported by a later poll, once."""
    prober = GatedProber({2})
    detector = FailureDetector(kv, lease_timeout_s=60.0, expected_nodes=[0, 1, 2], prober=prober)
    for node in (0, 1, 2):
        kv.put(keys.node_key(node), keys.encode({"node": node, "time": time.time()}))
    assert detector.poll() == [] and prober.probed == []
    crash = {"node": 1, "rank": 1, "exitcode": -9, "time": time.time(), "attempt": 1}
    kv.put(keys.exit_key(1, 1), keys.encode(crash))
    found = detector.poll()
    assert [(d.kind, d.node, d.detected_by) for d in found] == [("software", 1, "exit")]
    assert prober.probed == [[0, 1, 2]]
    assert prober.threads[0] is not threading.current_thread()
    again = {**crash, "node": 0, "rank": 0}
    kv.put(keys.exit_key(0, 0), keys.encode(again))
    assert [(d.node, d.detected_by) for d in detector.poll()] == [(0, "exit")]
    assert prober.probed == [[0, 1, 2]]  # one probe at a time
    prober.gate.set()
    prober.wait_returned()
    found = detector.poll()
    assert [(d.kind, d.node, d.detected_by) for d in found] == [("hardware", 2, "probe")]
    assert detector.expected_nodes == [0, 1]
    assert detector.poll() == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watching(kv: EmbeddedKV, clock: FakeClock, prober: Any, **options: Any) -> FailureDetector:
    """A detector of nodes 0-2 on the test's clock, with a lease (60 s) that never runs out
    within a test."""
    return FailureDetector(
        kv, lease_timeout_s=60.0, expected_nodes=[0, 1, 2], clock=clock, prober=prober, **options
    )


def answering_detector(kv: EmbeddedKV, clock: FakeClock, grace_s: float) -> FailureDetector:
    """A detector of nodes 0-2 whose agents all answer a probe (a hang, not a loss)."""
    return watching(kv, clock, lambda nodes: [], suspect_grace_s=grace_s)


def test_a_suspect_nothing_explains_is_a_failure_after_the_grace(kv: EmbeddedKV) -> None:
    """Every agent answers and no trainer exited: a peer hangs. After the grace the member
    that reported nothing (the hung trainer's node) is reported, so the job stops and the hung
    trainer is replaced."""
    clock = FakeClock()
    detector = answering_detector(kv, clock, grace_s=3.0)
    for node in (0, 1, 2):
        kv.put(keys.node_key(node), keys.encode({"node": node, "time": clock.now}))
    suspect(kv, 2, 2, clock.now)
    assert detector.poll() == []
    clock.now += 1.0
    suspect(kv, 0, 0, clock.now)
    clock.now += 1.9
    assert detector.poll() == []
    clock.now += 0.2
    found = detector.poll()
    assert [(d.kind, d.node, d.rank, d.detected_by) for d in found] == [
        ("software", 1, None, "suspect")
    ]
    assert detector.poll() == []


def test_a_hung_trainer_is_dated_from_before_its_peers_waited_out_their_collective(
    kv: EmbeddedKV,
) -> None:
    """Its peers report only once their collective has waited ``collective_timeout_s`` for it:
    the hang began at least that long before the first report, and its downtime counts that
    wait. A reporter standing for an unknown failure keeps the report's time."""
    clock = FakeClock()
    detector = watching(kv, clock, lambda nodes: [], suspect_grace_s=1.0, collective_timeout_s=30.0)
    reported = clock.now
    suspect(kv, 0, 0, reported)
    suspect(kv, 2, 2, reported + 0.2)
    assert detector.poll() == []
    clock.now += 1.5
    (hang,) = detector.poll()
    assert (hang.node, hang.detected_by) == (1, "suspect")
    assert hang.last_seen_at == reported - 30.0
    assert hang.latency_s == pytest.approx(31.5)


def test_a_hang_with_several_silent_members_is_the_first_reporters(kv: EmbeddedKV) -> None:
    clock = FakeClock()
    detector = answering_detector(kv, clock, grace_s=1.0)
    suspect(kv, 2, 2, clock.now)
    assert detector.poll() == []
    clock.now += 1.0
    (first,) = detector.poll()
    assert (first.node, first.rank, first.last_seen_at) == (2, 2, clock.now - 1.0)


def test_a_suspect_of_an_earlier_attempt_is_ignored(kv: EmbeddedKV) -> None:
    """A survivor whose collective broke only after the job was stopped reports a suspect of
    the attempt that is over: it must not stop the next one."""
    clock = FakeClock()
    detector = FailureDetector(
        kv, lease_timeout_s=60.0, clock=clock, prober=lambda nodes: [], suspect_grace_s=1.0
    )
    detector.attempt = 3
    late = {"node": 0, "rank": 0, "error": "timed out", "time": clock.now, "attempt": 2}
    kv.put(keys.suspect_key(0, 0), keys.encode(late))
    clock.now += 5.0
    assert detector.poll() == []
    current = {**late, "time": clock.now, "attempt": 3, "node": 1, "rank": 1}
    kv.put(keys.suspect_key(1, 1), keys.encode(current))
    assert detector.poll() == []  # within its grace
    clock.now += 1.0
    assert [(d.node, d.detected_by) for d in detector.poll()] == [(1, "suspect")]


class Heartbeats:
    """The nodes' heartbeat keys, written the way ``real.coord.heartbeat`` writes them."""

    def __init__(self, kv: EmbeddedKV, clock: FakeClock, nodes: list[int]) -> None:
        self.kv, self.clock, self.count = kv, clock, dict.fromkeys(nodes, 0)

    def beat(self, *nodes: int) -> None:
        for node in nodes:
            self.count[node] += 1
            value = {"node": node, "beat": self.count[node], "time": self.clock.now}
            self.kv.put(keys.node_key(node), keys.encode(value))


class GatedProber:
    """A prober whose probes end only when the test opens the gate; ``lost``: nodes that do
    not answer."""

    def __init__(self, lost: set[int]) -> None:
        self.lost, self.gate = lost, threading.Event()
        self.probed: list[list[int]] = []
        self.threads: list[threading.Thread] = []  # where each probe ran

    def __call__(self, nodes: list[int]) -> list[int]:
        self.probed.append(sorted(nodes))
        self.threads.append(threading.current_thread())
        self.gate.wait(10)
        return [n for n in nodes if n in self.lost]

    def wait_returned(self, timeout_s: float = 30.0) -> None:
        """Wait until every probe so far has returned and its silence-probe thread ended
        (its verdict is then ready for the detector's next poll), however slow the machine."""
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout_s)
                assert not thread.is_alive(), "a probe did not return"


def poll_until(detector: FailureDetector, timeout_s: float = 5.0) -> list[Any]:
    """Poll until something is found (a silence probe ends on its thread), or give up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = detector.poll()
        if found:
            return found
        time.sleep(0.01)
    return []


def beating(
    kv: EmbeddedKV, lost: set[int], *, answers_now: bool, **options: Any
) -> tuple[FakeClock, GatedProber, Heartbeats, FailureDetector]:
    """Nodes 0-2 after one beat each, seen by a detector's first poll. ``lost``: the nodes
    whose probe gets no answer; ``answers_now``: probes end at once (else at the gate)."""
    clock, prober = FakeClock(), GatedProber(lost)
    if answers_now:
        prober.gate.set()
    beats = Heartbeats(kv, clock, [0, 1, 2])
    detector = watching(kv, clock, prober, **options)
    beats.beat(0, 1, 2)
    assert detector.poll() == []
    return clock, prober, beats, detector


def test_a_silent_heartbeat_is_probed_on_a_thread_and_a_node_that_cannot_answer_is_lost(
    kv: EmbeddedKV,
) -> None:
    """Node 2's links went silent: no collective breaks, its lease has 60 s to run. Once its
    heartbeat stands still for silence_s it is probed, without holding up the polls, and
    found lost when the probe gets no answer."""
    clock, prober, beats, detector = beating(kv, {2}, answers_now=False, silence_s=1.0)
    last_beat_of_2 = clock.now
    for _ in range(2):
        clock.now += 0.5
        beats.beat(0, 1)
        assert detector.poll() == []
    assert prober.probed == [[2]]  # 1.0 s of silence: probed; 0 and 1 beat
    started = time.monotonic()
    assert detector.poll() == [] and detector.poll() == []
    assert time.monotonic() - started < 1.0  # the probe, still waiting, holds up no poll
    assert prober.probed == [[2]]  # and is not started twice
    prober.gate.set()
    found = poll_until(detector)
    assert [(d.kind, d.node, d.detected_by) for d in found] == [("hardware", 2, "silence")]
    assert found[0].last_seen_at == last_beat_of_2
    assert detector.expected_nodes == [0, 1]
    assert detector.poll() == []  # reported once


def test_a_silent_node_that_answers_is_not_lost_and_is_probed_again_after_as_long(
    kv: EmbeddedKV,
) -> None:
    """A loaded node whose beats are late answers its probe: not lost. It is probed again
    only after another silence_s, not at every poll."""
    clock, prober, beats, detector = beating(kv, set(), answers_now=True, silence_s=1.0)
    clock.now += 1.0
    beats.beat(0, 2)
    assert detector.poll() == [] and prober.probed == [[1]]
    prober.wait_returned()
    assert detector.poll() == []  # its verdict is read: it answered
    clock.now += 0.9
    beats.beat(0, 2)
    assert detector.poll() == [] and prober.probed == [[1]]
    clock.now += 0.1
    beats.beat(0, 2)
    assert detector.poll() == [] and prober.probed == [[1], [1]]
    prober.wait_returned()
    assert detector.poll() == []
    assert detector.expected_nodes == [0, 1, 2]


def test_a_node_that_beats_while_its_probe_waits_is_not_lost(kv: EmbeddedKV) -> None:
    """A node stopped (SIGSTOP) past the silence, resumed before the probe's verdict: the
    probe found no answer in time, but the beat that came meanwhile proves it alive."""
    clock, prober, beats, detector = beating(kv, {1}, answers_now=False, silence_s=1.0)
    clock.now += 1.0
    beats.beat(0, 2)
    detector.poll()
    assert prober.probed == [[1]]
    clock.now += 0.5
    beats.beat(0, 1, 2)
    assert detector.poll() == []
    prober.gate.set()
    prober.wait_returned()  # the probe's verdict (no answer) is ready
    assert detector.poll() == []  # but the beat that came meanwhile wins
    assert detector.expected_nodes == [0, 1, 2]


def test_without_silence_s_only_the_lease_finds_a_silent_node(kv: EmbeddedKV) -> None:
    clock, prober, beats, detector = beating(kv, {2}, answers_now=True)
    clock.now += 30.0
    beats.beat(0, 1)
    assert poll_until(detector, timeout_s=0.3) == [] and prober.probed == []
