"""A node agent refuses to start as a second copy of a live agent of its job: with the node id
whose heartbeat lease another holds, or (a slot's agent) with the slot of a live member. Both
went unnoticed: two agents shared a pids file, event files and slot-file prefix, or two
trainers trained one rank."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from real.agent import jobkeys
from real.agent.node_agent import NodeAgent
from real.coord import keys
from shared.errors import AgentIdentityError
from shared.scenario import DetectionConfig


class KV:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = {k: keys.encode(v) for k, v in values.items()}

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, v in self.values.items() if k.startswith(prefix)}


def starting(node_id: int, slot: int | None, kv: KV) -> Any:
    """A NodeAgent (never run) about to check who it may be."""
    made: Any = NodeAgent.__new__(NodeAgent)
    scenario = SimpleNamespace(detection=DetectionConfig(lease_timeout_s=3.0))
    made.config = SimpleNamespace(node_id=node_id, slot=slot, scenario=scenario)
    made.kv = kv
    return made


# Node 0 holds slot 0 and beats; node 4 held slot 1 and died (its lease lapsed).
JOB = {
    keys.node_key(0): {"beat": 1},
    f"{jobkeys.STORES_PREFIX}0": {"node_id": 0, "slot": 0},
    f"{jobkeys.STORES_PREFIX}4": {"node_id": 4, "slot": 1},
}


def test_a_live_agents_node_id_or_slot_is_refused() -> None:
    with pytest.raises(AgentIdentityError, match="node id 0 is taken by a live agent"):
        starting(0, None, KV(JOB))._require_free_identity()  # a standby with a member's id
    with pytest.raises(AgentIdentityError, match="slot 0 is held by node 0, a live agent"):
        starting(5, 0, KV(JOB))._require_free_identity()


def test_the_node_the_root_ordered_for_a_slot_takes_it_while_the_lost_one_still_beats() -> None:
    # A probe found node 0 lost before its lease lapsed; the root ordered node 7 for slot 0,
    # and the emulated cluster starts it with --slot 0 (a real cluster, with --standby).
    ordered = {**JOB, f"{jobkeys.REPLACEMENTS_PREFIX}7": {"node_id": 7, "slot": 0}}
    starting(7, 0, KV(ordered))._require_free_identity()
    with pytest.raises(AgentIdentityError, match="slot 0 is held by node 0"):
        starting(8, 0, KV(ordered))._require_free_identity()  # not the node ordered


def test_a_dead_agents_slot_and_a_fresh_id_are_free() -> None:
    starting(5, 1, KV(JOB))._require_free_identity()  # node 4's lease lapsed: slot 1 is free
    starting(1000, None, KV(JOB))._require_free_identity()  # a standby with an id of its own
    starting(4, 1, KV(JOB))._require_free_identity()  # the dead agent, started again
