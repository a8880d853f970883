"""Electing the root agent through the key-value store, and re-electing it when it dies.

Every agent is a candidate. A candidate holds a lease of ``ttl_s`` seconds, refreshed by a
background thread every ``ttl_s / 3``, and tries every ``poll_s`` to *create* the leader key
``election/leader`` bound to that lease. Creation is atomic (create-if-absent), so exactly one
candidate wins; the others keep trying. When the leader dies, its refreshes stop, its lease
expires, the key vanishes, and the next attempt of some candidate succeeds. A new leader
therefore exists at most

    ttl_s (the dead leader's lease running out) + poll_s (the next attempt) + the store's
    expiry slack (etcd: up to ~0.5 s and TTLs rounded up to whole seconds; embedded: 0)

after the old one died; sooner when a candidate proves the leader dead (:meth:`Election.depose`:
its agent's process refuses connections) and revokes its lease. A leader that stalls past its
own TTL (a long pause) finds its lease
expired, steps down, and campaigns again like everyone else; ``is_leader()`` is checked
against the store on every tick, so at most one agent believes it leads, up to one tick.

Which candidate wins the job's first election is set, not raced: the agent of the lowest
node (slot 0, ``shared.failure_kinds.initial_root``, where the simulator puts the root) campaigns
at once, and every other agent holds back (``hold_s``) until a leader exists or ``hold_s`` has
passed. Agents start one after the other and import at different speeds, so without the hold
the first agent up won, and a scenario that loses "node 3" lost the root in one face and a
plain member in the other.

The winner records a ``root_elected`` event (details: ``previous``, the leader it replaced if
it saw one, and ``campaign_s``, how long it campaigned).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from real.coord import keys
from real.coord.kv import KeyValueStore, Lease
from real.engine.eventlog import EventLog
from shared.errors import KVError

logger = logging.getLogger(__name__)


class Election:
    """One candidate in the root-agent election.

    Args:
        kv: the coordination store.
        node_id: this candidate's node.
        ttl_s: lease time to live, s: how long a dead leader keeps the key.
        poll_s: how often a candidate retries; default ``ttl_s / 4``.
        key: the leader key.
        events: where ``root_elected`` goes (None: nowhere).
        on_change: called from the background thread with True when this candidate becomes
            leader and False when it stops being leader.
        hold_s: for this long after :meth:`campaign`, do not try for the key while nobody
            holds it: a preferred candidate (the job's first root) is still starting. After
            a leader was seen, or once ``hold_s`` has passed, campaign as usual.
    """

    def __init__(
        self,
        kv: KeyValueStore,
        node_id: int,
        ttl_s: float,
        *,
        poll_s: float | None = None,
        key: str = keys.LEADER_KEY,
        events: EventLog | None = None,
        on_change: Callable[[bool], None] | None = None,
        hold_s: float = 0.0,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"Election ttl_s must be positive, got {ttl_s}")
        self.kv = kv
        self.node_id = node_id
        self.ttl_s = ttl_s
        self.poll_s = poll_s if poll_s is not None else ttl_s / 4
        if not 0 < self.poll_s < ttl_s:
            raise ValueError(f"Election poll_s ({self.poll_s}) must be in (0, ttl_s={ttl_s})")
        if hold_s < 0:
            raise ValueError(f"Election hold_s must be >= 0, got {hold_s}")
        self.hold_s = hold_s
        self._hold_until = 0.0  # monotonic; set by campaign()
        self.key = key
        self.events = events
        self.on_change = on_change
        self._lease: Lease | None = None
        self._value: bytes | None = None
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()  # try now, not at the next tick
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._last_refresh = 0.0
        self._seen_leader: int | None = None

    @property
    def failover_bound_s(self) -> float:
        """Longest time from the leader's death to a new leader, excluding store slack."""
        granted = self._lease.ttl_s if self._lease is not None else self.ttl_s
        return granted + self.poll_s

    def campaign(self, timeout_s: float | None = None) -> bool:
        """Join the election (once) and wait up to ``timeout_s`` to win it.

        Returns at once with ``timeout_s=0``; the candidate keeps campaigning in the background
        either way. Returns whether this candidate is the leader now.
        """
        if self._thread is None:
            self._stop.clear()
            self._started_at = time.time()
            self._hold_until = time.monotonic() + self.hold_s
            self._thread = threading.Thread(
                target=self._run, name=f"election-{self.node_id}", daemon=True
            )
            self._thread.start()
        return self._leader.wait(timeout_s)

    def is_leader(self) -> bool:
        """Whether this candidate holds the leader key (as of its last tick)."""
        return self._leader.is_set()

    def leader(self) -> int | None:
        """The node that holds the leader key now, read from the store; None if nobody."""
        holder = self._holder()
        return None if holder is None else holder[0]

    def _holder(self) -> tuple[int, int] | None:
        """(node, lease id) of the leader key now; None if nobody holds it."""
        raw = self.kv.get(self.key)
        if raw is None:
            return None
        try:
            current = keys.decode(raw)
            return int(current["node"]), int(current["lease"])
        except (ValueError, KeyError, TypeError):
            logger.warning("node %d: unreadable leader key %r", self.node_id, raw[:80])
            return None

    def depose(self, node_id: int) -> bool:
        """End the leadership of ``node_id``, known to be dead (its agent's process refuses
        connections), instead of waiting up to ``ttl_s`` for its lease to run out: its lease is
        revoked, the leader key vanishes, and every candidate may win at once (this one tries
        now). Returns whether ``node_id`` led and was deposed.

        Only a refused connection proves death: a partitioned or stopped leader does not
        answer either, and is left to its lease (it may still believe it leads until then).
        """
        holder = None if node_id == self.node_id else self._holder()
        if holder is None or holder[0] != node_id:
            return False
        lease_id = holder[1]
        self.kv.revoke_lease(lease_id)
        logger.warning(
            "node %d: the root (node %d) is gone; its election lease %d revoked",
            self.node_id,
            node_id,
            lease_id,
        )
        self._seen_leader = node_id
        self._wake.set()
        return True

    def resign(self) -> None:
        """Stop campaigning and give up the lease: the key vanishes now, others take over."""
        self._halt()
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                lease.revoke()
            except KVError as error:
                logger.warning("node %d: could not revoke election lease: %s", self.node_id, error)
        self._set_leader(False)

    def abandon(self) -> None:
        """Stop campaigning without revoking: the lease runs out as if this process died."""
        self._halt()
        self._lease = None
        self._leader.clear()

    close = resign

    def _halt(self) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10 * self.poll_s + 5)

    def _run(self) -> None:
        tick = min(self.poll_s, self.ttl_s / 3)
        while not self._stop.is_set():
            try:
                self._tick()
            except KVError as error:
                logger.warning("node %d: election store error: %s", self.node_id, error)
            self._wake.wait(tick)
            self._wake.clear()

    def _tick(self) -> None:
        now = time.monotonic()
        if self._lease is not None and now - self._last_refresh >= self._lease.ttl_s / 3:
            if self._lease.refresh():
                self._last_refresh = now
            else:
                logger.warning("node %d: election lease expired", self.node_id)
                self._lease = None
        if self._lease is None:
            self._lease = self.kv.grant_lease(self.ttl_s)
            self._last_refresh = time.monotonic()
            self._set_leader(False)
        if self.is_leader():
            if self.kv.get(self.key) != self._value:
                logger.warning("node %d: lost the leader key", self.node_id)
                self._set_leader(False)
            return
        if self._hold_until and now < self._hold_until:
            current = self.leader()
            if current is None:
                return  # the preferred candidate may still be starting
            self._seen_leader = current
            self._hold_until = 0.0  # a leader exists: from now on, an ordinary candidate
            return
        value = keys.encode({"node": self.node_id, "lease": self._lease.id, "pid": os.getpid()})
        if self.kv.create(self.key, value, self._lease):
            self._value = value
            self._set_leader(True)
        else:
            current = self.leader()
            if current is not None:
                self._seen_leader = current

    def _set_leader(self, leading: bool) -> None:
        if leading == self._leader.is_set():
            return
        if leading:
            self._leader.set()
            campaign_s = time.time() - self._started_at
            logger.info("node %d: elected root after %.3f s", self.node_id, campaign_s)
            if self.events is not None:
                self.events.emit(
                    "root_elected",
                    node=self.node_id,
                    previous=self._seen_leader,
                    campaign_s=round(campaign_s, 6),
                )
        else:
            self._leader.clear()
        if self.on_change is not None:
            self.on_change(leading)
