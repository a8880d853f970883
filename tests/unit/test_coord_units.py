"""Coordination pieces that need no server process: URL parsing, keys, the detector's
bookkeeping on an explicit clock, and election events (on the embedded store served in this
process)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from real.coord import heartbeat, keys
from real.coord.connect import connect_kv
from real.coord.detector import FailureDetector
from real.coord.election import Election
from real.coord.embedded_kv import EmbeddedKV
from real.coord.heartbeat import Heartbeat, report_exit
from real.coord.kv import parse_kv_url
from real.coord.kvserver import CLOCK_TICK_S, KVServer, StoreClock
from real.engine.eventlog import EventLog
from real.runtime.processes import free_port
from shared.errors import KVError
from shared.events import read_events

TOKEN = "a-job-secret-for-these-tests"


@pytest.fixture
def kv() -> Iterator[EmbeddedKV]:
    server = KVServer("127.0.0.1", 0, TOKEN).start()
    client = EmbeddedKV("127.0.0.1", server.port, namespace="t/", token=TOKEN)
    yield client
    client.close()
    server.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_store_clock_leaves_out_the_time_the_store_did_not_run() -> None:
    wall, monotonic = FakeClock(), FakeClock()
    clock = StoreClock(wall=wall, monotonic=monotonic)
    for _ in range(50):  # running: read every tick, it keeps the wall clock's time
        wall.now += CLOCK_TICK_S
        monotonic.now += CLOCK_TICK_S
        assert clock.now() == pytest.approx(wall.now)
    wall.now += 10.0  # stopped for 10 s: both clocks moved, nobody read
    monotonic.now += 10.0
    assert clock.now() == pytest.approx(wall.now - 10.0 + CLOCK_TICK_S)
    assert clock.unobserved_s == pytest.approx(10.0 - CLOCK_TICK_S)


def test_a_pause_of_the_whole_machine_fences_no_agent_a_pause_of_the_agent_alone_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store's clock and the agent's move 10 s at once (their machine paused): the lease
    (3 s) is alive on the store's clock and the agent goes on. Then the agent alone is silent
    for 10 s while the store runs: its lease has run out, and it fences itself."""
    wall, monotonic, agent = FakeClock(), FakeClock(), FakeClock()
    server = KVServer("127.0.0.1", 0, TOKEN)
    server.clock = StoreClock(wall=wall, monotonic=monotonic)
    server.start()
    client = EmbeddedKV("127.0.0.1", server.port, namespace="t/", token=TOKEN)
    monkeypatch.setattr(heartbeat, "time", SimpleNamespace(monotonic=agent, time=time.time))
    try:
        beat = Heartbeat(client, 0, interval_s=0.5, lease_timeout_s=3.0)
        beat._beat()
        for clock in (wall, monotonic, agent):
            clock.now += 10.0
        beat._beat()
        assert not beat.lease_lost
        assert client.get(keys.node_key(0)) is not None
        for _ in range(100):  # the store runs on, read every tick; the agent says nothing
            wall.now += CLOCK_TICK_S
            monotonic.now += CLOCK_TICK_S
            server.clock.now()
        assert client.get(keys.node_key(0)) is None
        agent.now += 10.0
        beat._beat()
        assert beat.lease_lost
    finally:
        client.close()
        server.stop()


def test_parse_kv_url() -> None:
    assert parse_kv_url("etcd://127.0.0.1:2379") == ("etcd", "127.0.0.1", 2379, "")
    assert parse_kv_url("tcpstore://localhost:9/job/7/") == ("tcpstore", "localhost", 9, "job/7/")
    with pytest.raises(
        ValueError, match=r"scheme must be etcd://, etcds:// \(TLS\) or tcpstore://"
    ):
        parse_kv_url("redis://127.0.0.1:1")
    with pytest.raises(ValueError, match="give a host and a port"):
        parse_kv_url("etcd://127.0.0.1")


@pytest.mark.parametrize("scheme", ["etcd", "tcpstore"])
def test_connect_to_nothing_says_what_to_do(scheme: str) -> None:
    with pytest.raises(KVError, match=r"127\.0\.0\.1"):
        connect_kv(f"{scheme}://127.0.0.1:{free_port()}", timeout_s=0.5, token=TOKEN)


def test_keys_roundtrip() -> None:
    assert keys.node_key(3) == "nodes/3"
    assert keys.exit_key(1, 6) == "exits/1/6"
    assert keys.decode(keys.encode({"b": 1, "a": [2]})) == {"a": [2], "b": 1}
    with pytest.raises(ValueError, match="JSON object"):
        keys.decode(b"[1]")


def test_reserved_keys_are_refused(kv: EmbeddedKV) -> None:
    with pytest.raises(ValueError, match="must not start with '__'"):
        kv.put("__lease__/1", b"x")


def test_node_that_never_comes_up_is_lost_after_one_lease_timeout(kv: EmbeddedKV) -> None:
    clock = FakeClock()
    detector = FailureDetector(kv, lease_timeout_s=3.0, expected_nodes=[0, 1], clock=clock)
    kv.put(keys.node_key(0), keys.encode({"node": 0, "time": clock.now}))
    clock.now += 2.9
    assert detector.poll() == []
    clock.now += 0.2
    found = detector.poll()
    assert [(d.kind, d.node) for d in found] == [("hardware", 1)]
    assert found[0].latency_s == pytest.approx(3.1)
    assert detector.expected_nodes == [0]


def test_a_poll_reads_the_store_once(kv: EmbeddedKV, monkeypatch: pytest.MonkeyPatch) -> None:
    # One read of the three prefixes per poll (on etcd one transaction), whatever it finds.
    reads: list[tuple[str, ...]] = []
    single: list[str] = []
    many, one = kv.get_prefixes, kv.get_prefix
    inside = [False]

    def get_prefixes(prefixes: list[str]) -> dict[str, dict[str, bytes]]:
        reads.append(tuple(prefixes))
        inside[0] = True
        try:
            return many(prefixes)
        finally:
            inside[0] = False

    def get_prefix(prefix: str) -> dict[str, bytes]:
        if not inside[0]:
            single.append(prefix)
        return one(prefix)

    monkeypatch.setattr(kv, "get_prefixes", get_prefixes)
    monkeypatch.setattr(kv, "get_prefix", get_prefix)
    clock = FakeClock()
    detector = FailureDetector(kv, lease_timeout_s=3.0, expected_nodes=[0], clock=clock)
    report_exit(kv, node=0, rank=1, exitcode=-9)
    kv.put(keys.node_key(0), keys.encode({"node": 0, "time": clock.now}))
    found = detector.poll()
    assert [(d.kind, d.node, d.rank) for d in found] == [("software", 0, 1)]
    assert detector.poll() == []
    assert reads == [(keys.NODES_PREFIX, keys.EXITS_PREFIX, keys.SUSPECTS_PREFIX)] * 2
    assert single == []


def test_ignored_exits_are_never_reported(kv: EmbeddedKV) -> None:
    detector = FailureDetector(kv, lease_timeout_s=3.0)
    detector.ignore_exits(1)
    report_exit(kv, node=1, rank=2, exitcode=-15)
    assert detector.poll() == []
    detector.ignore_exits(1, False)
    assert detector.poll() == []  # the exit seen while ignored stays handled
    report_exit(kv, node=1, rank=2, exitcode=1)  # a new exit of the same rank is reported
    assert [(d.rank, d.exitcode) for d in detector.poll()] == [(2, 1)]


def test_election_records_root_elected(kv: EmbeddedKV, tmp_path: Path) -> None:
    log = EventLog(tmp_path / "agent0.jsonl", t0=time.time(), node=0)
    changes: list[bool] = []
    election = Election(kv, 0, ttl_s=1.0, poll_s=0.05, events=log, on_change=changes.append)
    try:
        assert election.campaign(timeout_s=5.0)
        assert election.leader() == 0
    finally:
        election.resign()
        log.close()
    assert changes == [True, False]
    assert kv.get(keys.LEADER_KEY) is None
    events = read_events(tmp_path / "agent0.jsonl")
    assert [(e.kind, e.node) for e in events] == [("root_elected", 0)]
    assert events[0].details["previous"] is None


def test_election_rejects_bad_timing(kv: EmbeddedKV) -> None:
    with pytest.raises(ValueError, match="poll_s"):
        Election(kv, 0, ttl_s=1.0, poll_s=2.0)
    with pytest.raises(ValueError, match="hold_s"):
        Election(kv, 0, ttl_s=1.0, hold_s=-1.0)


def test_a_holding_candidate_up_first_leaves_the_first_root_to_the_preferred_one(
    kv: EmbeddedKV,
) -> None:
    # node 3's agent is up first; node 0's (the job's first root) only 0.3 s later
    hold_s = 10.0
    late = Election(kv, 3, ttl_s=1.0, poll_s=0.05, hold_s=hold_s)
    first = Election(kv, 0, ttl_s=1.0, poll_s=0.05)
    try:
        held_from = time.monotonic()
        late.campaign(0)
        time.sleep(0.3)
        assert kv.get(keys.LEADER_KEY) is None  # held back: nobody leads yet
        assert first.campaign(timeout_s=5.0)
        time.sleep(0.2)
        assert not late.is_leader() and late.leader() == 0
        # once it has seen a leader it is an ordinary candidate: the next root when 0 resigns,
        # within a few polls (3 s: room for a slow machine), long before its hold would end
        first.resign()
        assert late.campaign(timeout_s=3.0)
        assert time.monotonic() - held_from < hold_s - 2.0, "won only as its hold ran out"
    finally:
        first.resign()
        late.resign()


def test_a_holding_candidate_leads_when_the_preferred_one_never_comes(kv: EmbeddedKV) -> None:
    late = Election(kv, 3, ttl_s=1.0, poll_s=0.05, hold_s=0.5)
    try:
        started = time.monotonic()
        assert late.campaign(timeout_s=5.0)
        assert time.monotonic() - started >= 0.5
    finally:
        late.resign()


def test_a_closed_client_says_so(kv: EmbeddedKV) -> None:
    kv.put("k", b"v")
    kv.close()
    with pytest.raises(KVError, match="closed"):
        kv.get("k")


def test_a_broken_connection_fails_one_call_and_the_next_one_reconnects(kv: EmbeddedKV) -> None:
    kv.put("k", b"v")
    kv._store.sock.shutdown(socket.SHUT_RDWR)  # as if the network dropped mid-request
    with pytest.raises(KVError, match="failed"):
        kv.get("k")
    assert kv.get("k") == b"v"  # a fresh, authenticated connection; no stale reply read


def test_only_a_refused_connection_proves_a_process_gone() -> None:
    """``refuses``: a port nobody listens on proves the listener gone; a listening one (even
    one that never answers) does not."""
    from real.coord.probe import refuses

    with socket.create_server(("127.0.0.1", 0)) as listening:
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        assert not refuses(address, 1.0)
    assert refuses(address, 1.0)  # closed now: refused
    assert not refuses("not-an-address", 1.0)


def test_a_malformed_guarded_write_is_refused_and_writes_nothing(kv: EmbeddedKV) -> None:
    """The server's ``guarded_set`` and ``guarded_delete`` check their request before they
    act: a guard that is not a key, an expected value that is empty or longer than the
    request, a prefix flag that is not a boolean, end the connection (the client's next call
    connects anew) and change nothing; nor does the client delete the leases' records."""
    kv.put("guard", b"me")
    raw = kv._read("t/guard")
    assert raw is not None
    for fields in (
        {"guard": 7, "expected_bytes": len(raw)},
        {"guard": "t/guard", "expected_bytes": 0},
        {"guard": "t/guard", "expected_bytes": len(raw) + 10},
    ):
        with pytest.raises(KVError, match="guarded_set"):
            kv._call("guarded_set", "t/order", raw + b"0::x", **fields)
        assert kv.get("order") is None
    kv.put("exits/a", b"x")
    malformed: list[dict[str, object]] = [
        {"guard": "t/guard", "prefix": "yes"},
        {"guard": None, "prefix": True},
    ]
    for bad in malformed:
        with pytest.raises(KVError, match="guarded_delete"):
            kv._call("guarded_delete", "t/exits/", raw, **bad)
        assert kv.get("exits/a") == b"x"
    with pytest.raises(KVError, match="guarded_delete"):
        kv._call("guarded_delete", "t/exits/", b"", guard="t/guard", prefix=True)
    with pytest.raises(ValueError, match="must not start with '__'"):
        kv.delete_guarded("__lease__/", "guard", b"me", prefix=True)
    assert kv.put_guarded("order", b"1", "guard", b"me")
    assert kv.get("order") == b"1"
    assert kv.delete_guarded("exits/", "guard", b"me", prefix=True)
    assert kv.get("exits/a") is None
