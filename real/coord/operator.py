"""The "cloud operator": replacement nodes from a standby pool, with provisioning delays.

When a node is lost, the root agent asks the operator for a replacement. The model, with the
scenario's ``cluster`` settings:

- The operator keeps ``standby_nodes`` healthy spares ready. Taking one costs
  ``replacement_s`` (plus a uniform ``[0, replacement_jitter_s]``): attaching the node to the
  job (the paper measured 4-7 minutes on AWS).
- Each spare taken is re-ordered at once, so the pool refills itself after
  ``provisioning_delay_s``. A request that finds the pool empty waits for the earliest spare
  still being provisioned (or orders one, when the pool has size 0), then pays
  ``replacement_s`` on top.
- The replacement takes the failed node's **rank** (its place in the placement groups), but is
  a **fresh node**: new id, empty memory. In ``local`` mode a node is just a slot: the
  launcher starts a new agent for the returned id once ``ready_at`` has come.

Node ids are integers: the job's first nodes are ``0..nodes-1`` (id = rank); replacements are
numbered from ``nodes`` upward in the order they are handed out.

The pool's policy is ``shared.standby`` (the simulator uses the same one); this module adds
the wall clock, the thread safety, node ids and ranks.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from shared.scenario import ClusterConfig
from shared.standby import StandbyPool, take_replacement


@dataclass(frozen=True)
class Replacement:
    """A node on its way into the job.

    Attributes:
        node_id: the fresh node's id (the launcher starts its agent under this id).
        node_rank: the rank it takes: the failed node's.
        replaces: the failed node's id.
        source: ``standby`` (taken from the ready pool) or ``provisioned`` (the pool was empty).
        requested_at: when it was requested, s (the operator's clock).
        ready_at: when it can join the job, s (same clock).
    """

    node_id: int
    node_rank: int
    replaces: int
    source: Literal["standby", "provisioned"]
    requested_at: float
    ready_at: float

    @property
    def delay_s(self) -> float:
        """Seconds from the request to the node being ready."""
        return self.ready_at - self.requested_at


class CloudOperator:
    """Hands out replacement nodes; thread-safe.

    Args:
        nodes: the job's node count N (initial ids and ranks ``0..N-1``).
        standby_nodes: spares ready at the start.
        replacement_s: time to bring a ready spare into the job, s.
        provisioning_delay_s: time to provision a new spare, s.
        replacement_jitter_s: uniform extra replacement time in ``[0, jitter]``, s.
        rng: the jitter's random source (seed it for reproducible runs).
        clock: the time source (``time.time`` by default).
    """

    def __init__(
        self,
        nodes: int,
        standby_nodes: int,
        replacement_s: float,
        provisioning_delay_s: float,
        *,
        replacement_jitter_s: float = 0.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (
            ("standby_nodes", standby_nodes),
            ("replacement_s", replacement_s),
            ("provisioning_delay_s", provisioning_delay_s),
            ("replacement_jitter_s", replacement_jitter_s),
        ):
            if value < 0:
                raise ValueError(f"CloudOperator {name} must be >= 0, got {value}")
        if nodes < 1:
            raise ValueError(f"CloudOperator nodes must be >= 1, got {nodes}")
        self.standby_nodes = standby_nodes
        self.replacement_s = replacement_s
        self.provisioning_delay_s = provisioning_delay_s
        self.replacement_jitter_s = replacement_jitter_s
        self.rng = rng or random.Random(0)
        self.clock = clock
        self._lock = threading.Lock()
        self._rank_of = {node: node for node in range(nodes)}
        self._next_id = nodes
        self._pool = StandbyPool.full(standby_nodes, clock())
        self.replacements: list[Replacement] = []

    @classmethod
    def from_scenario(
        cls,
        cluster: ClusterConfig,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> CloudOperator:
        """An operator with the scenario's ``cluster`` settings."""
        return cls(
            cluster.nodes,
            cluster.standby_nodes,
            cluster.replacement_s,
            cluster.provisioning_delay_s,
            replacement_jitter_s=cluster.replacement_jitter_s,
            rng=rng,
            clock=clock,
        )

    def standby_ready(self, now: float | None = None) -> int:
        """Spares ready to be taken at ``now`` (default: the clock)."""
        at = self.clock() if now is None else now
        with self._lock:
            return self._pool.ready(at)

    def rank_of(self, node_id: int) -> int:
        """The rank a node holds (or held)."""
        try:
            return self._rank_of[node_id]
        except KeyError:
            raise ValueError(f"node {node_id} is not part of this job") from None

    def request_replacement(self, failed_node: int, now: float | None = None) -> Replacement:
        """A fresh node to take ``failed_node``'s rank, and when it is ready.

        Raises:
            ValueError: ``failed_node`` is not one of the job's nodes.
        """
        at = self.clock() if now is None else now
        with self._lock:
            rank = self.rank_of(failed_node)
            # Which spare, and when it is in: the policy the simulator uses too.
            timing = take_replacement(
                self._pool,
                at,
                replacement_s=self.replacement_s,
                provisioning_delay_s=self.provisioning_delay_s,
                replacement_jitter_s=self.replacement_jitter_s,
                uniform=self.rng.random(),
            )
            self._pool = timing.pool
            source, ready_at = timing.source, timing.ready_at_s
            node_id = self._next_id
            self._next_id += 1
            self._rank_of[node_id] = rank
            replacement = Replacement(node_id, rank, failed_node, source, at, ready_at)
            self.replacements.append(replacement)
            return replacement

    def wait_ready(self, replacement: Replacement, stop: threading.Event | None = None) -> bool:
        """Sleep until ``replacement.ready_at`` (wall clock); False if ``stop`` was set first."""
        stop = stop or threading.Event()
        while (left := replacement.ready_at - self.clock()) > 0:
            if stop.wait(min(left, 0.5)):
                return False
        return True
