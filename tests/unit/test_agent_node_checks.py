"""What a node agent checks of its node and its job: a node store that died takes the node
out (its checkpoint memory is gone, and no checkpoint could commit again: a SIGKILLed store
went unnoticed for the rest of a job), and an agent started with another scenario than the
job's first agent is refused (the job's ranks then trained other iterations and waited for each
other at the end, 120 s at a time)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from real.agent import jobkeys
from real.agent.node_agent import NodeAgent
from shared.errors import AgentIdentityError
from shared.scenario_loader import parse_scenario


class MemoryKV:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def create(self, key: str, value: bytes) -> bool:
        if key in self.values:
            return False
        self.values[key] = value
        return True


def agent(**config: Any) -> Any:
    made: Any = NodeAgent.__new__(NodeAgent)
    made.config = SimpleNamespace(node_id=1, parent_pid=None, **config)
    made.stopping, made.wake, made.orphaned = threading.Event(), threading.Event(), False
    made.root_stop = threading.Event()
    made.heartbeat, made.store, made.kv = None, None, MemoryKV()
    made.stopped_trainers = 0

    def stop_trainers() -> None:
        made.stopped_trainers += 1

    made._stop_trainers = stop_trainers
    return made


def test_an_agent_whose_store_died_stops_its_trainers_and_leaves() -> None:
    made = agent()
    made.store = SimpleNamespace(process=SimpleNamespace(poll=lambda: -9))  # SIGKILLed
    assert made._follow() == 1
    assert made.stopped_trainers == 1


def test_a_live_store_is_left_alone() -> None:
    made = agent()
    made.store = SimpleNamespace(process=SimpleNamespace(poll=lambda: None))
    assert not made._store_died()
    made.store = SimpleNamespace(process=None)  # not started yet
    assert not made._store_died()


def test_every_agent_of_a_job_brings_the_jobs_scenario() -> None:
    first = agent(scenario=parse_scenario("name: job\ntraining: {iterations: 600}\n"))
    first._require_the_jobs_scenario()
    same = agent(scenario=parse_scenario("name: job\ntraining: {iterations: 600}\n"))
    same.kv = first.kv
    same._require_the_jobs_scenario()
    other = agent(scenario=parse_scenario("name: job\ntraining: {iterations: 900}\n"))
    other.kv = first.kv
    with pytest.raises(AgentIdentityError, match=r"is not the job's .*same scenario file"):
        other._require_the_jobs_scenario()
    assert (
        first.kv.get(jobkeys.SCENARIO_KEY)
        == jobkeys.scenario_digest(first.config.scenario).encode()
    )


def test_two_agents_given_one_node_id_at_once_are_not_both_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scheduler starts its agents together: the heartbeat the identity check looks for
    begins seconds later, once a node's trainers are warm, so two agents with one node id both
    passed it and ran side by side. The claim is made at once, in the store."""
    import os

    from real.coord.connect import connect_kv
    from real.coord.kvserver import StoreServer

    monkeypatch.setenv("GEMINI_TOKEN", os.urandom(16).hex())
    scenario = parse_scenario(
        "name: job\ndetection: {heartbeat_interval_s: 0.2, lease_timeout_s: 0.6}\n"
    )
    with StoreServer() as server:
        first, second = agent(scenario=scenario, host="h"), agent(scenario=scenario, host="h")
        first.kv, second.kv = connect_kv(f"{server.url}/j"), connect_kv(f"{server.url}/j")
        try:
            first._claim_identity()
            with pytest.raises(AgentIdentityError, match="node id 1 is claimed by another agent"):
                second._claim_identity()
            assert second.claim is None
            threading.Event().wait(1.2)  # twice the claim's lease: the first keeps it alive
            with pytest.raises(AgentIdentityError):
                second._claim_identity()
            first.stopping.set()
            first.claim.revoke()  # as the first exits
            second._claim_identity()  # now free
        finally:
            second.stopping.set()
            first.kv.close()
            second.kv.close()


def test_two_agents_given_one_slot_at_once_are_not_both_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two agents with different node ids and one ``--slot``, started together: the slot's
    holder registers only once its trainers are warm, so both passed the check of registered
    holders. The slot is claimed at once, with the node id; a node the root ordered for the
    slot takes it even while the lost member's claim is held."""
    import os

    from real.coord.connect import connect_kv
    from real.coord.kvserver import StoreServer

    monkeypatch.setenv("GEMINI_TOKEN", os.urandom(16).hex())
    scenario = parse_scenario(
        "name: job\ndetection: {heartbeat_interval_s: 0.2, lease_timeout_s: 0.6}\n"
    )
    with StoreServer() as server:
        made = [agent(scenario=scenario, host="h", slot=1) for _ in range(3)]
        made[1].config.node_id, made[2].config.node_id = 2, 3
        for each in made:
            each.kv = connect_kv(f"{server.url}/j")
        first, second, ordered = made
        try:
            first._claim_identity()
            with pytest.raises(AgentIdentityError, match="slot 1 is claimed by another agent"):
                second._claim_identity()
            # the refused claim left nothing behind: node id 2 is free for another slot
            assert second.kv.get(f"{jobkeys.AGENTS_PREFIX}2") is None
            order = {"node_id": 3, "slot": 1, "replaces": 1, "ready_at": 0.0}
            jobkeys.put_json(ordered.kv, f"{jobkeys.REPLACEMENTS_PREFIX}3", order)
            ordered._claim_identity()  # the root's order: the slot is its to take
            first.stopping.set()
            first.claim.revoke()  # as the first exits
            second._claim_identity()  # now free
            assert second.kv.get(f"{jobkeys.SLOTS_PREFIX}1") is not None
        finally:
            for each in made:
                each.stopping.set()
                each.kv.close()
