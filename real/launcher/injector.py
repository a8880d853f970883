"""The failure injector: one utility for the launcher, the tests and the chaos run.

It fires each failure of the scenario's schedule in order, when its trigger comes:

- ``at_iteration: N``: once every rank has ended iteration N, or, when N is checkpointed,
  captured it (``ckpt_captured``: the copy done, its replication not started; read from the
  event files). Every rank holds at its save of N until the failure is performed (for lost
  nodes: until their processes have their SIGKILL, before their reaping) (``_arm``;
  ``real.trainer.inject.hold_point``): a small state replicates within milliseconds of its
  capture, faster than this thread sees the event, and a rank not held would begin N + 1;
- ``at_time_s: T``: T seconds after training began (the first iteration's start, where the
  run's ``startup_s`` ends), as in the simulator, whose training begins at 0: the
  cluster's start-up takes what it takes, and a failure never strikes before the job runs;
- ``during: replication``: after the trigger, at the next checkpoint captured on the failing
  node, while its replication to the peers is in flight (interleaved replication sends the
  chunks of iteration i during iteration i+1);
- ``during: recovery``: while the previous failure is being recovered: a lost node once the
  root has stopped the job for it; a trainer crash once the restarted trainers are up but have
  not resumed training yet (they are restoring).

and performs it as ``shared.failure_kinds`` says, the same meaning the simulator gives it:

==============  =================================================================================
``software``    SIGKILL the trainer of the node's first local rank (the node and its memory live)
``hardware``    every process of the node (agent, store, trainers) and its shared memory
``network``     the node's link goes down (``netns``); in ``local`` mode its processes freeze
                (SIGSTOP), and are fenced (killed) once the root has replaced the node
``root_agent``  a hardware failure of the node running the root agent at that moment (read
                from the leader key; the named node only while no root is elected)
``group``       a hardware failure of every node in the placement groups of the nodes named
==============  =================================================================================

Two failures at once in different groups: one schedule entry naming both nodes, or two entries
with the same trigger. Each failure is recorded before it is performed: ``failures/<index>`` in
the coordination store (what the root matches detections against) and a ``failure_injected``
event (``failure``, ``failure_kind``, ``effect``: software or hardware, ``nodes``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from real.agent import jobkeys
from real.engine.eventlog import EventLog
from real.launcher.progress import Progress, ProgressWatcher
from real.trainer.inject import held_path, hold_folder, hold_path
from shared.failure_kinds import ResolvedFailure, resolve_failure
from shared.placement import plan_placement
from shared.scenario import Scenario, ScheduledFailure

log = logging.getLogger(__name__)
POLL_S = 0.01


@dataclass(frozen=True)
class Injected:
    """A failure performed: its index, kind, slots and node ids, and when (run seconds)."""

    index: int
    kind: str
    nodes: tuple[int, ...]
    node_ids: tuple[int, ...]
    time_s: float
    attempt: int | None = None


class FailureInjector:
    """Injects failures into a running cluster (``LocalCluster`` or ``NetnsCluster``).

    Args:
        cluster: the cluster (kill_trainer, kill_node, freeze_node, members, leader...).
        scenario: the scenario (placement for ``group``).
        events: where ``failure_injected`` goes (the launcher's log).
        schedule: the failures to inject in order (default: the scenario's).
    """

    def __init__(
        self,
        cluster: object,
        scenario: Scenario,
        events: EventLog,
        schedule: Sequence[ScheduledFailure] | None = None,
    ) -> None:
        self.cluster = cluster
        self.scenario = scenario
        self.events = events
        self.schedule = list(scenario.failures.schedule if schedule is None else schedule)
        config = scenario.checkpoint
        self.placement = plan_placement(
            scenario.cluster.nodes,
            config.replicas,
            config.placement,
            domains=scenario.cluster.domain_names(),
            explicit=config.explicit_placement,
        )
        self.watcher = ProgressWatcher(cluster.run_dir)  # type: ignore[attr-defined]
        self.injected: list[Injected] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- the schedule thread ----------------------------------------------------------------

    def start(self) -> FailureInjector:
        self._thread = threading.Thread(target=self._run, name="injector", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    @property
    def finished(self) -> bool:
        return len(self.injected) >= len(self.schedule)

    def _run(self) -> None:
        try:
            for index, failure in enumerate(self.schedule):
                holds = self._arm(failure)
                try:
                    if not self._wait_trigger(index, failure, tuple(holds)):
                        return
                    self.inject(index, failure, holds=holds)
                finally:
                    _release(holds)  # performed (or given up): the ranks go on
        except BaseException as error:  # reported by the launcher
            log.exception("failure injector stopped")
            self.errors.append(error)

    def _wait_trigger(
        self, index: int, failure: ScheduledFailure, held: Collection[int] = ()
    ) -> bool:
        while not self._stop.is_set():
            progress = self.watcher.poll()
            if failure.during == "recovery" and index > 0:
                due = self._in_recovery(index - 1, failure)
            elif failure.at_iteration is not None:
                due = self._reached(progress, failure, failure.at_iteration, held)
            elif failure.at_time_s is not None:
                began = progress.began
                due = began is not None and self.events.now() >= began + failure.at_time_s
            else:
                due = True
            if due:
                return self._wait_capture(failure) if failure.during == "replication" else True
            time.sleep(POLL_S)
        return False

    def _arm(self, failure: ScheduledFailure) -> dict[int, Path]:
        """Hold every rank of the job at its save of k, until an ``at_iteration: k`` failure
        is performed (``real.trainer.inject.hold_point``): the file that arms each rank's
        hold. Every rank, not only the ones it strikes: in the simulator the failure strikes
        as k ends everywhere, so no rank has begun k + 1 (whose part-iteration would count as
        lost progress in the harness and not in the simulator)."""
        if failure.at_iteration is None or failure.during != "training":
            return {}
        cluster = self.scenario.cluster
        folder = hold_folder(Path(self.cluster.run_dir))  # type: ignore[attr-defined]
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            rank: hold_path(folder, rank, failure.at_iteration)
            for rank in range(cluster.nodes * cluster.accelerators_per_node)
        }
        for path in paths.values():
            path.touch()
        return paths

    def _resolve(self, failure: ScheduledFailure) -> tuple[ResolvedFailure, dict[int, int]]:
        """What ``failure`` strikes now (``root_agent``: the root's node at this moment), and
        the job's members (slot -> node id)."""
        members = self.cluster.members()  # type: ignore[attr-defined]
        root: int | None = None
        if failure.kind == "root_agent":
            leader = self.cluster.leader()  # type: ignore[attr-defined]
            root = next((s for s, n in members.items() if n == leader), None)
        target = resolve_failure(failure.kind, failure.nodes, placement=self.placement, root=root)
        return target, members

    def _reached(
        self,
        progress: Progress,
        failure: ScheduledFailure,
        iteration: int,
        held: Collection[int] = (),
    ) -> bool:
        """Whether ``iteration`` has ended where ``failure`` strikes: with holds (``_arm``),
        once every held rank has ended or captured it, so that the failure strikes as the
        iteration ends on every rank, its capture done and its replicas not yet sent, as the
        simulator's does; without, once every rank of the nodes it names has (for
        ``root_agent``, whose node is known only when it strikes: once some rank has)."""
        if held:
            folder = hold_folder(Path(self.cluster.run_dir))  # type: ignore[attr-defined]
            return all(
                progress.ended.get(rank, 0) >= iteration
                or held_path(hold_path(folder, rank, iteration)).exists()
                for rank in held
            )
        if failure.kind == "root_agent":
            return progress.max_iteration >= iteration
        per_node = self.scenario.cluster.accelerators_per_node
        ranks = [n * per_node + r for n in failure.nodes for r in range(per_node)]
        return all(progress.ended.get(rank, 0) >= iteration for rank in ranks)

    def _in_recovery(self, previous: int, failure: ScheduledFailure) -> bool:
        record = self.cluster.attempt()  # type: ignore[attr-defined]
        if record is None or len(self.injected) <= previous:
            return False
        if failure.kind == "software":
            # The restarted trainers are up (restoring) but have not resumed yet.
            before = self.injected[previous].attempt
            if record["state"] != "running" or before is None or record["attempt"] <= before:
                return False
            node_id = jobkeys.members_of(record)[failure.nodes[0]]
            pids = self.cluster.pids(node_id)  # type: ignore[attr-defined]
            return pids.get("attempt") == record["attempt"] and bool(pids.get("trainers"))
        # The root has stopped the job of the attempt the previous failure struck.
        before = self.injected[previous].attempt
        return record["state"] == "stopped" and before is not None and record["attempt"] == before

    def _wait_capture(self, failure: ScheduledFailure) -> bool:
        per_node = self.scenario.cluster.accelerators_per_node
        ranks = {n * per_node + r for n in failure.nodes for r in range(per_node)}
        seen = len(self.watcher.poll().captured)
        while not self._stop.is_set():
            captured = self.watcher.poll().captured
            if any(rank in ranks for _, rank, _ in captured[seen:]):
                return True
            seen = len(captured)
            time.sleep(POLL_S / 5)
        return False

    # -- performing -------------------------------------------------------------------------

    def inject(
        self, index: int, failure: ScheduledFailure, holds: Mapping[int, Path] | None = None
    ) -> Injected:
        """Record and perform one failure now; ``holds``: every rank holds at the end of
        ``failure.at_iteration`` (``_arm``), so that iteration is the one reached, and nothing
        of the next has begun. The ranks go on as soon as the failure has struck: for lost
        nodes once their processes are signalled, before the cluster reaps them and removes
        their memory (tens of milliseconds that no real node's loss makes its peers wait)."""
        held = bool(holds)
        cluster = self.cluster
        kind = failure.kind
        target, members = self._resolve(failure)
        slots = list(target.nodes)
        node_ids = [members[s] for s in slots]
        record = cluster.attempt()  # type: ignore[attr-defined]
        attempt = None if record is None else int(record["attempt"])
        progress = self.watcher.poll()
        per_node = self.scenario.cluster.accelerators_per_node
        replicating = [
            rank
            for _, rank, iteration in progress.captured[-4 * len(members) :]
            if rank // per_node in slots and (rank, iteration) not in progress.committed
        ]
        jobkeys.put_json(
            cluster.kv,  # type: ignore[attr-defined]
            f"{jobkeys.FAILURES_PREFIX}{index}",
            {
                "index": index,
                "kind": kind,
                "nodes": slots,
                "node_ids": node_ids,
                "time": time.time(),
            },
        )
        event = self.events.emit(
            "failure_injected",
            failure=index,
            failure_kind=kind,
            effect=target.effect,
            nodes=slots,
            node_ids=node_ids,
            during=failure.during,
            replicating=bool(replicating),
            **(
                # Every rank waits at the end of k, none has ended it yet (an iteration ends
                # after its save): as the simulator records a failure at an iteration's end.
                {"reached_iteration": failure.at_iteration, "partial_iteration_s": 0.0}
                if held
                and failure.at_iteration is not None
                and progress.max_iteration < failure.at_iteration
                else {"reached_iteration": progress.max_iteration}
            ),
        )
        if target.action == "kill_trainer":
            for slot, node_id in zip(slots, node_ids, strict=True):
                if not cluster.kill_trainer(node_id, slot * per_node):  # type: ignore[attr-defined]
                    log.warning("failure %d: no trainer running on node %d", index, node_id)
        elif target.action == "partition_node":
            for node_id in node_ids:
                cluster.partition_node(node_id)  # type: ignore[attr-defined]
        else:  # every node of the failure at once
            cluster.kill_nodes(node_ids, signalled=lambda: _release(holds or {}))  # type: ignore[attr-defined]
        log.warning("injected failure %d: %s of slots %s (nodes %s)", index, kind, slots, node_ids)
        done = Injected(index, kind, tuple(slots), tuple(node_ids), event.time_s, attempt)
        with self._lock:
            self.injected.append(done)
        return done


def _release(holds: Mapping[int, Path]) -> None:
    """Let the ranks held at a failure's iteration go on (again: nothing more)."""
    for path in holds.values():
        path.unlink(missing_ok=True)
        held_path(path).unlink(missing_ok=True)


def chaos_schedule(
    scenario: Scenario, failures: int, rng: random.Random, first: int = 4, gap: int = 6
) -> list[ScheduledFailure]:
    """A random schedule of ``failures`` failures of every kind, one every ``gap`` iterations.

    Kinds are drawn from software, hardware, root_agent and group (software and hardware twice
    as often), some during replication; about one in five is a lost node during the previous
    failure's recovery. Nodes are drawn uniformly; iterations start at ``first``.
    """
    nodes = scenario.cluster.nodes
    kinds = ["software", "hardware", "root_agent", "group", "software", "hardware"]
    schedule: list[ScheduledFailure] = []
    for i in range(failures):
        node = rng.randrange(nodes)
        entry: dict[str, object]
        if schedule and rng.random() < 0.2:
            entry = {"kind": "hardware", "nodes": [node], "during": "recovery"}
        else:
            entry = {
                "kind": rng.choice(kinds),
                "nodes": [node],
                "at_iteration": first + gap * i,
                "during": rng.choice(["training", "training", "replication"]),
            }
        schedule.append(ScheduledFailure.model_validate(entry, strict=False))
    return schedule
