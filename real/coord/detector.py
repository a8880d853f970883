"""The root agent's failure detector: lost nodes and trainer exits, read from the store.

The detector polls two prefixes every ``poll_s``:

- ``nodes/``: a node it expects whose heartbeat key is gone has lost its lease: a
  **hardware** failure. A node expected but never seen counts as lost once ``lease_timeout_s``
  has passed since it was expected (it never came up).
- ``exits/``: each new exit record is a **software** failure (unless the job told the detector
  to ignore the node, for instance while it is being stopped on purpose).
- ``suspects/``: a trainer left its attempt because a collective broke: a peer is gone. With a
  ``prober`` (:mod:`real.coord.probe`), a new exit or suspect record makes the detector probe
  every expected node's agent at once; one that refuses or does not answer within the bound
  is a **hardware** failure now, not when its lease expires. A suspect that nothing explains
  within ``suspect_grace_s`` (no exit, no lost node: a peer hung rather than died) is reported
  as a software failure of the one member that reported nothing (the hung trainer's node; the
  first reporter's when that is ambiguous), so the job is stopped and the hung trainer, which
  cannot leave its collective, is replaced.

Each failure is reported once, as a :class:`Detection`, with the detection latency the root
can know: for an exit, from the exit (the agent's timestamp) to its detection; for a lost node,
from its last heartbeat to its detection, an upper bound of failure-to-detection (the node died
somewhere after its last beat). These feed the ``failure_detected`` event the root agent
records (it alone knows which injected failure a detection belongs to).

Detection is mechanism, not policy: it decides nothing about recovery, so it lives here and
not in ``shared/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from real.coord import keys
from real.coord.kv import KeyValueStore
from shared.recovery import FailureKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    """One failure the detector noticed.

    Attributes:
        kind: ``hardware`` (the node's heartbeat lease expired) or ``software`` (a trainer
            exit was reported).
        node: the failed node.
        rank: the exited trainer's rank (software only).
        exitcode: its exit status, negative for a signal (software only).
        detected_at: wall time the detector noticed it, s.
        last_seen_at: wall time of the exit (software) or of the node's last heartbeat
            (hardware), s.
        key: the store key it was read from (``exits/...``), for :meth:`FailureDetector.clear`.
    """

    kind: FailureKind
    node: int
    rank: int | None
    exitcode: int | None
    detected_at: float
    last_seen_at: float
    key: str | None = None
    detected_by: str = ""

    @property
    def latency_s(self) -> float:
        """Seconds from the exit (or the last heartbeat) to detection."""
        return max(0.0, self.detected_at - self.last_seen_at)

    def event_details(self) -> dict[str, Any]:
        """Details for the ``failure_detected`` event (add ``failure``: the failure's index)."""
        details: dict[str, Any] = {
            "failure_kind": self.kind,
            "detection_latency_s": round(self.latency_s, 6),
        }
        if self.exitcode is not None:
            details["exitcode"] = self.exitcode
        if self.detected_by:
            details["detected_by"] = self.detected_by
        return details


class FailureDetector:
    """Polls the store for lost nodes and reported exits.

    Args:
        kv: the coordination store.
        lease_timeout_s: the heartbeat lease TTL; a node expected but never seen for this long
            is lost.
        expected_nodes: nodes to watch from the start.
        poll_s: the polling period of :meth:`wait`.
        clock: wall clock (``time.time``); injectable for tests.
        prober: given node ids, returns those whose agent does not answer a probe.
    """

    def __init__(
        self,
        kv: KeyValueStore,
        lease_timeout_s: float,
        expected_nodes: Iterable[int] = (),
        *,
        poll_s: float = 0.1,
        clock: Callable[[], float] = time.time,
        prober: Callable[[list[int]], list[int]] | None = None,
        suspect_grace_s: float = 2.0,
    ) -> None:
        self.prober = prober
        self.suspect_grace_s = suspect_grace_s
        # The attempt running now (the root sets it): a suspect of an older attempt, left by a
        # survivor whose collective broke late, says nothing about the current one.
        self.attempt: int | None = None
        self._unexplained: list[tuple[str, float, int, int]] = []
        self._reported_suspects: set[tuple[str, float]] = set()
        self.kv = kv
        self.lease_timeout_s = lease_timeout_s
        self.poll_s = poll_s
        self.clock = clock
        self._expected: dict[int, float] = {}  # node -> when we started expecting it
        self._last_beat: dict[int, float] = {}  # node -> time of its last heartbeat seen
        self._reported_exits: set[tuple[str, float]] = set()
        self._ignored: set[int] = set()
        for node in expected_nodes:
            self.expect(node)

    def expect(self, node: int) -> None:
        """Watch ``node`` (a new or replacement node) from now on."""
        self._expected[node] = self.clock()
        self._last_beat.pop(node, None)
        self._ignored.discard(node)

    def forget(self, node: int) -> None:
        """Stop watching ``node`` (it was reported lost, or left the job cleanly)."""
        self._expected.pop(node, None)
        self._last_beat.pop(node, None)

    def ignore_exits(self, node: int, ignore: bool = True) -> None:
        """Do not report exits of ``node`` (the root is stopping its trainers on purpose)."""
        if ignore:
            self._ignored.add(node)
        else:
            self._ignored.discard(node)

    @property
    def expected_nodes(self) -> list[int]:
        return sorted(self._expected)

    def alive_nodes(self) -> list[int]:
        """Nodes whose heartbeat key exists now (expected or not)."""
        return sorted(self._heartbeats())

    def poll(self) -> list[Detection]:
        """One look at the store; returns the failures not reported before."""
        found = self._lost_nodes() + self._new_exits()
        suspects = self._new_suspects()
        if self.prober is not None and (suspects or found):
            found += self._probe([d.node for d in found if d.kind == "hardware"])
        if found:
            self._unexplained.clear()  # the suspects saw this failure
        elif self._unexplained:
            key, at, node, reporter = self._unexplained[0]
            rank: int | None = reporter
            now = self.clock()
            if now - at >= self.suspect_grace_s:
                self._unexplained.clear()
                silent = self._silent_member()
                if silent is not None:  # the hung trainer's node: the one that never reported
                    node, rank = silent, None
                found = [Detection("software", node, rank, None, now, at, key, "suspect")]
        for detection in found:
            logger.info(
                "node %d rank %s: %s failure detected (%.3f s)",
                detection.node,
                detection.rank,
                detection.kind,
                detection.latency_s,
            )
        return found

    def wait(self, timeout_s: float, stop: Callable[[], bool] | None = None) -> list[Detection]:
        """Poll until something fails, ``timeout_s`` passes, or ``stop()`` is true."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.poll()
            if found or time.monotonic() >= deadline or (stop is not None and stop()):
                return found
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def clear(self, detection: Detection) -> None:
        """Delete a handled exit record, so a restarted trainer starts with a clean slate."""
        if detection.key is not None:
            self.kv.delete(detection.key)

    def _heartbeats(self) -> dict[int, float]:
        beats: dict[int, float] = {}
        for key, raw in self.kv.get_prefix(keys.NODES_PREFIX).items():
            try:
                value = keys.decode(raw)
                beats[int(key[len(keys.NODES_PREFIX) :])] = float(value["time"])
            except (ValueError, KeyError, TypeError):
                logger.warning("unreadable heartbeat %s = %r", key, raw[:80])
        return beats

    def _lost_nodes(self) -> list[Detection]:
        now = self.clock()
        beats = self._heartbeats()
        lost = []
        for node, since in list(self._expected.items()):
            if node in beats:
                self._last_beat[node] = beats[node]
                continue
            last = self._last_beat.get(node)
            if last is None and now - since < self.lease_timeout_s:
                continue  # not up yet; give it one lease timeout
            lost.append(
                Detection(
                    "hardware",
                    node,
                    None,
                    None,
                    now,
                    last if last is not None else since,
                    None,
                    "lease",
                )
            )
            self.forget(node)
        return lost

    def clear_suspects(self) -> None:
        """Forget suspects not yet explained: the job was stopped, they belonged to it."""
        self._unexplained.clear()

    def _probe(self, known_lost: list[int]) -> list[Detection]:
        assert self.prober is not None
        candidates = [n for n in self._expected if n not in known_lost]
        lost = self.prober(candidates)
        now = self.clock()
        detections = []
        for node in lost:
            last = self._last_beat.get(node, now)
            detections.append(Detection("hardware", node, None, None, now, last, None, "probe"))
            self.forget(node)
        return detections

    def _silent_member(self) -> int | None:
        """The one expected node none of whose trainers reported a broken collective.

        A hung trainer cannot report: its peers' collectives time out and each of their
        agents writes a suspect record naming itself. When exactly one member stayed silent,
        that is the hung trainer's node; otherwise (several silent, or several local ranks)
        the first reporter stands for the failure.
        """
        reporters = set()
        for raw in self.kv.get_prefix(keys.SUSPECTS_PREFIX).values():
            try:
                value = keys.decode(raw)
                node, attempt = int(value["node"]), value.get("attempt")
            except (ValueError, KeyError, TypeError):
                continue
            if self.attempt is None or attempt == self.attempt:
                reporters.add(node)
        silent = [n for n in self._expected if n not in reporters and n not in self._ignored]
        return silent[0] if len(silent) == 1 and reporters else None

    def _new_suspects(self) -> list[str]:
        new = []
        for key, raw in sorted(self.kv.get_prefix(keys.SUSPECTS_PREFIX).items()):
            try:
                value = keys.decode(raw)
                at, node, rank = float(value["time"]), int(value["node"]), int(value["rank"])
                attempt = value.get("attempt")
            except (ValueError, KeyError, TypeError):
                continue
            if (key, at) not in self._reported_suspects:
                self._reported_suspects.add((key, at))
                stale = self.attempt is not None and attempt != self.attempt
                if node not in self._ignored and not stale:
                    new.append(key)
                    self._unexplained.append((key, at, node, rank))
        return new

    def _new_exits(self) -> list[Detection]:
        now = self.clock()
        exits = []
        for key, raw in sorted(self.kv.get_prefix(keys.EXITS_PREFIX).items()):
            try:
                value = keys.decode(raw)
                node, rank, at = int(value["node"]), int(value["rank"]), float(value["time"])
                code = value.get("exitcode")
                exitcode = int(code) if code is not None else None
            except (ValueError, KeyError, TypeError):
                logger.warning("unreadable exit record %s = %r", key, raw[:80])
                continue
            if (key, at) in self._reported_exits:
                continue
            self._reported_exits.add((key, at))  # an ignored exit is not reported later either
            if node in self._ignored:
                continue
            exits.append(Detection("software", node, rank, exitcode, now, at, key, "exit"))
        return exits
