"""The coordination layer against both store backends, each in its own real server process.

Every test runs twice: on the embedded store (``python -m real.coord.kvserver``, with
emulated leases) and on etcd (Debian's etcd-server over its HTTP gateway; skipped
when the ``etcd`` binary is absent). One server per backend serves the whole module; each test
gets its own key namespace, so tests cannot see each other's keys.

Timing bounds are asserted, not slept: every wait polls with a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from running import ends_with_its_owner

from real.coord import keys
from real.coord.connect import connect_kv
from real.coord.detector import FailureDetector
from real.coord.election import Election
from real.coord.etcd_server import EtcdServer, etcd_binary
from real.coord.heartbeat import Heartbeat, report_exit
from real.coord.kv import KeyValueStore
from real.coord.kvserver import StoreServer
from shared.errors import KVError

TTL_S = 1.0
# How long after its TTL an unrefreshed key may linger: etcd checks expiries every ~0.5 s.
EXPIRY_SLACK_S = {"embedded": 0.3, "etcd": 0.8}
ETCD_MISSING = "etcd binary absent: install Debian's etcd-server (GEMINI_SETUP_APT=1 ./setup.sh)"


@pytest.fixture(scope="module", params=["embedded", "etcd"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(backend name, store URL) of a server that lives for the module; the job's secret is
    in ``GEMINI_TOKEN``, as the agents have it (etcd with a user and password, the embedded
    store with its challenge-response)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GEMINI_TOKEN", uuid.uuid4().hex)
        if request.param == "etcd":
            if etcd_binary() is None:
                pytest.skip(ETCD_MISSING)
            with EtcdServer() as etcd:
                yield "etcd", etcd.url
        else:
            with StoreServer() as server:
                yield "embedded", server.url


@pytest.fixture
def make_kv(backend: tuple[str, str]) -> Iterator[Callable[[], KeyValueStore]]:
    """Opens clients in one fresh namespace; closes them all at the end of the test."""
    namespace = uuid.uuid4().hex[:12]
    clients: list[KeyValueStore] = []

    def make() -> KeyValueStore:
        client = connect_kv(f"{backend[1]}/{namespace}")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def kv(make_kv: Callable[[], KeyValueStore]) -> KeyValueStore:
    return make_kv()


@pytest.fixture
def slack_s(backend: tuple[str, str]) -> float:
    return EXPIRY_SLACK_S[backend[0]]


def wait_until(condition: Callable[[], bool], timeout_s: float, period_s: float = 0.02) -> float:
    """Poll until ``condition()``; returns the seconds it took. Fails the test on timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(period_s)
    return time.monotonic() - start


# -- the key-value contract --


def test_put_get_delete_and_prefixes(kv: KeyValueStore) -> None:
    assert kv.get("a/1") is None
    kv.put("a/1", b"one")
    kv.put("a/2", b"\x00\xff binary")
    kv.put("a2", b"not under a/")
    kv.put("b/1", b"other")
    assert kv.get("a/1") == b"one"
    assert kv.get_prefix("a/") == {"a/1": b"one", "a/2": b"\x00\xff binary"}
    kv.put("a/1", b"uno")
    assert kv.get("a/1") == b"uno"
    assert kv.delete("a/1") == 1
    assert kv.delete("a/1") == 0
    assert kv.get("a/1") is None
    assert kv.delete("a/", prefix=True) == 1
    assert kv.get_prefix("a") == {"a2": b"not under a/"}
    assert kv.get_prefix("nothing/") == {}


def test_several_prefixes_read_at_once_equal_each_read_alone(kv: KeyValueStore) -> None:
    kv.put("nodes/1", b"beat")
    kv.put("exits/1/2", b"crash")
    kv.put("exits/3/0", b"crash")
    kv.put("other", b"x")
    prefixes = ["nodes/", "exits/", "suspects/"]
    assert kv.get_prefixes(prefixes) == {p: kv.get_prefix(p) for p in prefixes}
    assert kv.get_prefixes(prefixes)["suspects/"] == {}
    assert kv.get_prefixes(["exits/"]) == {"exits/": kv.get_prefix("exits/")}


def test_namespaces_do_not_see_each_other(backend: tuple[str, str]) -> None:
    with connect_kv(f"{backend[1]}/left") as left, connect_kv(f"{backend[1]}/right") as right:
        left.put("k", b"L")
        assert right.get("k") is None
        assert right.create("k", b"R")
        assert (left.get("k"), right.get("k")) == (b"L", b"R")
        left.delete("", prefix=True)
        right.delete("", prefix=True)


def test_create_race_has_exactly_one_winner(make_kv: Callable[[], KeyValueStore]) -> None:
    clients = [make_kv(), make_kv()]
    wins: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def race(index: int) -> None:
        barrier.wait()
        for key in range(20):
            if clients[index].create(f"race/{key}", f"client{index}".encode()):
                wins[index].append(f"race/{key}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(wins[0] + wins[1]) == sorted(f"race/{key}" for key in range(20))
    assert not set(wins[0]) & set(wins[1])
    for index, won in enumerate(wins):
        for key in won:
            assert clients[0].get(key) == f"client{index}".encode()


def test_replace_writes_only_over_the_value_it_expects(
    make_kv: Callable[[], KeyValueStore],
) -> None:
    """The root's writes of the attempt record: a writer that read a value writes its change
    only if nobody wrote since; of two that read the same value, one wins."""
    kv = make_kv()
    assert kv.replace("cas/a", None, b"1")
    assert not kv.replace("cas/a", None, b"2")  # there already
    assert not kv.replace("cas/a", b"0", b"2")  # it holds another value
    assert kv.get("cas/a") == b"1"
    assert kv.replace("cas/a", b"1", b"2")
    assert not kv.replace("cas/a", b"1", b"3")  # a second writer that read "1" too
    assert kv.get("cas/a") == b"2"
    assert not kv.replace("cas/missing", b"1", b"2")
    assert kv.get("cas/missing") is None
    clients = [make_kv(), make_kv()]
    for key in range(20):
        kv.put(f"cas/race/{key}", b"read")
    wins: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)

    def race(index: int) -> None:
        barrier.wait()
        for key in range(20):
            if clients[index].replace(f"cas/race/{key}", b"read", f"client{index}".encode()):
                wins[index].append(key)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(wins[0] + wins[1]) == list(range(20))
    for index, won in enumerate(wins):
        for key in won:
            assert kv.get(f"cas/race/{key}") == f"client{index}".encode()


def test_guarded_writes_act_only_while_the_guard_holds_its_value(
    backend: tuple[str, str], make_kv: Callable[[], KeyValueStore]
) -> None:
    """A leader's writes and deletes (the root's replacement orders, its clean-ups) fenced by
    its election key: done while the key holds the value the leader read, refused once it is
    another's or gone."""
    leader, other = make_kv(), make_kv()
    assert not leader.put_guarded("fenced/order", b"1", "fenced/leader", b"me")  # nobody leads
    lease = leader.grant_lease(30.0)
    assert leader.create("fenced/leader", b"me", lease)
    assert leader.put_guarded("fenced/order", b"1", "fenced/leader", b"me")
    assert other.get("fenced/order") == b"1"
    assert not leader.put_guarded("fenced/order", b"2", "fenced/leader", b"you")
    for name in ("a", "b"):
        other.put(f"fenced/exits/{name}", b"x")
    other.put("fenced/exitsnot", b"y")
    assert not leader.delete_guarded("fenced/exits/", "fenced/leader", b"you", prefix=True)
    assert leader.delete_guarded("fenced/exits/a", "fenced/leader", b"me")
    assert other.get_prefix("fenced/exits") == {
        "fenced/exits/b": b"x",
        "fenced/exitsnot": b"y",
    }
    other.put("fenced/exits/c", b"x")
    assert leader.delete_guarded("fenced/exits/", "fenced/leader", b"me", prefix=True)
    assert other.get_prefix("fenced/exits") == {"fenced/exitsnot": b"y"}
    other.put("fenced/exits/d", b"x")
    lease.revoke()  # the leader's lease ended: its key is gone
    assert not leader.put_guarded("fenced/order", b"2", "fenced/leader", b"me")
    assert not leader.delete_guarded("fenced/exits/", "fenced/leader", b"me", prefix=True)
    assert other.create("fenced/leader", b"other", other.grant_lease(30.0))
    assert not leader.put_guarded("fenced/order", b"2", "fenced/leader", b"me")
    assert not leader.delete_guarded("fenced/exits/", "fenced/leader", b"me", prefix=True)
    assert other.get("fenced/exits/d") == b"x"
    assert other.put_guarded("fenced/order", b"3", "fenced/leader", b"other")
    assert leader.get("fenced/order") == b"3"
    if backend[0] != "embedded":
        return
    # The embedded store checks the guard's lease on the client, then has the server compare
    # the guard's stored bytes (each write's own nonce): a new write of the guard between the
    # two, even of the same value, makes the write fail.
    stale: Any = make_kv()
    checked = stale._lease_alive

    def elected_meanwhile(lease_id: int, cache: dict[int, bool] | None = None) -> bool:
        alive = checked(lease_id, cache)
        other.put("fenced/leader", b"other")
        return bool(alive)

    stale._lease_alive = elected_meanwhile
    assert not stale.put_guarded("fenced/order", b"4", "fenced/leader", b"other")
    assert not stale.delete_guarded("fenced/exits/", "fenced/leader", b"other", prefix=True)
    assert leader.get("fenced/order") == b"3"
    assert leader.get("fenced/exits/d") == b"x"


def test_lease_expiry_removes_keys_and_create_takes_them_over(
    backend: tuple[str, str], make_kv: Callable[[], KeyValueStore], slack_s: float
) -> None:
    owner, other = make_kv(), make_kv()
    lease = owner.grant_lease(TTL_S)
    start = time.monotonic()
    owner.put("leased/a", b"1", lease)
    assert owner.create("leased/b", b"2", lease)
    owner.put("plain", b"stays")
    assert not other.create("leased/b", b"mine")
    # etcd revokes an expired lease by a proposal through its log: on a loaded 2-core CI
    # machine that once took more than 3.8 s after the grant (2026-12-06), against 1.5 s or
    # less here. Still far short of a lease that never expires.
    late = 3.0 if backend[0] == "etcd" else 0.0
    gone_after = wait_until(lambda: other.get_prefix("leased/") == {}, TTL_S + slack_s + 2.0 + late)
    # Not before the TTL (the lower bound proves the expiry); 1 s of slack above it for a
    # slow machine.
    assert TTL_S - 0.3 <= time.monotonic() - start <= TTL_S + slack_s + 1.2 + late, gone_after
    assert other.get("plain") == b"stays"
    assert not lease.refresh(), "an expired lease must not come back"
    with pytest.raises(KVError, match="expired"):
        owner.put("leased/c", b"3", lease)
    with pytest.raises(KVError, match="expired"):
        owner.create("leased/d", b"4", lease)
    assert other.create("leased/b", b"mine")
    assert owner.get("leased/b") == b"mine"


def test_keep_alive_keeps_keys_and_revoke_removes_them(kv: KeyValueStore) -> None:
    lease = kv.grant_lease(TTL_S)
    kv.put("alive", b"yes", lease)
    end = time.monotonic() + 2.2 * TTL_S
    while time.monotonic() < end:
        assert lease.refresh()
        assert kv.get("alive") == b"yes"
        time.sleep(TTL_S / 4)
    lease.revoke()
    assert kv.get("alive") is None
    lease.revoke()  # idempotent


# -- election --


def test_one_leader_among_three_then_failover_within_bound(
    make_kv: Callable[[], KeyValueStore], slack_s: float
) -> None:
    # A lease of a few seconds: a clean resignation's handover (one poll) is then clearly
    # apart from a lease running out, even on a slow machine.
    ttl_s = 3.0
    candidates = [Election(make_kv(), node, ttl_s=ttl_s, poll_s=0.1) for node in range(3)]
    try:
        for candidate in candidates:
            candidate.campaign(timeout_s=0)
        wait_until(lambda: any(c.is_leader() for c in candidates), 5.0)
        end = time.monotonic() + 0.5
        while time.monotonic() < end:  # nobody else may win while the leader lives
            assert sum(c.is_leader() for c in candidates) == 1
            time.sleep(0.05)
        leader = next(c for c in candidates if c.is_leader())
        assert all(c.leader() == leader.node_id for c in candidates)

        leader.abandon()  # dies without resigning: its lease must run out
        died = time.monotonic()
        survivors = [c for c in candidates if c is not leader]
        bound = leader.failover_bound_s + slack_s + 1.0  # 1 s for scheduling delays
        took = wait_until(lambda: any(c.is_leader() for c in survivors), bound + 2.0, 0.01)
        assert took <= bound, f"re-election took {took:.2f} s, bound {bound:.2f} s"
        assert time.monotonic() - died >= ttl_s / 2 - 0.2, "won before the old lease could end"
        new = next(c for c in survivors if c.is_leader())
        assert sum(c.is_leader() for c in survivors) == 1
        assert survivors[0].leader() == new.node_id

        new.resign()  # a clean resignation hands over at once (one poll), not after a TTL
        last = next(c for c in survivors if c is not new)
        # An unrevoked lease would live 2/3 to all of ttl_s more (refreshed every ttl_s / 3)
        assert wait_until(last.is_leader, ttl_s + slack_s + 2.0, period_s=0.01) < ttl_s / 2
    finally:
        for candidate in candidates:
            candidate.resign()


def test_a_dead_leader_is_deposed_before_its_lease_runs_out(
    make_kv: Callable[[], KeyValueStore],
) -> None:
    """A candidate that proved the leader dead revokes its lease: a new leader at once, not
    after ``ttl_s``; deposing a node that does not lead changes nothing."""
    ttl_s = 6.0
    candidates = [Election(make_kv(), node, ttl_s=ttl_s, poll_s=1.0) for node in range(2)]
    try:
        candidates[0].campaign(timeout_s=5)
        candidates[1].campaign(timeout_s=0)
        assert candidates[0].is_leader() and candidates[1].leader() == 0
        assert not candidates[1].depose(1)  # node 1 does not lead
        assert not candidates[0].depose(0)  # nor does a candidate depose itself
        time.sleep(0.3)
        assert candidates[0].is_leader() and not candidates[1].is_leader()

        candidates[0].abandon()  # dies without resigning: its lease would live ttl_s more
        began = time.monotonic()
        assert candidates[1].depose(0)
        took = wait_until(candidates[1].is_leader, 5.0, period_s=0.01)
        assert took < 1.0, f"took {took:.2f} s after the deposition, the lease lives {ttl_s} s"
        assert candidates[1].leader() == 1
        assert time.monotonic() - began < ttl_s / 2
    finally:
        for candidate in candidates:
            candidate.resign()


# -- failure detection --


def test_lost_heartbeat_detected_within_lease_timeout(
    make_kv: Callable[[], KeyValueStore], slack_s: float
) -> None:
    root = make_kv()
    detector = FailureDetector(root, lease_timeout_s=TTL_S, expected_nodes=[0, 1], poll_s=0.05)
    beats = [Heartbeat(make_kv(), node, interval_s=0.2, lease_timeout_s=TTL_S) for node in (0, 1)]
    try:
        for beat in beats:
            beat.start()
        assert detector.alive_nodes() == [0, 1]
        end = time.monotonic() + 1.5 * TTL_S
        while time.monotonic() < end:  # beating nodes are never reported
            assert detector.poll() == []
            time.sleep(0.1)
        beats[1].stop(revoke=False)  # a crash: no goodbye, the lease must expire
        crashed = time.monotonic()
        found = detector.wait(timeout_s=TTL_S + slack_s + 2.0)
        took = time.monotonic() - crashed
        assert [(d.kind, d.node) for d in found] == [("hardware", 1)]
        # 1 s of slack above the lease for scheduling delays on a slow machine
        assert took <= TTL_S + slack_s + 1.1, f"lost node noticed after {took:.2f} s"
        assert found[0].latency_s <= TTL_S + slack_s + 1.3
        assert detector.expected_nodes == [0]
        assert detector.poll() == []  # reported once
    finally:
        for beat in beats:
            beat.stop()


def test_trainer_exit_reported_under_one_second(make_kv: Callable[[], KeyValueStore]) -> None:
    root, agent = make_kv(), make_kv()
    detector = FailureDetector(root, lease_timeout_s=TTL_S, poll_s=0.05)
    exited = time.time()
    report_exit(agent, node=2, rank=5, exitcode=-9, at=exited)
    found = detector.wait(timeout_s=1.0)
    assert [(d.kind, d.node, d.rank, d.exitcode) for d in found] == [("software", 2, 5, -9)]
    assert found[0].latency_s < 1.0
    assert found[0].event_details()["failure_kind"] == "software"
    assert detector.poll() == []  # reported once
    detector.clear(found[0])
    assert root.get(keys.exit_key(2, 5)) is None


def test_watch_wakes_on_a_change_under_its_prefixes_only(
    backend: tuple[str, str], make_kv: Callable[[], KeyValueStore]
) -> None:
    watcher, writer = make_kv(), make_kv()
    cursor, changed = watcher.watch(["job/"], None, 0.0)  # a cursor before the first read
    assert not changed
    writer.put("nodes/1", b"beat")  # another prefix: no wake
    cursor, changed = watcher.watch(["job/"], cursor, 0.3)
    assert not changed
    woke: list[tuple[int, bool]] = []
    thread = threading.Thread(target=lambda: woke.append(watcher.watch(["job/"], cursor, 5.0)))
    thread.start()
    writer.put("job/attempt", b"1")
    thread.join(10.0)
    assert woke and woke[0][1], woke
    # A change made while nobody waited is not missed: the cursor remembers.
    writer.delete("job/attempt")
    assert watcher.watch(["job/"], woke[0][0], 5.0)[1]


def test_watch_after_close_is_an_error(
    backend: tuple[str, str], make_kv: Callable[[], KeyValueStore]
) -> None:
    kv = make_kv()
    kv.close()
    with pytest.raises(KVError):
        kv.watch(["job/"], 0, 0.1)


OWNER = """
import signal, sys
from real.coord.etcd_server import EtcdServer
from real.coord.kvserver import StoreServer
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner's own Ctrl-C handling is not tested
server = (EtcdServer() if sys.argv[1] == "etcd" else StoreServer()).start()
print(server.url, server.pid, flush=True)
sys.stdin.read()  # until the test closes our stdin
server.stop()
"""


def test_a_paused_store_expires_no_lease_and_fences_no_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded store's leases run on its own clock. Stopped (SIGSTOP) for twice a lease,
    as when its whole machine pauses, it expires none: the key stays, the lease refreshes,
    and a heartbeat whose beat waited for the store does not fence its agent. A heartbeat that
    could not reach the store for a whole lease (its requests time out: a partition, for all
    it knows) does fence; and once the store runs, a lease nobody refreshes still expires."""
    monkeypatch.setenv("GEMINI_TOKEN", uuid.uuid4().hex)
    with StoreServer() as server:
        url = f"{server.url}/{uuid.uuid4().hex[:12]}"
        kv, patient, impatient = (connect_kv(url, timeout_s=t) for t in (5.0, 5.0, 0.2))
        beats = [
            Heartbeat(client, node, interval_s=0.1, lease_timeout_s=TTL_S)
            for node, client in ((0, patient), (1, impatient))
        ]
        try:
            held = kv.grant_lease(TTL_S)
            kv.put("job/marker", b"held", held)
            for beat in beats:
                beat.start()
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            try:
                time.sleep(2 * TTL_S)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert kv.get("job/marker") == b"held"
            assert held.refresh()
            wait_until(lambda: beats[1].lease_lost, 2.0)
            time.sleep(3 * 0.1)  # a few beats after the pause
            assert not beats[0].lease_lost
            assert keys.decode(kv.get(keys.node_key(0)) or b"{}")["beat"] > 1
            wait_until(lambda: kv.get("job/marker") is None, TTL_S + 1.0)
        finally:
            for beat in beats:
                beat.stop()
            for client in (kv, patient, impatient):
                client.close()


@pytest.mark.parametrize("name", ["embedded", "etcd"])
def test_a_store_owned_by_a_launcher_leaves_ctrl_c_to_it(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal's Ctrl-C is SIGINT to the launcher's whole process group. The store the
    launcher started keeps serving (its owner stops it in its teardown): a store gone first
    made the interrupted launcher report a store error instead of the interrupt."""
    if name == "etcd" and etcd_binary() is None:
        pytest.skip(ETCD_MISSING)
    monkeypatch.setenv("GEMINI_TOKEN", uuid.uuid4().hex)
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # a process group of its own, as a terminal's job
    )
    assert owner.stdin is not None and owner.stdout is not None
    try:
        url = owner.stdout.readline().decode().split()[0]
        assert url, "the owner did not start its store"
        kv = connect_kv(f"{url}/{uuid.uuid4().hex[:12]}")
        try:
            kv.put("job/attempt", b"1")
            os.killpg(owner.pid, signal.SIGINT)
            time.sleep(0.5)
            assert kv.get("job/attempt") == b"1"
        finally:
            kv.close()
        owner.stdin.close()
        assert owner.wait(30) == 0
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


@pytest.mark.parametrize("name", ["embedded", "etcd"])
def test_a_store_ends_with_a_launcher_killed_with_sigkill(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launcher killed with SIGKILL (or by a hang-up) cannot stop its store: the store ends
    by itself (the embedded store watches its parent; etcd, in a session of its own, gets
    SIGTERM when its parent dies)."""
    if name == "etcd" and etcd_binary() is None:
        pytest.skip(ETCD_MISSING)
    monkeypatch.setenv("GEMINI_TOKEN", uuid.uuid4().hex)
    before = set(Path(tempfile.gettempdir()).glob("gemini-etcd-*"))
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert owner.stdout is not None
        store = int(owner.stdout.readline().decode().split()[1])
        assert ends_with_its_owner(owner, store)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for folder in set(Path(tempfile.gettempdir()).glob("gemini-etcd-*")) - before:
            shutil.rmtree(folder, ignore_errors=True)  # etcd's data, left by the killed owner
