"""The simulator's cluster memory: what each node holds, and the sub-cluster recovery plan,
which must equal shared's plan for the whole cluster."""

from __future__ import annotations

import random

import pytest

from shared.placement import plan_placement
from shared.recovery import plan_recovery
from sim.cluster import ClusterMemory


@pytest.mark.parametrize("strategy, nodes", [("group", 12), ("mixed", 11), ("ring", 9)])
def test_sub_plan_matches_the_full_plan(strategy: str, nodes: int) -> None:
    rng = random.Random(4)
    placement = plan_placement(nodes, 3 if strategy == "group" else 2, strategy)  # type: ignore[arg-type]
    captured_plans = 0
    for trial in range(300):
        memory = ClusterMemory(placement)
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
    assert captured_plans > 20  # the captured iterations were planned from, not only held


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
