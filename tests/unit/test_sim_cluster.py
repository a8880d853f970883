"""The simulator's cluster memory: what each node holds, and the sub-cluster recovery plan,
which must equal shared's plan for the whole cluster."""

from __future__ import annotations

import random

import pytest

from shared.placement import plan_placement
from shared.recovery import plan_recovery
from sim.cluster import ClusterMemory


@pytest.mark.parametrize("local_slots", [2, 1])
@pytest.mark.parametrize("strategy, nodes", [("group", 12), ("mixed", 11), ("ring", 9)])
def test_sub_plan_matches_the_full_plan(strategy: str, nodes: int, local_slots: int) -> None:
    rng = random.Random(4)
    placement = plan_placement(nodes, 3 if strategy == "group" else 2, strategy)  # type: ignore[arg-type]
    captured_plans = peer_plans = 0
    for trial in range(300):
        memory = ClusterMemory(placement, local_slots)
        memory.commit(10)
        if trial % 3 == 0:  # just after a restore that replaced some nodes
            memory.restored(10, rng.sample(range(nodes), 2))
        if trial % 5 == 0:
            memory.restored(4, [])  # rolled back: own shards only
        if trial % 7 == 0:  # restored a captured iteration that had not committed
            memory.capture(11)
            memory.restored(11, [])
        if trial % 2 == 0:  # a newer iteration captured, its replicas not all stored
            memory.capture(rng.choice([11, 12, 13]))
        failed = {n: rng.choice(["software", "hardware"]) for n in rng.sample(range(nodes), 3)}
        if trial % 4 == 0:
            failed = dict.fromkeys(rng.sample(range(nodes), rng.choice([1, 3])), "software")
        persistent = rng.choice([None, 3, 11, 12])
        full = plan_recovery(
            placement,
            failed,  # type: ignore[arg-type]
            {h: memory.holdings(h) for h in range(nodes)},
            persistent,
        )
        sub = memory.plan(failed, persistent)  # type: ignore[arg-type]
        assert (sub.iteration, sub.rollback, sub.sources) == (
            full.iteration,
            full.rollback,
            full.sources,
        )
        captured_plans += full.iteration in (12, 13) and not full.rollback
        peer_plans += sum(source.tier == "peer" for source in full.sources) > len(failed)
    assert captured_plans > 20  # the captured iterations were planned from, not only held
    # One local slot with m = 3: restores of the committed iteration under a newer capture
    # read every shard from a peer, untouched nodes included. (With m = 2 they cannot happen:
    # a lost node took the only other copy of its partner's committed shard.)
    if local_slots == 1 and strategy == "group":
        assert peer_plans > 10
    else:
        assert peer_plans == 0


GROUPS_OF_TWO = plan_placement(4, 2, "group")  # groups {0, 1} {2, 3}


def test_a_captured_iteration_is_held_by_its_own_node_only() -> None:
    memory = ClusterMemory(GROUPS_OF_TWO)
    memory.commit(10)
    memory.capture(11)
    assert memory.holdings(0) == {0: (10, 11), 1: (10,)}
    memory.capture(9)  # not newer than the committed iteration: nothing changes
    assert memory.holdings(0) == {0: (10, 11), 1: (10,)}
    # A crash restores 11 locally; a lost node needs its peer's replica: 10.
    assert memory.plan({1: "software"}, None).iteration == 11
    assert memory.plan({1: "hardware"}, None).iteration == 10
    memory.commit(11)  # its replicas stored: committed
    assert memory.holdings(0) == {0: (11,), 1: (11,)}


def test_restoring_a_captured_iteration_leaves_own_shards_only() -> None:
    memory = ClusterMemory(GROUPS_OF_TWO)
    memory.commit(10)
    memory.capture(11)
    memory.restored(11, [])
    # Conservative: the peers' replicas of 10 are dropped, none of 11 exist yet.
    assert [memory.holdings(h) for h in range(4)] == [
        {0: (11,)},
        {1: (11,)},
        {2: (11,)},
        {3: (11,)},
    ]
    assert memory.plan({2: "software"}, 4).iteration == 11
    hardware = memory.plan({2: "hardware"}, 4)
    assert (hardware.iteration, hardware.rollback) == (4, True)


def test_restoring_the_committed_iteration_keeps_replicas_and_drops_the_captured_one() -> None:
    memory = ClusterMemory(GROUPS_OF_TWO)
    memory.commit(10)
    memory.capture(11)
    memory.restored(10, [1])  # node 1 was lost: its replacement holds its own shard only
    assert memory.holdings(0) == {0: (10,), 1: (10,)}
    assert memory.holdings(1) == {1: (10,)}


def test_one_local_slot_holds_the_captured_iteration_in_place_of_the_committed_one() -> None:
    memory = ClusterMemory(GROUPS_OF_TWO, local_slots=1)
    memory.commit(10)
    assert memory.holdings(0) == {0: (10,), 1: (10,)}
    memory.capture(11)  # the one slot now holds 11; 10 stays on the peer
    assert memory.holdings(0) == {0: (11,), 1: (10,)}
    assert memory.plan({1: "software"}, None).iteration == 11  # every node captured 11
    # Node 1 lost before 11's replicas arrived: node 0's 10 was only on node 1, node 1's 11
    # only there too: with m = 2 the group rolls back to persistent storage.
    lost = memory.plan({1: "hardware"}, 4)
    assert (lost.iteration, lost.rollback) == (4, True)


def test_one_local_slot_with_three_copies_restores_from_the_peers() -> None:
    memory = ClusterMemory(plan_placement(3, 3, "group"), local_slots=1)
    memory.commit(10)
    memory.capture(11)
    plan = memory.plan({1: "hardware"}, None)
    assert plan.iteration == 10
    # Every shard from a surviving peer, the untouched nodes' too (their slots hold 11).
    assert [(s.node, s.tier, s.from_node) for s in plan.sources] == [
        (0, "peer", 2),
        (1, "peer", 2),
        (2, "peer", 0),
    ]
    memory.restored(10, [1])
    # Read from the peers: no node holds its own shard until the next commit; the
    # replacement holds nothing.
    assert [memory.holdings(h) for h in range(3)] == [
        {1: (10,), 2: (10,)},
        {},
        {0: (10,), 1: (10,)},
    ]
    memory.commit(12)
    assert memory.holdings(1) == {1: (12,), 0: (12,), 2: (12,)}
