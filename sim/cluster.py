"""The cluster's state between failures: what each node holds in CPU memory, and spare nodes.

**Checkpoint memory.** Between failures every node holds the same thing: after the first
in-memory checkpoint commits since the last restore, each node holds iteration c of its own
shard and of every shard the placement gives it; before that, each node holds what the restore
left (its own restored iteration, and any replica of that iteration that survived). On top of
that, with ``checkpoint.commit: on_arrival``, each node's store reports its own shard of a
newer iteration as soon as its capture has finished, before its replicas are stored: the
*captured* iteration, the same on every node. (A replica counts once it is received and
verified, which in the simulator is the instant its checkpoint commits, so replicas only ever
hold committed iterations.) So the holdings are kept as one of two compact states, plus the
captured iteration, and expanded only for the nodes that matter.

With ``checkpoint.local_slots: 1`` a node's own shard has one slot: a capture replaces the
committed iteration there, so a node holds its own shard of the captured iteration only (the
committed one stays on the peers), and a restore of an older iteration than the captured one
reads every shard from a peer and leaves no own shard in memory until the next capture. The
copy's own duration (the window in which the slot holds neither, inside ``save()``) is not
modelled: captures are instantaneous, as in ``Timeline.captured_by``.

A restore of a captured iteration that had not committed leaves, in the real engine, that
iteration in each node's own memory and replicas of the older committed iteration on the
peers. The simulator keeps it conservatively, as after a persistent restore: every node holds
its own shard of the restored iteration and no replicas, so a lost node rolls back to
persistent storage until the next commit.

**Recovery planning** is ``shared.recovery.plan_recovery``, called on the part of the cluster
a failure touches: the placement groups of the failed nodes plus one untouched group standing
for all the others (every untouched node holds exactly the same iterations of its own shard,
so one of them answers for all). The plan for that sub-cluster is the plan for the whole
cluster, with every untouched node restoring locally; ``tests/unit/test_sim_cluster.py`` checks
that against the full call. This keeps a 10,000-node failure as cheap as a 16-node one.

**Standby pool.** A hardware failure takes a spare as ``shared.standby`` decides (the same
policy as the real harness's cloud operator): the earliest ready spare, joining after
``replacement_s`` plus a uniform jitter; each spare taken is re-ordered and ready
``provisioning_delay_s`` later; with no spare ready, the request waits for the first on order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shared.placement import Placement
from shared.recovery import FailureKind, Source, plan_recovery
from shared.scenario import ClusterConfig
from shared.standby import StandbyPool as SharedPool
from shared.standby import take_replacement


@dataclass(frozen=True)
class _SubPlacement:
    """A relabelled part of a placement, shaped like ``shared.recovery.PlacementView``."""

    nodes: int
    holders: tuple[tuple[int, ...], ...]


class ClusterMemory:
    """Which iterations each node holds in CPU memory (see the module docstring)."""

    def __init__(self, placement: Placement, local_slots: int = 2) -> None:
        self.placement = placement
        self.local_slots = local_slots
        # local_slots 1: whether each node's one slot still holds the iteration in _iteration
        # (False after a restore read it from the peers over a newer capture).
        self._own_held = True
        held_by: list[list[int]] = [[] for _ in range(placement.nodes)]
        for owner, holders in enumerate(placement.holders):
            for holder in holders[1:]:
                held_by[holder].append(owner)
        self._held_by = tuple(tuple(owners) for owners in held_by)
        self._iteration: int | None = None  # every node holds this iteration of its own shard
        # ... and of the shards it holds for peers, except these holders (None: every holder).
        self._without_replicas: set[int] | None = None
        # Every node also holds this newer iteration of its own shard only (captured, its
        # replicas not all stored), or None.
        self._captured: int | None = None

    def commit(self, iteration: int) -> None:
        """Every node now holds ``iteration`` of its own shard and of its replicas."""
        self._iteration, self._without_replicas = iteration, set()
        self._own_held = True
        if self._captured is not None and self._captured <= iteration:
            self._captured = None

    def capture(self, iteration: int) -> None:
        """Every node now also holds ``iteration`` of its own shard, captured but not committed.

        Nothing changes when ``iteration`` is not newer than the committed (or restored)
        iteration, which every node holds already.
        """
        if self._iteration is None or iteration > self._iteration:
            self._captured = iteration

    def holdings(self, holder: int) -> dict[int, tuple[int, ...]]:
        """owner -> iterations held complete by ``holder`` (as ``plan_recovery`` takes them)."""
        own = tuple(it for it in (self._iteration, self._captured) if it is not None)
        if self.local_slots == 1:  # the one slot: the capture replaced the committed iteration
            own = own[-1:] if self._captured is not None or self._own_held else ()
        held = {holder: own} if own else {}
        if (
            self._iteration is not None
            and self._without_replicas is not None
            and holder not in self._without_replicas
        ):
            for owner in self._held_by[holder]:
                held[owner] = (self._iteration,)
        return held

    def restored(self, iteration: int | None, lost: Sequence[int]) -> None:
        """After every node restored ``iteration``: own shards, plus surviving replicas of it.

        A restored committed iteration keeps its replicas, except those the ``lost`` nodes
        held. A restored captured iteration that had not committed, or a persistent one,
        leaves every node its own shard only (see the module docstring).

        Args:
            iteration: the restored iteration (None: training restarts from scratch).
            lost: nodes replaced after a hardware failure; they hold their own shard only.
        """
        if self.local_slots == 1 and self._captured is not None and iteration != self._captured:
            self._own_held = False  # read from the peers; the newer capture is dropped
        self._captured = None
        if iteration is None:
            self._iteration, self._without_replicas = None, None
        elif iteration == self._iteration and self._without_replicas is not None:
            self._without_replicas.update(lost)
        else:  # captured only, or persistent: replicas of it are nowhere in memory
            self._iteration, self._without_replicas = iteration, None

    def plan(
        self, failed: Mapping[int, FailureKind], persistent_iteration: int | None
    ) -> ClusterPlan:
        """``shared.recovery.plan_recovery`` for the whole cluster, computed on its touched part."""
        placement = self.placement
        touched: set[int] = set()
        for node in failed:
            touched.update(placement.group_of(node))
        if self.local_slots == 1 and self._without_replicas:
            # One local slot: an untouched node may have to read its own shard from a peer,
            # so the nodes without replicas are not like the others.
            touched.update(self._without_replicas)
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
            local[h]: {local[o]: its for o, its in self.holdings(h).items() if o in local}
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
            standing = sub.sources[local[untouched]] if untouched is not None else None
            if standing is not None and standing.tier == "peer":
                # local_slots 1: the untouched nodes hold only a newer capture of their own
                # shard; each reads it from the holder in the place shared's plan chose for
                # the one standing for them.
                assert untouched is not None and standing.from_node is not None
                place = placement.holders[untouched].index(members[standing.from_node])
                remote += tuple(
                    Source(n, "peer", placement.holders[n][place])
                    for n in range(placement.nodes)
                    if n not in local
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
    """Spare nodes that replace lost ones: the shared policy (``shared.standby``) in sim time."""

    def __init__(self, cluster: ClusterConfig, rng: np.random.Generator) -> None:
        self.cluster = cluster
        self.rng = rng
        self.pool = SharedPool.full(cluster.standby_nodes)
        self.taken = 0
        self.provisioned = 0

    def acquire(self, now: float) -> tuple[float, str]:
        """Time from now until a replacement node is ready, and where it comes from
        ("standby": a ready spare; "provisioned": it waited for one)."""
        cluster = self.cluster
        timing = take_replacement(
            self.pool,
            now,
            replacement_s=cluster.replacement_s,
            provisioning_delay_s=cluster.provisioning_delay_s,
            replacement_jitter_s=cluster.replacement_jitter_s,
            uniform=float(self.rng.random()),
        )
        self.pool = timing.pool
        if timing.source == "standby":
            self.taken += 1
        else:
            self.provisioned += 1
        return timing.ready_at_s - now, timing.source
