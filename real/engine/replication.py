"""Replication: sealing a capture, streaming it to the peers' stores, and committing it.

After ``save()`` has copied the state into the in-progress slot, a background sender finishes
the checkpoint:

1. **seal**: xxh3_64 checksums of every data block and the JSON manifest, written to the slot;
2. **send**: for each peer that the placement (``shared.placement``) names, ``put_begin`` with
   the manifest, the data in chunks (each with its own checksum), ``put_end``; the peer verifies
   every chunk and every block and acks (the replica is *prepared*);
3. **commit**: only when the local copy is sealed and all ``m - 1`` replicas are prepared, the
   local slot's generation is written (the checkpoint is committed), then each peer is told to
   commit its replica. A failed or refused replica leaves the checkpoint uncommitted and the
   previous one in place. With ``checkpoint.commit: on_arrival`` (the default) this happens as
   soon as the last replica is prepared; with ``next_iteration_end`` the prepared checkpoint
   waits for the next ``save()``, the end of the next iteration (the paper's accounting), and a
   checkpoint still prepared when the job ends or fails never counts.

*When* chunks go is the traffic mode. ``blocking``: everything right inside ``save()``, training
waits. ``interleaved``: until the profiler (:mod:`real.engine.profiler`) has seen
``profiling_iterations`` iterations, right after ``save()`` in the background; afterwards by the
plan of ``shared.scheduling.plan_traffic``: each chunk waits for its idle span, measured from
the iteration's start. Chunks that missed their spans, and the plan's spill, go when the next
``save()`` asks for the previous checkpoint to finish (the paper's "delays the next update").
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import xxhash

from real.engine import compress
from real.engine.capture import Captured, Capturer
from real.engine.client import StoreClient, TimedHasher
from real.engine.costs import Costs
from real.engine.eventlog import EventLog
from real.engine.manifest import BlockHasher, seal, seal_with
from real.engine.profiler import CommProfiler
from real.trainer.inprocess import wait_collective
from shared.adaptive import IntervalController, IntervalDecision, tile_spans
from shared.compression import CodecMeasurement, CompressionDecision, decide, wire_bytes
from shared.errors import AttemptAborted, NodeStoreError
from shared.placement import Placement
from shared.scenario import Scenario
from shared.scheduling import Chunk, IdleSpan, TrafficPlan, plan_traffic

log = logging.getLogger(__name__)
Tamper = Callable[[int, int, memoryview], bytes | memoryview]
Hook = Callable[[str, int], None]
CODEC_REMEASURE = 50  # checkpoints between two measurements of the codec on the state
WAIT_CHECK_S = 0.01
"""How often a ``wait`` given a ``check`` calls it (an abort's agent message is read by then)."""


class ReplicationManager:
    """Seals, replicates and commits one rank's checkpoints.

    Args:
        scenario: m, traffic mode, buffer, safety factor, profiling iterations, alpha, bandwidth.
        placement: who holds whose checkpoint (nodes are indices into ``addresses``).
        node, rank: this rank's node and global rank.
        capturer: the rank's capturer (its slots and store connection).
        addresses: ``host:port`` of every node's store.
        token: the job's secret.
        events: where ckpt_replicated / ckpt_committed go.
    """

    def __init__(
        self,
        scenario: Scenario,
        placement: Placement,
        node: int,
        rank: int,
        capturer: Capturer,
        addresses: list[str],
        token: str,
        events: EventLog | None = None,
    ) -> None:
        config = scenario.checkpoint
        self.config = config
        self.alpha_s = scenario.cluster.network_alpha_s
        self.bandwidth = scenario.cluster.network_bytes_per_s
        self.placement, self.node, self.rank = placement, node, rank
        self.peers = list(placement.peers_of(node))
        self.capturer = capturer
        self.addresses, self.token = addresses, token
        self.events = events or EventLog(None, time.time())
        self.profiler = CommProfiler(config.profiling_iterations)
        self.costs = Costs()  # the sender thread's (real.engine.costs)
        self.clients: dict[int, StoreClient] = {}
        self.plan: TrafficPlan | None = None
        self._plan_key: tuple[Any, ...] | None = None
        self._plan_spans: tuple[IdleSpan, ...] = ()
        self._plan_length = 1.0
        self._plan_window = 1
        self.iteration_start = time.perf_counter()
        self.tamper: Tamper | None = None  # tests: change a chunk on the wire
        self.hook: Hook | None = None  # tests: called at "replication" and "commit"
        self.on_commit: Callable[[Captured], None] | None = None  # e.g. persistence
        self.last_committed: int | None = None
        # The newest iteration every rank has committed, as far as this rank knows (it only
        # grows), and the background reductions that tell it (``announce``, ``keep``).
        self.keep_group: Any = None
        self.agreed: int | None = None
        self._reductions: list[tuple[Any, Any]] = []
        self._keep_lock = threading.Lock()
        self._prepared: tuple[Captured, float] | None = None  # next_iteration_end: to commit
        # Replica bytes sent per timing: by the plan inside idle spans, outside them (missed
        # spans and spill, sent when the next save() asks), or unscheduled (blocking mode, or
        # before the profile is complete).
        self.sent_bytes = {"in_spans": 0, "outside_spans": 0, "unscheduled": 0}
        # checkpoint.interval (shared.adaptive): the sender proposes k from the profile and the
        # measured throughput; the checkpointer agrees on it with the other ranks and sets
        # ``window``, the iterations whose idle spans the current checkpoint's chunks ride in.
        self.interval = IntervalController(config.interval)
        self.last_decision: IntervalDecision | None = None  # the latest proposal, and why
        self.window = 1
        self.iteration_seconds: collections.deque[float] = collections.deque(maxlen=20)
        self._starts: list[float] = [self.iteration_start]  # iterations of the window begun
        # checkpoint.compression (shared.compression, real.engine.compress).
        self.codec: CodecMeasurement | None = None
        self.compression: CompressionDecision | None = None
        self._codec_checkpoints = 0
        self.wire_bytes = 0  # replica bytes that crossed the network (compressed or not)
        self._jobs: queue.Queue[Captured | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._flush = threading.Event()
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name=f"replicate-r{rank}", daemon=True)
        self._thread.start()

    def attach(self, ddp_model: Any) -> None:
        """Profile a DDP model's gradient all-reduces (call before its first backward)."""
        self.profiler.attach(ddp_model)

    # -- called by the checkpointer ---------------------------------------------------------

    def submit(self, captured: Captured) -> None:
        """Finish ``captured`` (blocking mode: now; interleaved: in the background)."""
        if self.config.traffic == "blocking":
            self._finish(captured, flushing=True)
            self.announce()
            self.iteration_start = self.profiler.iteration_begins()
            self._starts = [self.iteration_start]
            return
        self._idle.clear()
        self.iteration_start = self.profiler.iteration_begins()
        self._starts = [self.iteration_start]
        self._jobs.put(captured)

    def tick(self) -> None:
        """An iteration ended without a checkpoint (``checkpoint.interval``): the next one
        begins now, and the chunks planned in its idle spans may go."""
        self.iteration_start = self.profiler.iteration_begins()
        self._starts.append(self.iteration_start)

    def wait(self, timeout_s: float = 300.0, check: Callable[[], None] | None = None) -> bool:
        """Send whatever is left of the previous checkpoint now and wait for it to finish.

        ``check`` is called every ``WAIT_CHECK_S`` while it waits, and leaves the wait by
        raising: ``save()`` passes ``check_abort``, so a survivor whose replica goes to a node
        that vanished without closing its sockets (the sender waits on them) leaves the attempt
        when its agent aborts it, instead of waiting until the agent kills it (seen 2026-12-05
        in the netns recipe test, the survivor killed at its 2 s abort bound).
        """
        self._flush.set()
        try:
            deadline = time.monotonic() + timeout_s
            finished = False
            while not finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                slice_s = remaining if check is None else min(remaining, WAIT_CHECK_S)
                finished = self._idle.wait(slice_s)
                if not finished and check is not None:
                    check()
        finally:
            self._flush.clear()
        if not finished:
            log.warning(
                "node %d rank %d: replication still running after %.0f s",
                self.node,
                self.rank,
                timeout_s,
            )
        return finished

    def commit_prepared(self) -> None:
        """``next_iteration_end``: commit the checkpoint whose replicas are all prepared.

        The checkpointer calls it at the end of the next iteration, after ``wait()``.
        """
        if self._prepared is not None:
            captured, started = self._prepared
            self._prepared = None
            self._commit(captured, started)

    def close(self, timeout_s: float = 60.0, check: Callable[[], None] | None = None) -> None:
        """Finish the last checkpoint (``wait``: ``check`` may end it by raising, and then
        nothing is released here: call :meth:`abandon`), then release the peers and groups."""
        self.wait(timeout_s, check)
        self._prepared = None  # the next iteration never ended: it does not count
        self._jobs.put(None)
        self._thread.join(timeout_s)
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        if self.keep_group is not None:  # the last reduction may still wait for a slower rank
            self.keep_group.release()

    def abandon(self, timeout_s: float = 5.0) -> None:
        """Drop this attempt's replication at once: a failure stopped the job.

        Queued checkpoints are discarded, the peers' connections are shut (a send blocked on
        a vanished peer fails now rather than at its timeout), and nothing more is sent or
        committed: the sender must not touch a slot the next attempt restores from.
        """
        self._abandoned = True
        self._prepared = None
        with self._keep_lock:
            self._reductions.clear()  # a broken group's reductions never finish
        with contextlib.suppress(queue.Empty):
            while True:
                self._jobs.get_nowait()
        self._flush.set()  # a chunk waiting for its idle span gives up
        for client in list(self.clients.values()):
            client.shutdown()
        if self.keep_group is not None:  # a reduction may wait for a vanished peer, and the
            self.keep_group.release()  # sender for a group that never connects: both end
        self._jobs.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("node %d rank %d: replication sender did not stop", self.node, self.rank)
        for client in list(self.clients.values()):
            client.close()
        self.clients.clear()
        self._idle.set()

    # -- the sender -------------------------------------------------------------------------

    def _run(self) -> None:
        while (captured := self._jobs.get()) is not None:
            try:
                self._finish(captured, flushing=False)
            except Exception:  # keep the sender alive; the checkpoint stays uncommitted
                log.exception(
                    "node %d rank %d: checkpoint %d failed",
                    self.node,
                    self.rank,
                    captured.iteration,
                )
            finally:
                if not self._abandoned:
                    self.announce()
                self._idle.set()

    # -- the iteration every rank has committed ---------------------------------------------

    def announce(self) -> None:
        """A checkpoint finished here (committed or not): start an ``all_reduce(MIN)`` of this
        rank's last committed iteration over ``keep_group``, in the background.

        Every rank announces once per checkpoint, in order, from the thread that finishes its
        checkpoints, so the reductions pair up; ``save()`` reads the result (:meth:`keep`),
        usually long finished: the round trip is off the training thread. ``next_iteration_end``
        commits inside ``save()`` and agrees there instead.
        """
        if self.config.commit == "next_iteration_end":
            return
        last = self.last_committed
        if self.keep_group is None:  # one rank: what it committed, every rank committed
            with self._keep_lock:
                if last is not None:
                    self.agreed = max(last, self.agreed or last)
            return
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([-1 if last is None else last], dtype=torch.int64)
        try:
            group = self.keep_group.wait()  # connected in the background, usually long ago
            work = dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=group, async_op=True)
        except Exception as error:  # a broken group: the last agreement stays (older: safe)
            log.warning(
                "node %d rank %d: keep reduction not started: %s", self.node, self.rank, error
            )
            return
        with self._keep_lock:
            self._reductions.append((work, tensor))

    def keep(self) -> int | None:
        """The newest iteration every rank has committed: the reductions announced so far.

        Usually they finished long ago, in the background, and this costs nothing; a rank whose
        previous checkpoint is still in flight makes the others wait here for it, as a blocking
        all-reduce in ``save()`` would (each rank announces only after its checkpoint finished).

        Raises:
            ConnectionError: a reduction failed: a peer is gone. The reduction may have
                completed on other ranks (gloo: those that had received every piece before the
                peer died), which then keep the newer agreement and let the older go; a capture
                here under the older one would overwrite the newer, and no iteration would be
                held by every rank. So nothing is captured: the attempt is left.
        """
        with self._keep_lock:
            pending, self._reductions = self._reductions, []
        for work, tensor in pending:
            try:
                # Abortable: a peer whose node vanished without closing its sockets (a lost
                # node behind a network namespace) leaves the reduction waiting for gloo's
                # timeout, and only the agent's kill at ``detection.abort_timeout_s`` ended
                # it: a survivor lost its process.
                wait_collective(work)
            except AttemptAborted:
                raise
            except Exception as error:  # the group broke: a peer is gone
                raise ConnectionError(
                    f"node {self.node} rank {self.rank}: the agreement on the last committed "
                    f"checkpoint failed (a peer is gone; no capture now): {error}"
                ) from error
            value = int(tensor.item())
            if value >= 0:
                with self._keep_lock:
                    self.agreed = max(value, self.agreed if self.agreed is not None else value)
        return self.agreed

    def restored(self, iteration: int, committed: bool = True) -> None:
        """Every rank restored ``iteration``.

        ``committed``: every rank restored a committed copy, so ``iteration`` is committed
        everywhere and the next checkpoints keep it. False (a crash restored what every rank
        had only captured): its replicas may not exist, so nothing is assumed agreed and the
        next capture spares each rank's newest committed slot, as without agreement.
        """
        with self._keep_lock:
            self._reductions.clear()
            self.last_committed = self.agreed = iteration if committed else None

    def _finish(self, captured: Captured, *, flushing: bool) -> bool:
        started = time.perf_counter()
        # put_begin carries the layout (signed): the first byte goes out before any hashing.
        # The first send hashes each piece right after it went out, from cache (one pass over
        # the bytes); then the manifest is sealed, written to the local slot and sent at each
        # put_end.
        layout_raw = captured.layout_raw  # signed at capture, as in the slot
        sealed: list[bytes] = []
        if not self.peers:
            with self.costs.timed("seal: hash every block (no peers)", captured.nbytes):
                self._seal(captured, None)
        self._decide_compression(captured)
        plan = self._plan(captured.nbytes)
        spill = 0
        for peer in self.peers:
            for attempt in (1, 2):
                if self._abandoned:
                    return False
                try:
                    outside = self._send(peer, captured, layout_raw, plan, flushing, sealed)
                    spill += outside
                    if plan is None:
                        self.sent_bytes["unscheduled"] += captured.nbytes
                    else:
                        self.sent_bytes["in_spans"] += captured.nbytes - outside
                        self.sent_bytes["outside_spans"] += outside
                    break
                except (OSError, NodeStoreError) as error:
                    self._drop(peer)
                    log.warning(
                        "node %d rank %d: iteration %d: replica to node %d failed (attempt %d): %s",
                        self.node,
                        self.rank,
                        captured.iteration,
                        peer,
                        attempt,
                        error,
                    )
            else:
                log.error(
                    "node %d rank %d: iteration %d not committed: node %d holds no "
                    "verified replica; the last committed checkpoint (%s) stays",
                    self.node,
                    self.rank,
                    captured.iteration,
                    peer,
                    self.last_committed,
                )
                return False
        replicated = time.perf_counter()
        self._propose_interval(captured.nbytes)
        if self.peers:
            self.events.emit(
                "ckpt_replicated",
                iteration=captured.iteration,
                bytes=captured.nbytes * len(self.peers),
                peers=self.peers,
                duration_s=replicated - started,
                spill_bytes=spill,
                scheduled=plan is not None,
            )
        if self.config.commit == "next_iteration_end":
            self._prepared = (captured, started)
        else:
            self._commit(captured, started)
        return True

    def _commit(self, captured: Captured, started: float) -> None:
        if self._abandoned:  # the job stopped: this checkpoint never counts
            return
        self._call_hook("commit", captured.iteration)
        self.capturer.commit(captured)
        self.last_committed = captured.iteration
        for peer in self.peers:
            try:
                with self.costs.timed("send: commit (round trip)"):
                    self._client(peer).commit(self.rank, captured.iteration)
            except (OSError, NodeStoreError) as error:
                self._drop(peer)
                log.warning(
                    "node %d rank %d: iteration %d: node %d did not commit its replica: %s",
                    self.node,
                    self.rank,
                    captured.iteration,
                    peer,
                    error,
                )
        self.events.emit(
            "ckpt_committed",
            iteration=captured.iteration,
            bytes=captured.nbytes,
            replicas=1 + len(self.peers),
            duration_s=time.perf_counter() - started + captured.seconds,
        )
        # Persistence reads the checkpoint back from the slot, a pass over its bytes: after the
        # peers' commits, which a recovery needs (before them it held the replicas uncommitted
        # for 8-138 ms of every K-th checkpoint on our loaded 2 cores, and a stop's abandonment
        # of the replication waited for it), and not once the job has stopped.
        if self.on_commit is not None and not self._abandoned:
            self.on_commit(captured)

    def _plan(self, nbytes: int) -> TrafficPlan | None:
        if self.config.traffic == "blocking" or not self.profiler.done or not self.peers:
            return None
        spans, length = self._profile()
        # Raw bytes per second: a compressed chunk's bytes cross the link ``ratio`` times faster.
        rate = self._link_bytes_per_s() * self._ratio()
        key = (nbytes, self.window, rate, spans, length)
        if self.plan is None or self._plan_key != key:
            self._plan_key = key
            self._plan_spans, self._plan_length = spans, length
            self._plan_window = self.window
            self.plan = plan_traffic(
                tile_spans(spans, length, self.window),
                nbytes,
                self.peers,
                bandwidth_bytes_per_s=rate,
                alpha_s=self.alpha_s,
                safety_factor=self.config.safety_factor,
                buffer_bytes=self.config.buffer_bytes,
                sub_buffers=self.config.sub_buffers,
            )
            log.info(
                "node %d rank %d: traffic plan over %d iteration(s): %d chunks, %d of %d bytes "
                "in idle spans (%s)",
                self.node,
                self.rank,
                self.window,
                len(self.plan.chunks),
                self.plan.in_span_bytes,
                self.plan.planned_bytes,
                self.profiler.summary(),
            )
        return self.plan

    def _profile(self) -> tuple[tuple[IdleSpan, ...], float]:
        """One iteration's idle spans and length (the profile is complete)."""
        spans = tuple(self.profiler.spans or ())
        length = statistics.median(self.profiler.lengths) if self.profiler.lengths else 0.0
        if self.interval.adaptive and self.iteration_seconds:
            # A profiled iteration lasts from one save() returning to the next, the wait for
            # the previous checkpoint's spill included; training itself takes the time from a
            # save() returning to the next save() call, and only that time is idle network.
            length = statistics.median(tuple(self.iteration_seconds))  # a snapshot: save() appends
            spans = tuple(
                IdleSpan(s.start_s, min(s.end_s, length) - s.start_s)
                for s in spans
                if s.start_s < length
            )
        if length <= 0:
            length = max((s.end_s for s in spans), default=1.0) or 1.0
        return spans, length

    def _link_bytes_per_s(self) -> float:
        """The link's throughput for planning: the configured bandwidth, or with an adaptive
        interval the measured replication throughput (never above the bandwidth)."""
        measured = self.interval.throughput_bytes_per_s
        if not self.interval.adaptive or measured is None:
            return self.bandwidth
        return min(measured, self.bandwidth)

    def _ratio(self) -> float:
        """Raw over wire bytes of a chunk: the measured ratio while compressing, else 1."""
        if self.compression is None or not self.compression.enabled or self.codec is None:
            return 1.0
        return max(self.codec.ratio, 1e-3)

    def _decide_compression(self, captured: Captured) -> None:
        """``checkpoint.compression``: measure the codec on this checkpoint's state (the first
        one, then every ``CODEC_REMEASURE``) and decide with ``shared.compression``."""
        mode = self.config.compression
        if mode == "off" or not self.peers or not captured.nbytes:
            return
        if self._codec_checkpoints % CODEC_REMEASURE == 0:
            with self.costs.timed("compression: measure the codec on the state"):
                self.codec = compress.measure(captured.slot.data(captured.nbytes))
        self._codec_checkpoints += 1
        decision = decide(mode, self._link_bytes_per_s(), self.codec)
        if self.compression is None or decision.enabled != self.compression.enabled:
            codec = self.codec
            self.events.emit(
                "ckpt_compression",
                iteration=captured.iteration,
                enabled=decision.enabled,
                ratio=None if codec is None else codec.ratio,
                compress_bytes_per_s=None if codec is None else codec.compress_bytes_per_s,
                decompress_bytes_per_s=None if codec is None else codec.decompress_bytes_per_s,
                link_bytes_per_s=decision.plain_bytes_per_s,
                compressed_bytes_per_s=decision.compressed_bytes_per_s,
                bottleneck=decision.bottleneck,
                reason=decision.reason,
            )
            log.info("node %d rank %d: compression: %s", self.node, self.rank, decision.reason)
        self.compression = decision

    def _propose_interval(self, nbytes: int) -> None:
        """``checkpoint.interval: adaptive``: the k this rank proposes for the next checkpoint,
        from the profile and the measured throughput (the checkpointer agrees on the largest)."""
        if not self.interval.adaptive or not self.profiler.done or not self.peers:
            return
        spans, length = self._profile()
        ratio = self._ratio()
        decision = self.interval.decide(
            spans,
            length,
            wire_bytes(nbytes, ratio if ratio != 1.0 else None),
            len(self.peers),
            bandwidth_bytes_per_s=self.bandwidth,
            alpha_s=self.alpha_s,
            safety_factor=self.config.safety_factor,
            buffer_bytes=self.config.buffer_bytes,
            sub_buffers=self.config.sub_buffers,
        )
        self.last_decision = decision
        if decision.changed:
            log.info(
                "node %d rank %d: checkpoint interval %d -> %d: %s",
                self.node,
                self.rank,
                decision.previous,
                decision.interval,
                decision.reason,
            )

    def _seal(self, captured: Captured, hasher: BlockHasher | None) -> bytes:
        """Seal ``captured``: block checksums (from ``hasher``, else a pass over the slot), the
        shard checksum, the MAC; written to the local slot. Returns the sealed manifest."""
        data = captured.slot.data(captured.nbytes)
        if hasher is None:
            seal(captured.manifest, data)
        else:
            seal_with(captured.manifest, hasher.finish(data))
        raw = captured.manifest.to_bytes()
        # Not complete while its manifest is rewritten: a crash mid-write must not leave a
        # slot that claims a manifest it does not hold.
        captured.slot.mark_complete(None)
        captured.slot.write_manifest(raw, xxhash.xxh3_64_intdigest(raw), captured.nbytes)
        captured.slot.mark_complete(captured.iteration)
        return raw

    def _send(
        self,
        peer: int,
        captured: Captured,
        manifest: bytes,
        plan: TrafficPlan | None,
        flushing: bool,
        sealed: list[bytes],
    ) -> int:
        """Stream one replica to ``peer``; returns the bytes sent outside idle spans.

        ``sealed`` holds the sealed manifest once a send has hashed the data; while it is
        empty, this send hashes every piece right after it went out and seals at the end.
        """
        costs = self.costs
        client = self._client(peer)
        with costs.timed("send: put_begin (pipelined: its reply comes before put_end's)"):
            client.put_begin(self.rank, manifest, captured.keep, wait=False)
        data = captured.slot.data(captured.nbytes)
        hasher = (
            None
            if sealed
            else TimedHasher(BlockHasher(captured.nbytes, captured.manifest.block_bytes))
        )
        pieces: list[tuple[Chunk | None, int, int]]
        if plan is None:
            step = max(self.config.buffer_bytes // self.config.sub_buffers, 1)
            pieces = [
                (None, o, min(step, captured.nbytes - o)) for o in range(0, captured.nbytes, step)
            ]
        else:
            pieces = [
                (c, c.offset_bytes, c.size_bytes) for c in plan.chunks if c.destination == peer
            ]
        spill = 0
        compressing = (
            self.compression is not None and self.compression.enabled and self.tamper is None
        )
        wire, sending_s = 0, 0.0  # bytes on the wire, seconds spent sending them
        for number, (chunk, offset, size) in enumerate(pieces):
            view = data[offset : offset + size]
            encoded = None
            if compressing:  # before the chunk's idle span: the CPU work stays off the link
                with costs.timed("send: compress", size):
                    encoded = compress.encode(view, offset)
            if chunk is not None and not flushing and not self._wait_for_span(chunk):
                spill += size
            sending = time.perf_counter()
            if encoded is not None:
                client.put_chunk_encoded(
                    offset,
                    view,
                    encoded,
                    compress.CODEC,
                    None if hasher is None else hasher.update,
                    captured.manifest.block_bytes,
                )
                wire += len(encoded)
            elif self.tamper is None:
                client.put_chunk(
                    offset,
                    view,
                    None if hasher is None else hasher.update,
                    captured.manifest.block_bytes,
                )
                wire += size
            else:  # tests: the bytes sent differ from the slot's (hashed from the slot)
                if hasher is not None:
                    hasher.update(offset, view)
                client.put_chunk(offset, self.tamper(peer, offset, view))
                wire += size
            elapsed = time.perf_counter() - sending
            sending_s += elapsed
            costs.add("send: chunks (socket)", elapsed, size)
            if number == 0:
                self._call_hook("replication", captured.iteration)
        if hasher is not None:
            # The hashing happened inside the chunks' time: count it apart.
            costs.add("send: chunks (socket)", -hasher.seconds, calls=0)
            costs.add("send: hash while sending", hasher.seconds, captured.nbytes)
        if not sealed:
            with costs.timed("send: seal (manifest, MAC, into the slot)"):
                sealed.append(self._seal(captured, None if hasher is None else hasher.hasher))
        ending = time.perf_counter()
        with costs.timed("send: put_end (round trip: the store's verdict)"):
            client.put_end(sealed[0])
        # The store answers once every byte arrived: chunks plus put_end is the transfer's
        # time on the link (waits for idle spans excluded).
        self.interval.observe(wire, sending_s + time.perf_counter() - ending)
        self.wire_bytes += wire
        return spill if plan is not None else (captured.nbytes if flushing else 0)

    def _wait_for_span(self, chunk: Any) -> bool:
        """Wait until an idle span can take ``chunk``; False if it goes as spill (flush).

        The plan covers the ``window`` iterations after the checkpoint (``checkpoint.interval``)
        whose spans repeat every iteration: span ``j * n + i`` is span ``i`` of the window's
        iteration ``j``, timed from when that iteration began (``tick``).
        """
        spans, window = self._plan_spans, self._plan_window
        count = len(spans)
        first = count * window if chunk.span_index is None else chunk.span_index
        mu = self.config.safety_factor
        while not self._flush.is_set():
            starts = self._starts
            now = time.perf_counter()
            usable: list[float] = []
            for index in range(first, count * window):
                j, i = divmod(index, count)
                if j >= len(starts):
                    break  # that iteration has not begun
                span = spans[i]
                begin = span.start_s
                if index == first:
                    begin = max(begin, chunk.start_s - j * self._plan_length)
                if starts[j] + span.start_s + mu * span.duration_s > now:
                    usable.append(starts[j] + begin)
            if usable:
                if usable[0] <= now:
                    return True
                self._flush.wait(usable[0] - now)
            elif len(starts) < window:
                self._flush.wait(0.005)  # the window's next iteration begins soon
            else:
                self._flush.wait(60.0)  # past every span: go when the next save() asks
                return False
        return False

    def _client(self, peer: int) -> StoreClient:
        if self._abandoned:
            raise NodeStoreError("replication abandoned: the job stopped")
        if peer not in self.clients:
            self.clients[peer] = StoreClient(peer, self.addresses[peer], self.token)
        return self.clients[peer]

    def _drop(self, peer: int) -> None:
        client = self.clients.pop(peer, None)
        if client is not None:
            client.close()

    def _call_hook(self, phase: str, iteration: int) -> None:
        if self.hook is not None:
            self.hook(phase, iteration)
