"""The cluster's state between failures: what each node holds in CPU memory, and spare nodes.

**Checkpoint memory.** Between failures every node holds the same thing: after the first
in-memory checkpoint commits since the last restore, each node holds iteration c of its own
shard and of every shard the placement gives it; before that, each node holds what the restore
left (its own restored iteration, and any replica of that iteration that survived). So the
holdings are kept as one of two compact states and expanded only for the nodes that matter.

**Recovery planning** is ``shared.recovery.plan_recovery``, called on the part of the cluster
a failure touches: the placement groups of the failed nodes plus one untouched group standing
for all the others (every untouched node holds exactly the same iterations of its own shard,
so one of them answers for all). The plan for that sub-cluster is the plan for the whole
cluster, with every untouched node restoring locally; ``tests/unit/test_sim_cluster.py`` checks
that against the full call. This keeps a 10,000-node failure as cheap as a 16-node one.

**Standby pool.** A hardware failure takes a spare from the pool (ready after
``replacement_s`` plus a uniform jitter) or, when the pool is empty, provisions a new node
(``provisioning_delay_s``). The cloud refills the pool: a spare taken is replaced by a newly
provisioned one after ``provisioning_delay_s``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shared.placement import Placement
from shared.recovery import FailureKind, Source, plan_recovery
from shared.scenario import ClusterConfig


@dataclass(frozen=True)
class _SubPlacement:
    """A relabelled part of a placement, shaped like ``shared.recovery.PlacementView``."""

    nodes: int
    holders: tuple[tuple[int, ...], ...]


class ClusterMemory:
    """Which iterations each node holds in CPU memory (see the module docstring)."""

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        held_by: list[list[int]] = [[] for _ in range(placement.nodes)]
        for owner, holders in enumerate(placement.holders):
            for holder in holders[1:]:
                held_by[holder].append(owner)
        self._held_by = tuple(tuple(owners) for owners in held_by)
        self._iteration: int | None = None  # every node holds this iteration of its own shard
        # ... and of the shards it holds for peers, except these holders (None: every holder).
        self._without_replicas: set[int] | None = None

    def commit(self, iteration: int) -> None:
        """Every node now holds ``iteration`` of its own shard and of its replicas."""
        self._iteration, self._without_replicas = iteration, set()

    def holdings(self, holder: int) -> dict[int, int]:
        """owner -> iteration held complete by ``holder``."""
        if self._iteration is None:
            return {}
        held = {holder: self._iteration}
        if self._without_replicas is not None and holder not in self._without_replicas:
            for owner in self._held_by[holder]:
                held[owner] = self._iteration
        return held

    def restored(self, iteration: int | None, lost: Sequence[int]) -> None:
        """After every node restored ``iteration``: own shards, plus surviving replicas of it.

        Args:
            iteration: the restored iteration (None: training restarts from scratch).
            lost: nodes replaced after a hardware failure; they hold their own shard only.
        """
        if iteration is None:
            self._iteration, self._without_replicas = None, None
        elif iteration == self._iteration and self._without_replicas is not None:
            self._without_replicas.update(lost)
        else:  # older (persistent) state: replicas of it are nowhere in memory
            self._iteration, self._without_replicas = iteration, None

    def plan(
        self, failed: Mapping[int, FailureKind], persistent_iteration: int | None
    ) -> ClusterPlan:
        """``shared.recovery.plan_recovery`` for the whole cluster, computed on its touched part."""
        placement = self.placement
        touched: set[int] = set()
        for node in failed:
            touched.update(placement.group_of(node))
        untouched = next((n for n in range(placement.nodes) if n not in touched), None)
        if untouched is not None:
            touched.update(placement.group_of(untouched))
        # Close under "holds a copy of" so every holder of a touched shard is included.
        frontier = list(touched)
        while frontier:
            node = frontier.pop()
            for other in (*placement.holders[node], *self._held_by[node]):
                if other not in touched:
                    touched.add(other)
                    frontier.append(other)
        members = sorted(touched)
        local = {node: i for i, node in enumerate(members)}
        view = _SubPlacement(
            len(members), tuple(tuple(local[h] for h in placement.holders[n]) for n in members)
        )
        holdings = {
            local[h]: {local[o]: (it,) for o, it in self.holdings(h).items() if o in local}
            for h in members
        }
        sub = plan_recovery(
            view, {local[n]: k for n, k in failed.items()}, holdings, persistent_iteration
        )
        if sub.iteration is None:
            return ClusterPlan(None, sub.rollback, sub.reason, placement.nodes, ())
        if sub.rollback:
            remote = tuple(Source(n, "persistent", None) for n in range(placement.nodes))
        else:
            remote = tuple(
                Source(members[s.node], s.tier, members[s.from_node])
                for s in sub.sources
                if s.tier != "local" and s.from_node is not None
            )
        return ClusterPlan(sub.iteration, sub.rollback, sub.reason, placement.nodes, remote)


@dataclass(frozen=True)
class ClusterPlan:
    """A ``shared.recovery.RecoveryPlan`` kept compact: only the nodes not restoring locally.

    Attributes:
        iteration, rollback, reason: as in ``RecoveryPlan``.
        nodes: N.
        remote: the sources of the nodes restoring from a peer or from persistent storage;
            every other node restores from its own memory.
    """

    iteration: int | None
    rollback: bool
    reason: str
    nodes: int
    remote: tuple[Source, ...]

    @property
    def sources(self) -> tuple[Source, ...]:
        """Every node's source, as ``RecoveryPlan.sources`` lists them."""
        if self.iteration is None:
            return ()
        by_node = {s.node: s for s in self.remote}
        return tuple(by_node.get(n, Source(n, "local", n)) for n in range(self.nodes))

    def tiers(self) -> dict[str, int]:
        counts = {"local": self.nodes - len(self.remote), "peer": 0, "persistent": 0}
        for source in self.remote:
            counts[source.tier] += 1
        return counts


class StandbyPool:
    """Spare nodes that replace lost ones; refilled by provisioning (module docstring)."""

    def __init__(self, cluster: ClusterConfig, rng: np.random.Generator) -> None:
        self.cluster = cluster
        self.rng = rng
        self.available = cluster.standby_nodes
        self._arrivals: list[float] = []
        self.taken = 0
        self.provisioned = 0

    def acquire(self, now: float) -> float:
        """Time from now until a replacement node is ready."""
        while self._arrivals and self._arrivals[0] <= now:
            heapq.heappop(self._arrivals)
            self.available += 1
        cluster = self.cluster
        if self.available > 0:
            self.available -= 1
            self.taken += 1
            heapq.heappush(self._arrivals, now + cluster.provisioning_delay_s)
            jitter = cluster.replacement_jitter_s * float(self.rng.random())
            return cluster.replacement_s + jitter
        self.provisioned += 1
        return cluster.provisioning_delay_s
