"""The simulation: training jumps from failure to failure; each recovery runs in SimPy.

One SimPy process drives a run. Between failures it does not step through iterations: the
``Timeline`` of the strategy (``sim.strategies``) says where training is at any time, so the
process sleeps until the next failure and then writes, in closed form, the few events that
matter: periodic ``iteration_end`` progress marks, the last iteration reached and the last
checkpoint committed before the failure, and the persistent saves. CPU memory
(``sim.cluster.ClusterMemory``) then holds that committed checkpoint and, with
``checkpoint.commit: on_arrival``, every node's own shard of the newest checkpoint captured
(its iteration ended, its replicas not all stored yet), as the stores report them to the
recovery plan: a trainer crash, whose node keeps its memory, restores the newest captured
iteration from local memory (a failure as iteration k ends restores k), while a lost node
needs its shard's replica on a peer, so the newest committed one.

A failure then runs its recovery, phase by phase, as docs/design.md section 5 names them and as the
real harness recovers in process: detection (``detection.exit_report_s`` for a trainer crash,
which its agent reports; a lost node is found by probe once the survivors' next collective
fails, i.e. the time until the iteration profile's next communication phase or
``detection.collective_failure_s`` (the lost node's connections closing), whichever is
longer, plus ``detection.probe_detection_s``; or by the probe its heartbeat's silence starts,
``silence_detection_s``: ``silence_s - heartbeat_interval_s / 2`` on average, plus
``probe_timeout_s`` when its agent cannot answer, plus three half periods of the root's reads
of the store (``shared.scenario.ROOT_POLL_S``), which is how a partitioned node or one lost
in netns mode is found (the survivors' collectives hang: no reset reaches them), and one lost
while the job is not training; whichever comes first, with the heartbeat lease,
``lease_timeout_s - heartbeat_interval_s / 2`` on average, plus half a period of the root's
reads, as the backstop and the only way
with ``detection.lost_node: lease``; the root's own node by the same collective's probe, its
agent deposed by the survivor's agent that finds it refusing connections, or, where that
does not happen, after a re-election, ``root_loss_detection_s``), the stop
(``recovery.stop_s`` from detection: the survivors are aborted and park, no process is
killed; one waiting in a hung collective leaves it at the abort too), replacement
(hardware only: the standby pool's delay; a live warm standby agent needs nothing more, and
once ``cluster.standby_nodes`` of them are taken a node starts cold,
``recovery.node_start_s``), restart (``recovery.restart_s``: the survivors rejoin in process
and warm spares take the dead ranks, after the rest of a spare's warm-up where a crashed node's
new spare is still warming, ``_take_spares``), and retrieval: a fixed
``recovery.retrieval_overhead_s`` (``recovery.persistent_retrieval_overhead_s`` when the plan
reads from storage, ``recovery.peer_retrieval_overhead_s`` when a node fetches from a peer),
then the
``shared`` recovery plan's bytes: local copies over each node's copy engine, peer copies as
flows over the node links, persistent reads as flows sharing the storage's aggregate bandwidth
(``sim.network``). Training resumes from
the restored iteration. A failure that strikes during a recovery before its restart
has begun joins it, as the real root agent does (one recovery; its later events belong to both
failures); one that strikes later ends that recovery's event chain and starts a recovery of all
the nodes still failed, as ``shared.summary`` expects.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from shared.errors import ScenarioError
from shared.events import Event, JsonValue
from shared.failure_kinds import initial_root, next_root, resolve_failure
from shared.recovery import FailureKind
from shared.scenario import ROOT_POLL_S, DetectionConfig
from shared.storms import (
    expected_process_failures,
    fastest_recovery_s,
    job_failure_rate_per_s,
    stall_failure_limit,
)
from sim.cadence import persist_every
from sim.cluster import ClusterMemory, ClusterPlan, StandbyPool
from sim.failures import FailureQueue, PlannedFailure, plan_failures
from sim.model import SimModel
from sim.network import FlowNetwork
from sim.strategies import Timeline

SECONDS_PER_DAY = 86_400.0
_TIER_ORDER = {"local": 0, "peer": 1, "persistent": 2}


@dataclass
class RunState:
    """What a run has done so far (read by ``sim.metrics``)."""

    events: list[Event] = field(default_factory=list)
    final_iteration: int = 0
    commits: int = 0
    persists: int = 0
    failures: int = 0
    interrupted_recoveries: int = 0
    rollbacks: int = 0
    replacement_waits_s: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SimProgress:
    """How far a run has got, for a progress line.

    Attributes:
        time_s: simulated time reached, s.
        duration_s: simulated time of the whole run, s.
        failures: failures injected so far.
        events: events written so far.
        wall_s: wall time since the run started, s.
    """

    time_s: float
    duration_s: float
    failures: int
    events: int
    wall_s: float

    @property
    def events_per_s(self) -> float:
        """Events written per wall second."""
        return self.events / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class _Chain:
    """The recovery in progress for one failure index."""

    index: int
    failed: dict[int, FailureKind]
    new_nodes: tuple[int, ...]
    new_kind: str
    label: str
    schedule_index: int | None
    last_event_s: float
    reached: int = 0
    group_ready: bool = False
    detected: bool = False
    restart_begun: bool = False
    plan: ClusterPlan | None = None
    joined: tuple[int, ...] = ()
    """Earlier failures whose recovery this one joined: its later events are theirs too."""
    undetected: tuple[int, ...] = ()
    """Joined failures not detected yet: detected with this one."""
    root_lost: bool = False
    """This failure lost the root agent's node: a new root is elected before detection."""
    collective_wait_s: float | None = None
    """From the failure until the survivors' next collective (which then fails); None when
    the job was not training (a failure during a recovery) or runs no collectives."""
    hung: bool = False
    """The survivors' collectives hang rather than fail (``Simulation._hangs``): no broken
    collective starts a probe; the heartbeat's silence (or the lease) finds the node, and the
    stop then ends their waits at once."""

    @property
    def indices(self) -> tuple[int, ...]:
        return (self.index, *self.joined)


class Simulation:
    """One simulated run of a prepared scenario with one seed.

    Args:
        model: the scenario prepared by ``sim.model.build_model``.
        seed: seeds the failure process and the replacement jitter.
        progress_interval_s: simulated time between ``iteration_end`` progress marks.
        node_event_limit: per failure, at most this many node-level ``state_restored``
            events (a job-level one always ends retrieval).
        on_progress: called with a ``SimProgress`` every ``progress_wall_s`` of wall time.
        progress_wall_s: wall seconds between two ``on_progress`` calls.
    """

    def __init__(
        self,
        model: SimModel,
        seed: int,
        *,
        progress_interval_s: float = 3600.0,
        node_event_limit: int = 32,
        on_progress: Callable[[SimProgress], None] | None = None,
        progress_wall_s: float = 0.5,
    ) -> None:
        self.model = model
        self.scenario = model.scenario
        self.strategy = model.strategy
        self.env = simpy.Environment()
        self.duration_s = self.scenario.sim.duration_days * SECONDS_PER_DAY
        self.queue: FailureQueue = plan_failures(
            self.scenario, model.placement, np.random.default_rng(seed), self.duration_s
        )
        self.pool = StandbyPool(self.scenario.cluster, np.random.default_rng([seed, 1]))
        self.memory = ClusterMemory(model.placement, self.scenario.checkpoint.local_slots)
        bandwidth = self.scenario.cluster.network_bytes_per_s
        self.network = FlowNetwork(
            self.env, {"storage": self.scenario.cluster.storage.bandwidth_gbit_s * 1e9 / 8}
        )
        self._node_bandwidth = bandwidth
        # Marks count iterations of training time (cycle_s): with the mean, a persistent save
        # far longer than its interval would space the marks by more iterations than a run of
        # that length ever does between saves, and flood the log with them.
        self.progress_every = max(1, round(progress_interval_s / self.strategy.cycle_s))
        self.node_event_limit = node_event_limit
        # Runs with more than 10,000 persistent saves count them without logging each one.
        every = self.strategy.persist_every or 0
        self._log_persists = every * self.strategy.mean_iteration_s * 10_000 >= self.duration_s
        self.state = RunState()
        self._persisted: int | None = None  # newest complete persistent checkpoint
        self._persist_free_s = 0.0  # when storage has finished the previous upload
        self._stopped = False
        self._ready_at: dict[int, float] = {}
        self._on_progress = on_progress
        self._progress_wall_s = progress_wall_s
        self._wall_start = self._wall_reported = time.monotonic()
        scheduled = len(self.scenario.failures.schedule)
        self.stall_limit = stall_failure_limit(
            expected_process_failures(self.scenario) + scheduled, scheduled
        )
        self._stalled = 0  # failures in a row with no training progress between them
        self._stall_since = 0.0  # when the first of them struck
        # The node running the root agent (shared.failure_kinds: where root_agent failures hit).
        self._root = initial_root(self.scenario.cluster.nodes)
        # Live standby agents (warm: agent, store and trainers up); taken ones are not renewed.
        self._warm_standby = self.scenario.cluster.standby_nodes
        # Each node's unused warm spares (``recovery.warm_spares`` per local rank), as the
        # times they began warming in the background (-inf: warm from the start; a node not
        # listed has all of its spares warm), and the nodes whose crashed ranks took one in
        # the recovery under way, with the time that spare is warm (``_take_spares``).
        self._spares: dict[int, list[float]] = {}
        self._spare_warm_at: dict[int, float] = {}

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> RunState:
        self.env.process(self._main())
        self.env.run()
        return self.state

    def _emit(
        self,
        time_s: float,
        kind: str,
        *,
        node: int | None = None,
        iteration: int | None = None,
        **details: JsonValue,
    ) -> None:
        self.state.events.append(Event(time_s, kind, node, None, iteration, details))

    def _report(self) -> None:
        """Call ``on_progress`` when ``progress_wall_s`` of wall time have passed."""
        if self._on_progress is None:
            return
        now = time.monotonic()
        if now - self._wall_reported < self._progress_wall_s:
            return
        self._wall_reported = now
        self._on_progress(
            SimProgress(
                self.env.now,
                self.duration_s,
                self.state.failures,
                len(self.state.events),
                now - self._wall_start,
            )
        )

    def _count_stall(self, progressed: bool) -> None:
        """The storm guard: stop once ``stall_limit`` failures in a row found no progress."""
        if progressed:
            self._stalled = 0
            return
        if self._stalled == 0:
            self._stall_since = self.env.now
        self._stalled += 1
        if self._stalled < self.stall_limit:
            return
        scenario = self.scenario
        rate = job_failure_rate_per_s(scenario)
        recovery_s, made_of = fastest_recovery_s(scenario)
        process = scenario.failures.process
        if process is None:
            field_path = "failures.schedule"
            cause = "the scheduled failures strike before training resumes"
        else:
            name = (
                "failures_per_node_per_day"
                if process.failures_per_node_per_day is not None
                else "failures_per_day"
            )
            field_path = f"failures.process.{name}"
            # The bound is what validate can know; this run's recoveries took longer (waits
            # for replacement nodes, restores from storage), or it would not have stalled.
            cause = (
                f"the job fails every {1 / rate:.3g} s on average ({rate * 3600:.3g} per hour), "
                f"and its recoveries here took longer than that: at least {recovery_s:.3g} s "
                f"({made_of}), plus any wait for a replacement node and any restore from "
                "persistent storage"
            )
        raise ScenarioError(
            scenario.name,
            [
                f"{field_path}: the simulation stopped at {self.env.now:.6g} s of "
                f"{self.duration_s:.6g} s: {self._stalled} failures in a row, over "
                f"{self.env.now - self._stall_since:.3g} s, struck before training made any "
                f"progress; {cause}; so failures arrive faster than "
                f"recoveries finish and the job cannot train; lower the failure rate (is it "
                f"per node per day?), add standby nodes, or shorten the recovery"
            ],
        )

    def _main(self) -> Generator[simpy.Event, Any, None]:
        end = self.duration_s
        self._emit(0.0, "run_started", strategy=self.strategy.name)
        if self.strategy.checkpoint_every != 1:  # sim.cadence chose k once, before training
            self._emit(
                0.0,
                "ckpt_interval_changed",
                interval=self.strategy.checkpoint_every,
                previous=1,
                reason=self.strategy.interval_rule,
            )
        if self.strategy.compressed:
            self._emit(0.0, "ckpt_compression", enabled=True)
        timeline = Timeline(0.0, 0, self.strategy)
        while True:
            self._report()
            failure, when = self._next_failure(timeline)
            stop = min(when, end)
            self._training_events(timeline, self.env.now, stop)
            yield self.env.timeout(stop - self.env.now)
            if failure is None or when >= end:
                self._finish(timeline.reached_by(end), end)
                return
            resumed = yield from self._fail(timeline, failure)
            if resumed is None:
                self._finish(self.state.final_iteration, end)
                return
            timeline = resumed

    def _rechoose_persistence(self) -> None:
        """``checkpoint.persist_interval: young|daly``: the interval for the failures so far."""
        if self.scenario.checkpoint.persist_interval == "fixed" or not self.strategy.in_memory:
            return
        every = persist_every(
            self.scenario,
            self.strategy.upload_s,
            self.strategy.mean_iteration_s,
            self.state.failures,
            self.env.now,
        )
        if every != self.strategy.persist_every:
            self.strategy = dataclasses.replace(self.strategy, persist_every=every)
            span = (every or 0) * self.strategy.mean_iteration_s * 10_000
            self._log_persists = span >= self.duration_s

    def _finish(self, iteration: int, end: float) -> None:
        self.state.final_iteration = iteration
        self._emit(end, "run_finished", iteration=iteration)

    def _next_checkpoint(self, timeline: Timeline, k: int) -> int:
        """The first iteration from ``k`` on that checkpoints in memory (``checkpoint.interval``
        above 1 skips some): the replication a ``during: replication`` failure waits for, as
        the injector waits for the next capture. ``k`` itself without in-memory checkpoints."""
        if not self.strategy.in_memory:
            return k
        for candidate in range(k, k + self.strategy.checkpoint_every + 1):
            if timeline.is_checkpoint(candidate):
                return candidate
        return k

    def _next_failure(self, timeline: Timeline) -> tuple[PlannedFailure | None, float]:
        """The next failure while training, and when it strikes (inf: none)."""
        best: PlannedFailure | None = self.queue.next_timed()
        when = best.time_s if best is not None else math.inf
        if best is not None and best.during == "replication":
            # As the real injector: after the time, at the next checkpoint's replication.
            k = max(timeline.reached_by(max(when, timeline.start_s)) + 1, timeline.base + 1)
            k = self._next_checkpoint(timeline, k)
            when = max(timeline.end(k) + self.strategy.last_replica_delay_s / 2, self.env.now)
        by_iteration = self.queue.next_by_iteration()
        if by_iteration is not None and by_iteration.at_iteration is not None:
            k = max(by_iteration.at_iteration, timeline.base + 1)
            if by_iteration.during == "replication":
                k = self._next_checkpoint(timeline, k)
                at = timeline.end(k) + self.strategy.last_replica_delay_s / 2
            else:  # "once iteration k has ended": before its checkpoint commits
                at = timeline.end(k)
                every = self.strategy.pause_every
                if every and k % every == 0:
                    # The injector fires on iteration k's end as the trainer reports it, which
                    # is after its blocking persistent save of k has returned.
                    at += self.strategy.pause_s
            at = max(at, self.env.now)
            if at < when:
                best, when = by_iteration, at
        return best, when

    # --- training in closed form -------------------------------------------------------------

    def _training_events(self, timeline: Timeline, begin: float, stop: float) -> None:
        """Progress marks, commits and persistent saves of training from ``begin`` to ``stop``."""
        reached = timeline.reached_by(stop)
        first = timeline.reached_by(begin) + 1
        every = self.progress_every
        k = ((first + every - 1) // every) * every
        while k <= reached:
            self._emit(timeline.end(k), "iteration_end", iteration=k)
            k += every
        if self.strategy.in_memory:
            committed = timeline.committed_by(stop)
            if committed is not None:
                self.state.commits += timeline.checkpoints_through(committed)
        self._persistence(timeline, first, reached, stop)

    def _persistence(self, timeline: Timeline, first: int, reached: int, stop: float) -> None:
        every = self.strategy.persist_every
        if not every:
            return
        k = ((first + every - 1) // every) * every
        while k <= reached:
            if self.strategy.in_memory:  # background copy of the committed checkpoint
                begin = timeline.commit_time(k)
                if begin > stop:
                    return
                if begin < self._persist_free_s:
                    k += every
                    continue  # the previous upload is still running: skip this one
                done = begin + self.strategy.upload_s
            else:  # blocking serialisation, then the upload waits its turn for storage
                begin = timeline.end(k)
                done = max(begin + self.strategy.pause_s, self._persist_free_s)
                done += self.strategy.upload_s
            if self._log_persists:
                self._emit(begin, "persist_begin", iteration=k)
            self._persist_free_s = done
            if done <= stop:
                if self._log_persists:
                    self._emit(done, "persist_done", iteration=k)
                self._persisted = k
                self.state.persists += 1
            k += every

    # --- failures and recovery ---------------------------------------------------------------

    def _fail(
        self, timeline: Timeline, failure: PlannedFailure
    ) -> Generator[simpy.Event, Any, Timeline | None]:
        now = self.env.now
        self._pop(failure)
        reached = timeline.reached_by(now)
        lost_since = timeline.lost_since(reached, now)
        if reached > timeline.base:
            self._emit(
                timeline.end(reached), "iteration_end", iteration=reached, last_before_failure=True
            )
        committed = timeline.committed_by(now) if self.strategy.in_memory else None
        if committed is not None:
            self.memory.commit(committed)
            self._emit(
                timeline.commit_time(committed),
                "ckpt_committed",
                iteration=committed,
            )
        if self.strategy.holds_captured:
            # Each store also reports its own shard of an iteration captured and not yet
            # committed: a trainer crash restores it from local memory. The memory state stays
            # as set here for the whole recovery, failures joining or interrupting it included
            # (nothing is captured while training is stopped), until ``_resume``.
            captured = timeline.captured_by(now)
            if captured is not None and (committed is None or captured > committed):
                self.memory.capture(captured)
        self._persist_free_s = now  # an upload in flight is abandoned with the job
        self._count_stall(progressed=reached > timeline.base)
        chain = self._inject(failure, {}, reached, now - lost_since)
        chain.reached = reached
        chain.collective_wait_s = self._until_collective_s(timeline, now)
        chain.hung = self._hangs(chain)
        while True:
            outcome = yield from self._recover(chain)
            if outcome == "done":
                assert chain.plan is not None
                self._rechoose_persistence()
                return Timeline(self.env.now, chain.plan.iteration or 0, self.strategy)
            if outcome == "failure" and not chain.restart_begun:
                # Before the restart, a new failure joins the recovery in progress (as the
                # real root agent does): one recovery, whose events belong to both.
                self.state.interrupted_recoveries += 1
                self._count_stall(progressed=False)
                self._report()
                following = self.queue.next_timed()
                assert following is not None
                self._pop(following)
                joined = chain
                chain = self._inject(following, joined.failed, joined.reached, 0.0)
                chain.joined = joined.indices
                chain.undetected = joined.undetected
                if not joined.detected:
                    chain.undetected += (joined.index,)
                continue
            plan = self._close(chain)
            if outcome == "end":
                self.state.final_iteration = plan.iteration or 0
                return None
            # Another failure struck after the restart began: recover everything still failed.
            self.state.interrupted_recoveries += 1
            self._count_stall(progressed=False)
            self._report()
            following = self.queue.next_timed()
            assert following is not None
            self._pop(following)
            chain = self._inject(following, chain.failed, plan.iteration or 0, 0.0)

    def _emit_chain(
        self,
        chain: _Chain,
        kind: str,
        *,
        node: int | None = None,
        iteration: int | None = None,
        **details: JsonValue,
    ) -> None:
        """One event now for the chain's failure and for every failure it joined."""
        for index in chain.indices:
            self._emit(self.env.now, kind, node=node, iteration=iteration, failure=index, **details)

    def _close(self, chain: _Chain) -> ClusterPlan:
        """End an interrupted chain with the state it would have restored.

        Its retrieval counts only if it had begun (the event sits at the interruption);
        otherwise the event sits at the chain's last phase, so no phase is charged twice.
        """
        plan = chain.plan or self.memory.plan(chain.failed, self._persisted)
        restored_s = self.env.now if chain.group_ready else chain.last_event_s
        for index in chain.indices:
            self._emit(
                restored_s,
                "state_restored",
                iteration=plan.iteration,
                failure=index,
                tier=_worst_tier(plan),
                interrupted=True,
            )
        return plan

    def _pop(self, failure: PlannedFailure) -> None:
        if failure is self.queue.next_timed():
            self.queue.pop_timed()
        else:
            self.queue.pop_by_iteration()

    def _inject(
        self,
        failure: PlannedFailure,
        failed: dict[int, FailureKind],
        reached: int,
        partial_s: float,
    ) -> _Chain:
        index = self.state.failures
        self.state.failures += 1
        if failure.label == "root_agent":
            target = resolve_failure(
                failure.label, failure.nodes, placement=self.model.placement, root=self._root
            )
            failure = dataclasses.replace(failure, nodes=target.nodes)
        merged = dict(failed)
        kind: FailureKind = "software" if failure.kind == "software" else "hardware"
        for node in failure.nodes:
            if merged.get(node) != "hardware":
                merged[node] = kind
        lost = [node for node, effect in merged.items() if effect == "hardware"]
        root_lost = self._root in lost and failed.get(self._root) != "hardware"
        self._root = next_root(self._root, lost, self.scenario.cluster.nodes)
        self._emit(
            self.env.now,
            "failure_injected",
            node=failure.nodes[0],
            failure=index,
            failure_kind=failure.label,
            effect=kind,
            nodes=list(failure.nodes),
            cause=failure.cause,
            reached_iteration=reached,
            partial_iteration_s=partial_s,
        )
        return _Chain(
            index,
            merged,
            failure.nodes,
            kind,
            failure.label,
            failure.schedule_index,
            self.env.now,
            reached,
            root_lost=root_lost,
        )

    def _until_collective_s(self, timeline: Timeline, time_s: float) -> float | None:
        """From ``time_s`` until the survivors' next collective (None: they run none)."""
        profile = self.model.profile
        k = timeline.reached_by(time_s) + 1  # the iteration in flight (or about to start)
        start = timeline.start(k)
        if time_s >= start:
            wait = profile.until_collective_s(time_s - start)
            if wait is not None:
                return wait
            start = timeline.start(k + 1)
        first = profile.until_collective_s(0.0)
        return None if first is None else start - time_s + first

    def _hangs(self, chain: _Chain) -> bool:
        """Whether the survivors' collectives hang on the lost node rather than fail.

        A partitioned node (``network``) keeps its connections open but silent; in netns
        mode a lost node's link goes down with it, so no reset reaches the survivors either
        (docs/cluster.md). Only while the job trains (there is a collective to hang in)."""
        if chain.collective_wait_s is None or chain.new_kind == "software":
            return False
        return self._unreachable(chain)

    def _unreachable(self, chain: _Chain) -> bool:
        """Whether a probe of the chain's lost node waits out its bound rather than being
        refused: a partitioned node (frozen in local mode, its link down in netns mode) or, in
        netns mode, any lost node (its link goes down with it)."""
        return chain.label == "network" or self.scenario.real.mode == "netns"

    def _detection(self, chain: _Chain) -> tuple[float, str]:
        """Expected seconds from the chain's failure to its detection, and by what: the first
        of the survivors' broken collective's probe, the heartbeat silence's probe and the
        lease."""
        detection = self.scenario.detection
        if chain.new_kind == "software":
            return detection.exit_report_s, "exit"
        ways: list[tuple[float, str]] = []
        if (
            detection.lost_node == "probe"
            and chain.label != "network"
            and not chain.hung
            and chain.collective_wait_s is not None
        ):
            # A survivor's broken collective starts the probe. When the root's own node is
            # the one lost, that survivor's agent finds the root's agent refusing connections
            # and deposes it: a new root is elected at once and probes the same way.
            # It fails once the survivors run it and the lost node's connections have
            # closed, whichever is later.
            raised = max(chain.collective_wait_s, detection.collective_failure_s)
            ways.append((raised + detection.probe_detection_s, "probe"))
        if chain.root_lost:
            # Nobody watches the root's heartbeat but the root.
            ways.append((root_loss_detection_s(detection), "election"))
        else:
            silence = silence_detection_s(detection, unreachable=self._unreachable(chain))
            if silence is not None:
                ways.append((silence, "silence"))
            ways.append((detection_delay_s(detection, chain.new_kind), "lease"))
        return min(ways, key=lambda way: way[0])  # the first listed of equal ones

    def _wait(self, duration: float) -> Generator[simpy.Event, Any, str]:
        """Sleep ``duration``; "done", or "failure"/"end" when one comes first."""
        upcoming = self.queue.next_timed()
        failure_at = upcoming.time_s if upcoming is not None else math.inf
        target = self.env.now + duration
        limit = min(failure_at, self.duration_s)
        if limit < target or failure_at <= self.env.now:
            yield self.env.timeout(max(0.0, limit - self.env.now))
            return "failure" if failure_at < self.duration_s else "end"
        yield self.env.timeout(duration)
        return "done"

    def _recover(self, chain: _Chain) -> Generator[simpy.Event, Any, str]:
        recovery = self.scenario.recovery
        delay, detected_by = self._detection(chain)
        outcome = yield from self._wait(delay)
        if outcome != "done":
            return outcome
        first = chain.new_nodes[0]
        if chain.root_lost:
            self._emit(self.env.now, "root_elected", node=self._root, failure=chain.index)
        for index in (*chain.undetected, chain.index):
            self._emit(
                self.env.now, "failure_detected", node=first, failure=index, detected_by=detected_by
            )
        chain.detected = True
        chain.undetected = ()
        chain.last_event_s = self.env.now
        # The real injector fires a lost node "during recovery" once the root has stopped the
        # job, before the survivors acknowledge: it joins this recovery.
        self.queue.arm_recovery_failures(chain.schedule_index, self.env.now, software=False)
        if not self._stopped:
            # Once the failure is detected, the root stops the attempt: the agents abort it,
            # the survivors park in process (their broken collectives may have parked them
            # already) and every live agent acknowledges. No process is killed: a survivor
            # waiting in a collective that hangs (DDP's bucket all-reduce, FSDP2's all-gather
            # and reduce-scatter on gloo) waits on a future the abort fails.
            # Found by a probe, a lost node broke the survivors' collectives first: they left
            # the failed group before the detection, and only the acknowledgements remain.
            stop = recovery.stop_s
            if detected_by == "probe" and recovery.stop_parked_s is not None:
                stop = recovery.stop_parked_s
            outcome = yield from self._wait(stop)
            if outcome != "done":
                return outcome
            self._stopped = True
            self._emit_chain(chain, "training_stopped")
            chain.last_event_s = self.env.now
        outcome = yield from self._wait(0.0)
        if outcome != "done":
            return outcome
        lost = sorted(n for n, k in chain.failed.items() if k == "hardware")
        if lost:
            starting = [
                node
                for node in lost
                if node not in self._ready_at
                or (node in chain.new_nodes and chain.new_kind == "hardware")
            ]
            # A ready spare whose live standby agent is left joins warm (its agent, store and
            # trainers are up): replacement_s alone. Otherwise the node's software starts cold,
            # and nodes emulated on one host start on its shared CPUs: together, k of them
            # take k times as long as one.
            orders = []
            for node in starting:
                wait, source = self.pool.acquire(self.env.now)
                warm = source == "standby" and self._warm_standby > 0
                self._warm_standby -= warm
                orders.append((node, wait, warm))
            cold = sum(1 for _, _, warm in orders if not warm)
            share = cold if self.scenario.cluster.single_host else 1
            for node, wait, warm in orders:
                start_s = 0.0 if warm else recovery.node_start_s * share
                self._ready_at[node] = self.env.now + wait + start_s
                self._emit_chain(
                    chain, "replacement_requested", node=node, standby="warm" if warm else "cold"
                )
            ready = max(self._ready_at.get(n, self.env.now) for n in lost)
            self.state.replacement_waits_s.append(ready - self.env.now)
            outcome = yield from self._wait(max(0.0, ready - self.env.now))
            if outcome != "done":
                return outcome
            self._emit_chain(chain, "replacement_ready", nodes=list(lost))
            chain.last_event_s = self.env.now
        spare_wait = self._take_spares(chain)
        if spare_wait > 0:
            self._emit_chain(chain, "restart_begin", spare_wait_s=round(spare_wait, 6))
        else:
            self._emit_chain(chain, "restart_begin")
        chain.restart_begun = True
        chain.last_event_s = self.env.now
        # ... and a trainer crash "during recovery" as the restarted trainers start.
        self.queue.arm_recovery_failures(chain.schedule_index, self.env.now, software=True)
        outcome = yield from self._wait(spare_wait + recovery.restart_s)
        if outcome != "done":
            return outcome
        self._emit_chain(chain, "process_group_ready")
        chain.group_ready = True
        chain.plan = self.memory.plan(chain.failed, self._persisted)
        outcome = yield from self._retrieve(chain, chain.plan)
        if outcome != "done":
            return outcome
        self._resume(chain, chain.plan, lost)
        return "done"

    def _retrieve(self, chain: _Chain, plan: ClusterPlan) -> Generator[simpy.Event, Any, str]:
        # A fixed cost first (connect to the stores, agree on the plan, verify; a fetch from a
        # peer's store: its request and reply too; a restore from storage: DCP's agreement,
        # metadata and planning), then bytes.
        readers = [s.node for s in plan.remote if s.from_node is None]
        fetchers = [s.node for s in plan.remote if s.from_node is not None]
        recovery = self.scenario.recovery
        overhead = recovery.retrieval_overhead_s
        if readers and recovery.persistent_retrieval_overhead_s is not None:
            overhead = recovery.persistent_retrieval_overhead_s
        elif fetchers and recovery.peer_retrieval_overhead_s is not None:
            overhead = recovery.peer_retrieval_overhead_s
        outcome = yield from self._wait(overhead)
        if outcome != "done":
            return outcome
        start = self.env.now
        copy_s = self.model.shard_bytes / self.scenario.cluster.copy_bytes_per_s
        finished: dict[int, tuple[float, str]] = {}
        processes = []
        for source in plan.remote:
            if source.from_node is not None:
                processes.append(
                    self.env.process(self._fetch(source.node, source.from_node, copy_s, finished))
                )
        if readers:  # identical reads from storage share it equally and end together
            processes.append(self.env.process(self._read_storage(readers, copy_s, finished)))
        if processes:
            upcoming = self.queue.next_timed()
            limit = min(upcoming.time_s if upcoming else math.inf, self.duration_s)
            everything = self.env.all_of(processes)
            if math.isfinite(limit):
                yield everything | self.env.timeout(max(0.0, limit - self.env.now))
            else:
                yield everything
            if not everything.triggered:
                self.network.cancel_all()
                return "failure" if limit < self.duration_s else "end"
        local_done = start + copy_s if plan.iteration is not None else start
        if self.env.now < local_done:
            outcome = yield from self._wait(local_done - self.env.now)
            if outcome != "done":
                return outcome
        shown = sorted(finished.items(), key=lambda item: (item[1][0], item[0]))
        counts = plan.tiers() if plan.iteration is not None else {}
        for index in chain.indices:
            for node, (time_s, tier) in shown[: self.node_event_limit]:
                self._emit(
                    time_s,
                    "state_restored",
                    node=node,
                    iteration=plan.iteration,
                    failure=index,
                    tier=tier,
                )
            self._emit(
                self.env.now,
                "state_restored",
                iteration=plan.iteration,
                failure=index,
                tier=_worst_tier(plan),
                tiers=dict(counts),
            )
        return "done"

    def _fetch(
        self, node: int, holder: int | None, copy_s: float, finished: dict[int, tuple[float, str]]
    ) -> Generator[simpy.Event, Any, None]:
        start = self.env.now
        down = f"down:{node}"
        self.network.add_link(down, self._node_bandwidth)
        if holder is None:
            route = ["storage", down]
            tier = "persistent"
        else:
            up = f"up:{holder}"
            self.network.add_link(up, self._node_bandwidth)
            route = [up, down]
            tier = "peer"
        yield self.network.transfer(self.model.shard_bytes, route)
        # The copy to the accelerator is pipelined with the transfer.
        if self.env.now < start + copy_s:
            yield self.env.timeout(start + copy_s - self.env.now)
        finished[node] = (self.env.now, tier)

    def _read_storage(
        self, readers: list[int], copy_s: float, finished: dict[int, tuple[float, str]]
    ) -> Generator[simpy.Event, Any, None]:
        """Every reader fetches its shard from storage: one flow for all, capped by their links."""
        start = self.env.now
        links = f"down:{len(readers)}-readers"
        self.network.add_link(links, self._node_bandwidth * len(readers))
        yield self.network.transfer(self.model.shard_bytes * len(readers), ["storage", links])
        if self.env.now < start + copy_s:
            yield self.env.timeout(start + copy_s - self.env.now)
        for node in readers:
            finished[node] = (self.env.now, "persistent")

    def _take_spares(self, chain: _Chain) -> float:
        """Give each crashed node's dead ranks a spare; how long the restart waits for the
        last of them to be warm, s.

        As the harness's agents do (``real.agent.trainer_processes``): the spare that has
        warmed longest is taken and raised to the trainers' priority, where it finishes
        warming at ``recovery.spare_warmup_s``'s pace; in the background, while the job
        trained, it warmed at ``spare_background_share`` of that pace. With no spare left (a
        crash before the node trained again, ``warm_spares`` crashes in a row) a process
        starts on the spot: the whole warm-up. A node whose ranks took a spare in a recovery
        that a later failure interrupted keeps it (its warm-up goes on), unless it crashed
        again. Lost nodes' ranks run in their replacement's trainers, warm (a standby's
        spares warm while it waits).
        """
        recovery = self.scenario.recovery
        if recovery.spare_warmup_s <= 0:
            return 0.0
        now = self.env.now
        warm_at = []
        for node, kind in sorted(chain.failed.items()):
            if kind != "software":
                continue
            fresh_crash = node in chain.new_nodes and chain.new_kind == "software"
            if node not in self._spare_warm_at or fresh_crash:
                pool = self._spares.setdefault(node, [-math.inf] * recovery.warm_spares)
                if pool:
                    since = min(pool)
                    pool.remove(since)
                    remaining = 0.0
                    if since > -math.inf:
                        done = (now - since) * recovery.spare_background_share
                        remaining = max(0.0, recovery.spare_warmup_s - done)
                else:
                    remaining = recovery.spare_warmup_s
                self._spare_warm_at[node] = now + remaining
            warm_at.append(self._spare_warm_at[node])
        return max((max(0.0, t - now) for t in warm_at), default=0.0)

    def _top_up_spares(self, lost: list[int]) -> None:
        """The node trains again: new spares replace those taken and begin warming in the
        background; a replaced node's spares are warm."""
        for node in lost:
            self._spares.pop(node, None)
            self._spare_warm_at.pop(node, None)
        wanted = self.scenario.recovery.warm_spares
        for node in self._spare_warm_at:
            pool = self._spares.setdefault(node, [])
            pool.extend([self.env.now] * (wanted - len(pool)))
        self._spare_warm_at.clear()

    def _resume(self, chain: _Chain, plan: ClusterPlan, lost: list[int]) -> None:
        if plan.rollback:
            self.state.rollbacks += 1
        # Persistent baselines keep no checkpoint in CPU memory; Gemini's agents keep the
        # restored iteration (own shard, and surviving replicas of it if it was committed;
        # ``ClusterMemory.restored``).
        self.memory.restored(plan.iteration if self.strategy.in_memory else None, lost)
        self._emit_chain(chain, "training_resumed", iteration=plan.iteration)
        self._stopped = False
        for node in lost:
            self._ready_at.pop(node, None)
        self._top_up_spares(lost)


def detection_delay_s(detection: DetectionConfig, kind: str) -> float:
    """Expected time from a failure to its detection by exit report or lease, s.

    A crash is reported by its agent (``exit_report_s``). A lost node nobody probes is noticed
    when its heartbeat lease runs out: the lease was renewed at the node's last beat, which
    came at a uniformly random phase of the beat period before the failure, so on average the
    lease ends ``lease_timeout_s - heartbeat_interval_s / 2`` after it; the root sees the key
    gone at its next read of the store, half its period (``ROOT_POLL_S``) later on average.
    """
    if kind == "software":
        return detection.exit_report_s
    return detection.lease_timeout_s - detection.heartbeat_interval_s / 2 + ROOT_POLL_S / 2


def silence_detection_s(detection: DetectionConfig, *, unreachable: bool) -> float | None:
    """Expected time from a node's loss to its detection by the probe its heartbeat's silence
    starts, s; None without one (``lost_node: lease``).

    The node's last beat came at a uniformly random phase of the beat period before the loss,
    so its heartbeat has stood still for ``silence_s`` some ``silence_s - heartbeat_interval_s
    / 2`` after the loss on average. The probe then fails at once when the node's agent is
    gone (refused) or after ``probe_timeout_s`` when it cannot answer (``unreachable``: a
    partition, a link down). Three of the root's reads of the store (``ROOT_POLL_S`` apart)
    each add half a period on average: the one that first sees the last beat (the silence is
    timed from there, by the root's clock), the one that finds the silence long enough and
    starts the probe, and the one that reads the probe's end. (Until 2026-12-05 they were left
    out; added after the validation's silent nodes measured 1.80-2.02 s against 1.75 s.)
    """
    silence = detection.silence_s
    if silence is None:
        return None
    wait = detection.probe_timeout_s if unreachable else 0.0
    return silence - detection.heartbeat_interval_s / 2 + wait + 1.5 * ROOT_POLL_S


ELECTION_RETRY_LIMIT_S = 0.25
"""A candidate retries the election every ``min(ELECTION_RETRY_LIMIT_S, lease_timeout_s / 4)``
(the node agent's setting)."""


def root_loss_detection_s(detection: DetectionConfig) -> float:
    """Expected time from the loss of the root agent's node to its detection, s.

    Nobody is left to probe: a new root must be elected first. The dead root renewed its
    election lease every third of ``lease_timeout_s``, at a uniformly random phase before the
    failure, so the leader key lapses ``5/6 lease_timeout_s`` after it on average; a candidate
    wins at its next retry (half a retry period on average). The new root then finds the node
    lost by probing it (the survivors' broken collectives left their reports), or with
    ``lost_node: lease`` once the node's heartbeat lease has run out too.
    """
    lease = detection.lease_timeout_s
    elected = lease * 5 / 6 + min(ELECTION_RETRY_LIMIT_S, lease / 4) / 2
    if detection.lost_node == "probe":
        return elected + detection.probe_detection_s
    return max(elected, detection_delay_s(detection, "hardware"))


def _worst_tier(plan: ClusterPlan) -> str:
    if plan.iteration is None:
        return "scratch"
    return max((s.tier for s in plan.remote), key=_TIER_ORDER.__getitem__, default="local")


__all__ = [
    "RunState",
    "SimProgress",
    "Simulation",
    "detection_delay_s",
    "root_loss_detection_s",
    "silence_detection_s",
]
