"""The root agent's failure detector: lost nodes and trainer exits, read from the store.

The detector polls three prefixes every ``poll_s``, and watches for silence:

- ``nodes/``: a node it expects whose heartbeat key is gone has lost its lease: a
  **hardware** failure. A node expected but never seen counts as lost once ``lease_timeout_s``
  has passed since it was expected (it never came up).
- ``exits/``: each new exit record is a **software** failure (unless the job told the detector
  to ignore the node, for instance while it is being stopped on purpose).
- ``suspects/``: a trainer left its attempt because a collective broke: a peer is gone. With a
  ``prober`` (:mod:`real.coord.probe`), a new suspect record (or a node found lost) makes the
  detector probe every expected node's agent at once, before it reports what it found; one
  that refuses or does not answer within the bound is a **hardware** failure now, not when its
  lease expires. A new exit record is reported at once, and the same probe of every member
  runs on a thread of its own, its verdict reported by a later poll: a crash's detection does
  not wait for the slowest of all the agents' answers (a node lost with the crash is still
  found by that probe, a poll later). A suspect that nothing explains
  within ``suspect_grace_s`` (no exit, no lost node: a peer hung rather than died) is reported
  as a software failure of the one member that reported nothing (the hung trainer's node; the
  first reporter's when that is ambiguous), so the job is stopped and the hung trainer, which
  cannot leave its collective, is replaced.
- silence (the ``beat`` count in ``nodes/``): a node whose links went silent (a power loss, a
  partition) breaks no collective, its peers only wait on it. With ``silence_s``, an expected
  node whose beat has not advanced for that long (by the detector's own clock: the agents'
  clocks may differ) is probed on a thread of its own, so a probe that waits out its bound
  never holds up the poll; no answer within the bound, and no beat meanwhile, is a
  **hardware** failure. A node that answers is probed again only after as long a silence; a
  slow node, or one stopped for less than the bound, answers and is not lost.

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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from real.coord import keys
from real.coord.kv import KeyValueStore
from shared.recovery import FailureKind

logger = logging.getLogger(__name__)
SNAPSHOT = (keys.NODES_PREFIX, keys.EXITS_PREFIX, keys.SUSPECTS_PREFIX)
"""What one poll reads, at once."""


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
        suspect_grace_s: how long a suspect may stay unexplained before it is a failure.
        silence_s: probe a node whose heartbeat has stood still this long (needs ``prober``);
            None: only the lease finds a silent node.
        collective_timeout_s: how long a trainer's collective waits for a hung peer before it
            fails (``detection.collective_timeout_s``): a hung trainer, found because its
            peers' collectives timed out, is dated this much before the first of them
            reported (None: from that report).
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
        silence_s: float | None = None,
        collective_timeout_s: float | None = None,
    ) -> None:
        self.prober = prober
        self.collective_timeout_s = collective_timeout_s
        self.silence_s = silence_s
        # node -> (its last heartbeat value seen, when this detector first saw it)
        self._heard: dict[int, tuple[tuple[Any, Any], float]] = {}
        self._probed_at: dict[int, float] = {}  # node -> start of its last silence probe
        self._snapshot: dict[str, dict[str, bytes]] | None = None  # the poll's read
        self._silence_probes: dict[int, _BackgroundProbe] = {}
        self._exit_probe: _BackgroundProbe | None = None  # of every member, after an exit
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
        self._drop(node)
        self._ignored.discard(node)

    def forget(self, node: int) -> None:
        """Stop watching ``node`` (it was reported lost, or left the job cleanly)."""
        self._expected.pop(node, None)
        self._drop(node)

    def _drop(self, node: int) -> None:
        self._last_beat.pop(node, None)
        self._heard.pop(node, None)
        self._probed_at.pop(node, None)
        self._silence_probes.pop(node, None)  # a probe under way ends by its bound, unread

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

    def heartbeat_times(self) -> dict[int, float]:
        """``{node: wall time of its last heartbeat}`` for every heartbeat key there is now."""
        return self._heartbeats()

    def poll(self) -> list[Detection]:
        """One look at the store; returns the failures not reported before."""
        # The three prefixes in one read (on etcd one transaction, where it was three round
        # trips on every poll and on every step of a recovery).
        self._snapshot = self.kv.get_prefixes(SNAPSHOT)
        try:
            return self._poll()
        finally:
            self._snapshot = None

    def _poll(self) -> list[Detection]:
        found = self._lost_nodes() + self._new_exits()
        found += self._silent_nodes([d.node for d in found])
        found += self._exit_probe_verdict([d.node for d in found])
        suspects = self._new_suspects()
        if self.prober is not None:
            if suspects or any(d.kind == "hardware" for d in found):
                found += self._probe([d.node for d in found if d.kind == "hardware"])
            elif found and self._exit_probe is None:
                # Only exits: reported now; a node lost with them is found a poll later.
                self._exit_probe = _BackgroundProbe(
                    self.prober, list(self._expected), self.clock(), "exit"
                )
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
                    # Its peers reported once their collective had waited out its timeout:
                    # dated from when they began to wait (a trainer that hung inside that
                    # collective stopped up to its length later).
                    at -= self.collective_timeout_s or 0.0
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

    def _read(self, prefix: str) -> dict[str, bytes]:
        """The prefix as this poll read it (outside a poll: read now)."""
        if self._snapshot is not None and prefix in self._snapshot:
            return self._snapshot[prefix]
        return self.kv.get_prefix(prefix)

    def _heartbeats(self) -> dict[int, float]:
        return {node: at for node, (_, at) in self._read_heartbeats().items()}

    def _read_heartbeats(self) -> dict[int, tuple[Any, float]]:
        """``{node: (beat count, beat time)}`` of every heartbeat key there is now."""
        beats: dict[int, tuple[Any, float]] = {}
        for key, raw in self._read(keys.NODES_PREFIX).items():
            node = keys.node_of(key)
            try:
                value = keys.decode(raw)
                if node is None:
                    raise ValueError("not a node id")
                beats[node] = (value.get("beat"), float(value["time"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                logger.warning("unreadable heartbeat %s = %r", key, raw[:80])
        return beats

    def _lost_nodes(self) -> list[Detection]:
        now = self.clock()
        beats = self._read_heartbeats()
        lost = []
        for node, since in list(self._expected.items()):
            if node in beats:
                self._last_beat[node] = beats[node][1]
                heard = self._heard.get(node)
                if heard is None or heard[0] != beats[node]:
                    self._heard[node] = (beats[node], now)
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

    def _silent_nodes(self, known_lost: list[int]) -> list[Detection]:
        """Read the silence probes that ended; start one for each node silent too long."""
        if self.silence_s is None or self.prober is None:
            return []
        now = self.clock()
        lost = []
        for node, probe in list(self._silence_probes.items()):
            if not probe.done.is_set():
                continue
            del self._silence_probes[node]
            heard = self._heard.get(node)
            if node not in probe.lost or node in known_lost or (heard and heard[1] > probe.started):
                continue  # it answered, another check found it, or it beat meanwhile
            last = self._last_beat.get(node, now)
            lost.append(Detection("hardware", node, None, None, now, last, None, "silence"))
            self.forget(node)
        for node, (_, heard_at) in self._heard.items():
            if node in self._silence_probes or node in known_lost:
                continue
            if now - max(heard_at, self._probed_at.get(node, heard_at)) >= self.silence_s:
                logger.info(
                    "node %d: no heartbeat for %.2f s; probing its agent", node, now - heard_at
                )
                self._probed_at[node] = now
                self._silence_probes[node] = _BackgroundProbe(self.prober, [node], now, "silence")
        return lost

    def clear_suspects(self) -> None:
        """Forget suspects not yet explained: the job was stopped, they belonged to it."""
        self._unexplained.clear()

    def _exit_probe_verdict(self, known_lost: list[int]) -> list[Detection]:
        """The nodes the probe started by an exit found lost, once it has ended (those still
        expected and not found by another check meanwhile)."""
        probe = self._exit_probe
        if probe is None or not probe.done.is_set():
            return []
        self._exit_probe = None
        now = self.clock()
        lost = []
        for node in probe.lost:
            if node not in self._expected or node in known_lost:
                continue
            last = self._last_beat.get(node, now)
            lost.append(Detection("hardware", node, None, None, now, last, None, "probe"))
            self.forget(node)
        return lost

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
        for raw in self._read(keys.SUSPECTS_PREFIX).values():
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
        for key, raw in sorted(self._read(keys.SUSPECTS_PREFIX).items()):
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
        for key, raw in sorted(self._read(keys.EXITS_PREFIX).items()):
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


class _BackgroundProbe:
    """One probe of ``nodes`` (a silent node; every member after an exit) on a daemon thread:
    the probe's own bound ends it, and a result nobody reads any more (the node was forgotten
    meanwhile) is simply dropped. ``lost``: the nodes that did not answer."""

    def __init__(
        self,
        prober: Callable[[list[int]], list[int]],
        nodes: list[int],
        started: float,
        why: str,
    ):
        self.started = started
        self.lost: list[int] = []
        self.done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(prober, nodes, why), name=f"{why}-probe", daemon=True
        )
        self._thread.start()

    def _run(self, prober: Callable[[list[int]], list[int]], nodes: list[int], why: str) -> None:
        try:
            self.lost = list(prober(nodes))
        except Exception:  # a probe that cannot run proves nothing; the lease is the backstop
            logger.exception("nodes %s: %s probe failed", nodes, why)
        finally:
            self.done.set()
