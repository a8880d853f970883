"""A node agent that loses and wins back the root election runs exactly one root again."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from real.agent.node_agent import NodeAgent
from real.persistent.storage import FORMAT


class FakeElection:
    def __init__(self) -> None:
        self.leading = True

    def is_leader(self) -> bool:
        return self.leading


def agent_with_fake_roots() -> tuple[Any, list[threading.Event]]:
    """A NodeAgent (never run) whose roots are threads that run until their stop is set."""
    agent: Any = NodeAgent.__new__(NodeAgent)
    agent.stopping = threading.Event()
    agent.wake = threading.Event()
    agent.root_thread = None
    agent.root_stop = threading.Event()
    agent.election = FakeElection()
    agent._root_lock = threading.Lock()
    started: list[threading.Event] = []

    def launch() -> None:
        stop = threading.Event()
        agent.root_stop = stop
        started.append(stop)
        agent.root_thread = threading.Thread(target=stop.wait, daemon=True)
        agent.root_thread.start()

    agent._launch_root = launch
    return agent, started


def test_regained_leadership_starts_a_root_once_the_old_one_has_ended() -> None:
    agent, started = agent_with_fake_roots()
    agent._leadership(True)
    assert len(started) == 1
    first = agent.root_thread
    # The lease expired (the old root is told to stop) and was won back at once, before the
    # old root thread has finished: the agent must not end up leading with no root.
    agent._leadership(False)
    agent._leadership(True)
    first.join(5)
    handover = [t for t in threading.enumerate() if t.name == "root-handover"]
    for thread in handover:
        thread.join(5)
    assert len(started) == 2, "a new root must start after the old one ended"
    assert agent.root_thread.is_alive() and agent.root_thread is not first
    started[-1].set()


def test_no_new_root_when_leadership_is_lost_again_before_the_handover() -> None:
    agent, started = agent_with_fake_roots()
    agent._leadership(True)
    old_stop = started[0]
    blocker = threading.Event()
    agent.root_thread = threading.Thread(target=blocker.wait, daemon=True)
    agent.root_thread.start()
    agent._leadership(True)  # still "alive": a handover waits for it
    agent.election.leading = False
    blocker.set()
    for thread in [t for t in threading.enumerate() if t.name == "root-handover"]:
        thread.join(5)
    assert len(started) == 1
    old_stop.set()


def test_an_agent_told_to_stop_stops_its_root_first() -> None:
    """A Ctrl-C reaches every agent at once: the root must not go on judging the other nodes'
    trainers, which exit meanwhile, while its own agent stops its trainers (it took their
    exits for failures and ordered replacements)."""
    agent, started = agent_with_fake_roots()
    agent._leadership(True)
    agent.stop()
    assert started[0].is_set(), "the running root is told to stop with its agent"
    agent.root_thread.join(5)
    assert not agent.root_thread.is_alive()


def test_a_root_elected_while_its_agent_stops_never_runs() -> None:
    agent, _ = agent_with_fake_roots()
    ran: list[bool] = []
    agent._run_root = lambda stop: ran.append(stop.is_set())
    agent.stop()
    NodeAgent._launch_root(agent)
    agent.root_thread.join(5)
    assert ran == [True], "a root launched after the stop gets a stop already set"


def test_an_agent_plans_from_the_persistent_tier_without_torch(tmp_path: Path) -> None:
    """An agent imports neither torch nor DCP: every node of an emulated cluster runs one on
    the same host, and those imports cost each agent seconds of CPU at start. The persistent
    tier's index reader (fsspec) is imported in the background when an agent starts (any
    agent may become the root), so a root's first recovery plan does not wait for it, and
    reading the newest checkpoint from the index needs nothing more."""
    (tmp_path / "index.json").write_text(
        json.dumps({"format": FORMAT, "complete": [{"iteration": 7, "folder": "iter_7"}]})
    )
    script = (
        "import sys\n"
        "from real.agent import node_agent, root\n"
        "from real.engine import tiers\n"
        "assert 'real.persistent.storage' not in sys.modules\n"
        "root.preimport_persistent_tier().join(timeout=120)\n"
        "assert 'real.persistent.storage' in sys.modules\n"
        f"assert tiers.latest_persistent({str(tmp_path)!r}) == 7\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=180)


def test_an_agent_warms_the_persistent_tiers_filesystem_at_start(tmp_path: Path) -> None:
    """Given the tier's URL, the warm-up also imports the URL's fsspec filesystem and builds
    the instance fsspec keeps: an object store's client (s3fs and botocore) is not imported,
    nor its credentials found, on the first recovery's path. A filesystem of this test's own,
    registered by name only, stands for s3fs."""
    (tmp_path / "warmfs.py").write_text(
        "from fsspec.implementations.memory import MemoryFileSystem\n"
        "class WarmFS(MemoryFileSystem):\n"
        "    protocol = 'warmtest'\n"
        "    built = 0\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__(*args, **kwargs)\n"
        "        WarmFS.built += 1\n"
    )
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import fsspec\n"
        "fsspec.register_implementation('warmtest', 'warmfs.WarmFS')\n"
        "from real.agent import root\n"
        "assert 'warmfs' not in sys.modules\n"
        "root.preimport_persistent_tier('warmtest://job/persistent').join(timeout=120)\n"
        "from warmfs import WarmFS\n"
        "assert WarmFS.built == 1, WarmFS.built\n"
        "from real.engine import tiers\n"
        "assert tiers.latest_persistent('warmtest://job/persistent') is None\n"
        "assert WarmFS.built == 1, WarmFS.built  # the recovery reuses the instance\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=180)


def test_a_root_writes_the_record_only_while_it_holds_the_leader_key() -> None:
    """A root paused past its lease (SIGSTOP, a frozen VM) resumed where it stopped and wrote
    the job's record over the new root's, before its agent saw the election lost: a failure of
    its own making, and the new root's replacement node told it was no longer a member."""
    import os

    import pytest

    from real.agent.root import RecoveryAborted, RootAgent
    from real.coord import keys

    class KV:
        def __init__(self) -> None:
            self.values: dict[str, bytes] = {}

        def get(self, key: str) -> bytes | None:
            return self.values.get(key)

    root: Any = RootAgent.__new__(RootAgent)
    root.kv, root.node_id, root.stop = KV(), 2, threading.Event()
    mine = {"node": 2, "lease": 7, "pid": os.getpid()}
    root.kv.values[keys.LEADER_KEY] = keys.encode(mine)
    root._require_leadership()  # leading: it writes
    for holder in ({**mine, "node": 0}, {**mine, "pid": os.getpid() + 1}):
        root.kv.values[keys.LEADER_KEY] = keys.encode(holder)
        with pytest.raises(RecoveryAborted):
            root._require_leadership()
    del root.kv.values[keys.LEADER_KEY]  # its lease ran out: nobody leads yet
    with pytest.raises(RecoveryAborted):
        root._require_leadership()
    root.kv.values[keys.LEADER_KEY] = keys.encode(mine)
    root.stop.set()  # its agent saw the election lost and told it to stop
    with pytest.raises(RecoveryAborted):
        root._require_leadership()


def test_a_root_writes_the_record_only_over_the_one_it_last_read() -> None:
    """The leadership check is a read before the write: a root that passed it, then paused
    while another root was elected and wrote the record, would overwrite that record once
    resumed. The write swaps only the record this root last read or wrote."""
    import os

    import pytest
    from memory_kv import DictKV

    from real.agent import jobkeys
    from real.agent.root import RecordChanged, RootAgent
    from real.coord import keys

    root: Any = RootAgent.__new__(RootAgent)
    root.kv, root.node_id, root.stop = DictKV(), 2, threading.Event()
    root.kv.put(keys.LEADER_KEY, keys.encode({"node": 2, "lease": 7, "pid": os.getpid()}))
    first = {"attempt": 1, "state": "running"}
    assert root._write_record(first) == first  # the job's first record: none was there
    stopped = {**first, "state": "stopped"}
    root._write_record(stopped)  # over its own
    assert jobkeys.read_json(root.kv, jobkeys.ATTEMPT_KEY) == stopped
    newer = {"attempt": 2, "state": "running"}
    jobkeys.put_json(root.kv, jobkeys.ATTEMPT_KEY, newer)  # another root, meanwhile
    with pytest.raises(RecordChanged, match="changed since this root read it"):
        root._write_record({**stopped, "state": "failed", "reason": "stale"})
    assert jobkeys.read_json(root.kv, jobkeys.ATTEMPT_KEY) == newer
    fresh: Any = RootAgent.__new__(RootAgent)  # a root started again adopts what is there
    fresh.kv, fresh.node_id, fresh.stop = root.kv, 2, threading.Event()
    fresh._record_raw = root.kv.get(jobkeys.ATTEMPT_KEY)
    fresh._write_record({**newer, "state": "finished"})
    late: Any = RootAgent.__new__(RootAgent)  # one that read no record finds one there
    late.kv, late.node_id, late.stop = root.kv, 2, threading.Event()
    with pytest.raises(RecordChanged):
        late._write_record(first)
    assert jobkeys.read_json(root.kv, jobkeys.ATTEMPT_KEY) == {**newer, "state": "finished"}


class PausedAfterCheckKV:
    """A store in which another root is elected right after this root's leadership check:
    the read of the election's key returns this root's value, then the key is another's, as
    for a root paused (SIGSTOP, a frozen VM) between its check and its write."""

    def __init__(self, mine: bytes, theirs: bytes) -> None:
        from memory_kv import DictKV

        from real.coord import keys

        self.kv: DictKV = DictKV()
        self.kv.put(keys.LEADER_KEY, mine)
        self.theirs = theirs
        self.paused = False

    def get(self, key: str) -> bytes | None:
        from real.coord import keys

        value: bytes | None = self.kv.get(key)
        if key == keys.LEADER_KEY and self.paused:
            self.kv.put(keys.LEADER_KEY, self.theirs)  # elected while this root was stopped
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kv, name)


def test_a_root_paused_after_its_check_writes_no_order() -> None:
    """A replacement order is a leader's write, fenced by the election's key it read: a root
    that passed the check and was stopped while another was elected orders no node once
    resumed (it could hand a standby agent a slot the new root gave another, or order a
    second node for one slot), and steps down."""
    import os
    from types import SimpleNamespace

    import pytest

    from real.agent import jobkeys
    from real.agent.root import RecoveryAborted, RootAgent, _Recovery
    from real.coord import keys

    mine = keys.encode({"node": 2, "lease": 7, "pid": os.getpid()})
    theirs = keys.encode({"node": 0, "lease": 9, "pid": os.getpid() + 1})
    for paused in (False, True):
        store = PausedAfterCheckKV(mine, theirs)
        store.paused = paused
        store.kv.put(f"{jobkeys.STANDBY_PREFIX}9", keys.encode({"node": 9}))  # a warm standby
        root: Any = RootAgent.__new__(RootAgent)
        root.kv, root.node_id, root.stop = store, 2, threading.Event()
        root.detector = SimpleNamespace(poll=lambda: [], alive_nodes=lambda: [9], expect=print)
        root.operator = SimpleNamespace(
            request_replacement=lambda slot: SimpleNamespace(
                source="standby", ready_at=0.0, delay_s=0.0
            )
        )
        root.events = SimpleNamespace(emit=lambda *args, **kwargs: None)
        root._registrations = lambda: {9: {"address": "127.0.0.1:1"}}
        recovery = _Recovery(root, {0: 0, 1: 1, 2: 2}, resumed=[])
        recovery.failed[1] = "hardware"
        order_key = f"{jobkeys.REPLACEMENTS_PREFIX}9"
        if not paused:
            recovery.replace()  # the standby joins at once: registered and alive
            assert (jobkeys.read_json(store.kv, order_key) or {}).get("slot") == 1
            assert recovery.members[1] == 9
            continue
        with pytest.raises(RecoveryAborted):
            recovery.replace()
        assert store.kv.get(order_key) is None, "a deposed root ordered a node"
        assert store.kv.get(keys.LEADER_KEY) == theirs


def test_a_leaders_write_is_refused_once_the_election_key_is_another_s() -> None:
    """``_leader_put`` (the orders, the next node id, a failure handled) and
    ``_leader_delete`` (a stopped attempt's exits, suspects, acks) act only while the
    election's key holds what the check read: not after another root took it, nor once it
    is gone."""
    import os

    import pytest

    from real.agent.root import RecoveryAborted, RootAgent
    from real.coord import keys

    mine = keys.encode({"node": 2, "lease": 7, "pid": os.getpid()})
    store = PausedAfterCheckKV(mine, keys.encode({"node": 0, "lease": 9, "pid": 1}))
    root: Any = RootAgent.__new__(RootAgent)
    root.kv, root.node_id, root.stop = store, 2, threading.Event()
    root._leader_put("job/next", b"1")
    assert store.kv.get("job/next") == b"1"
    for name in ("exits/0/0", "exits/1/0", "suspects/1/0"):
        store.kv.put(name, b"{}")
    root._leader_delete("exits/")
    assert store.kv.get_prefix("exits/") == {} and store.kv.get("suspects/1/0") == b"{}"
    store.kv.put("exits/2/0", b"{}")  # the new root's, yet to be read
    store.paused = True
    with pytest.raises(RecoveryAborted):
        root._leader_put("job/next", b"2")
    assert store.kv.get("job/next") == b"1"
    with pytest.raises(RecoveryAborted):
        root._leader_delete("exits/")
    assert store.kv.get("exits/2/0") == b"{}"
    store.kv.delete(keys.LEADER_KEY)  # the new root's lease ran out too: nobody leads
    with pytest.raises(RecoveryAborted):
        root._leader_put("job/next", b"3")
    assert store.kv.get("job/next") == b"1"
