"""The sub-cluster recovery plan equals shared's plan for the whole cluster."""

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
    for trial in range(200):
        memory = ClusterMemory(placement)
        memory.commit(10)
        if trial % 3 == 0:  # just after a restore that replaced some nodes
            memory.restored(10, rng.sample(range(nodes), 2))
        if trial % 5 == 0:
            memory.restored(4, [])  # rolled back: own shards only
        failed = {n: rng.choice(["software", "hardware"]) for n in rng.sample(range(nodes), 3)}
        persistent = rng.choice([None, 3, 12])
        full = plan_recovery(
            placement,
            failed,  # type: ignore[arg-type]
            {h: {o: (i,) for o, i in memory.holdings(h).items()} for h in range(nodes)},
            persistent,
        )
        sub = memory.plan(failed, persistent)  # type: ignore[arg-type]
        assert (sub.iteration, sub.rollback, sub.sources) == (
            full.iteration,
            full.rollback,
            full.sources,
        )
