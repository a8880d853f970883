"""The agent side of failure detection: a heartbeat lease, and trainer exits reported at once.

**Hardware failures** (a node's processes, memory or link gone) cannot be reported by the node
itself; they are noticed by silence. Each agent holds a lease of ``lease_timeout_s`` and, every
``heartbeat_interval_s``, refreshes it and rewrites ``nodes/<id>`` (bound to the lease) with
the beat's time. When the node dies, the refreshes stop and the key vanishes when the lease
runs out: at most ``lease_timeout_s`` after the last beat (plus the store's expiry slack).
The root's :class:`~real.coord.detector.FailureDetector` sees it gone.

**Software failures** (a trainer crashes, the node is fine) are reported by the agent that
watches the trainer, the moment its process exits: :func:`report_exit` writes
``exits/<node>/<rank>``, which the detector reads on its next poll (a fraction of a second).

A heartbeat whose lease expired while the agent still lives (a long pause of the agent alone,
or a whole lease without reaching the store) grants a new lease and writes its key again; by
then the root may have declared the node lost, and a node declared lost stays lost for the job
(its replacement has taken its rank). So the agent **fences** itself as soon as it sees
``lease_lost``: it stops its trainers and leaves, before the others restart without it, rather
than train on as a second copy of its rank. Whether the lease ran out is the store's answer to
the refresh, on the store's clock: a pause of the whole machine expires no lease
(:class:`~real.coord.kvserver.StoreClock`), while an agent that cannot reach the store for a
whole lease (a partition, a store stopped alone) fences itself; until 2026-12-06 an agent fenced
itself after any whole lease between two beats by its own clock, and a 9 s pause of our
development machine made every agent do so at once, which ended the job.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from real.coord import keys
from real.coord.kv import KeyValueStore, Lease
from shared.errors import KVError

logger = logging.getLogger(__name__)


class Heartbeat:
    """Keeps ``nodes/<node_id>`` alive from a background thread.

    Args:
        kv: the coordination store.
        node_id: this node.
        interval_s: beat period (scenario ``detection.heartbeat_interval_s``).
        lease_timeout_s: lease TTL (scenario ``detection.lease_timeout_s``); must exceed
            ``interval_s``, better by a factor of 3 or more so one late beat is harmless.
    """

    def __init__(
        self, kv: KeyValueStore, node_id: int, interval_s: float, lease_timeout_s: float
    ) -> None:
        if not 0 < interval_s < lease_timeout_s:
            raise ValueError(
                f"heartbeat interval_s ({interval_s}) must be positive and below "
                f"lease_timeout_s ({lease_timeout_s})"
            )
        self.kv = kv
        self.node_id = node_id
        self.interval_s = interval_s
        self.lease_timeout_s = lease_timeout_s
        self.beats = 0
        self.last_beat = time.monotonic()
        self.lease_lost = False
        self._lease: Lease | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        """Write the first beat now (so the node is visible on return), then beat on."""
        if self._thread is not None:
            return self
        self._beat()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.node_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, *, revoke: bool = True) -> None:
        """Stop beating. ``revoke=True`` (a clean exit) removes the key at once;
        ``revoke=False`` leaves it to expire, which is what a crash looks like."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.interval_s * 4 + 5)
        lease, self._lease = self._lease, None
        if revoke and lease is not None:
            try:
                lease.revoke()
            except KVError as error:
                logger.warning("node %d: could not revoke heartbeat lease: %s", self.node_id, error)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
            except KVError as error:
                logger.warning("node %d: heartbeat failed: %s", self.node_id, error)

    def _beat(self) -> None:
        # The store's answer decides whether the lease ran out: its clock, not ours, counts
        # (a pause of the whole machine, store included, expires nothing: kvserver's
        # StoreClock). Only while no answer comes does our own clock decide: cut off from the
        # store for a whole lease, the root may have replaced us.
        try:
            refreshed = self._lease.refresh() if self._lease is not None else True
        except KVError:
            if time.monotonic() - self.last_beat > self.lease_timeout_s:
                self.lease_lost = True
            raise
        if not refreshed:
            logger.warning("node %d: heartbeat lease had expired; rejoining", self.node_id)
            self.lease_lost = True
            self._lease = None
        if self._lease is None:
            self._lease = self.kv.grant_lease(self.lease_timeout_s)
        self.beats += 1
        value = {"node": self.node_id, "pid": os.getpid(), "beat": self.beats, "time": time.time()}
        self.kv.put(keys.node_key(self.node_id), keys.encode(value), self._lease)
        self.last_beat = time.monotonic()


def report_exit(
    kv: KeyValueStore, node: int, rank: int, exitcode: int | None, *, at: float | None = None
) -> None:
    """Report that trainer ``rank`` on ``node`` exited (software failure, or a clean end).

    Args:
        kv: the coordination store.
        node: the node the trainer ran on.
        rank: the trainer's global rank.
        exitcode: its exit status; negative for a signal (``-9``: SIGKILL), as
            ``subprocess`` reports it; None if unknown.
        at: wall time of the exit (default: now); the detector measures latency from it.
    """
    value = {
        "node": node,
        "rank": rank,
        "exitcode": exitcode,
        "time": time.time() if at is None else at,
    }
    kv.put(keys.exit_key(node, rank), keys.encode(value))
