"""``GeminiCheckpointer``: the in-memory checkpoint engine behind ``real.engine.api.Checkpointer``.

A training loop restores once and saves after every optimizer step::

    checkpointer = GeminiCheckpointer(scenario=scenario, rank=rank, world_size=world,
                                      node=node, local_rank=local_rank, run_dir=run_dir)
    checkpointer.attach(ddp_model)          # optional: profile DDP traffic for interleaving
    restored = checkpointer.restore()   # template=...: the persistent tier reads only its shape
    ...
    checkpointer.save(iteration, trainer.state())   # returns once the state is copied
    checkpointer.close()

Where the stores are and the job's secret come from the launcher or node agent, through the
environment unless given as arguments:

``GEMINI_STORE_ADDRS``   ``host:port`` of every node's store, comma-separated, in node order
``GEMINI_TOKEN``         the job's secret token (HMAC key of every store connection)
``GEMINI_RESTORE_PLAN``  optional: the root agent's recovery plan, JSON text or a file path
                         (``{"iteration": 7, "sources": [{"node": 0, "tier": "local",
                         "from_node": 0}, ...]}``); without it the ranks decide together
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from real.engine import restore as restoring
from real.engine import tiers
from real.engine.api import LiveState, Restored
from real.engine.capture import Capturer
from real.engine.client import PlacedDataError, StoreClient
from real.engine.costs import difference
from real.engine.eventlog import EventLog
from real.engine.replication import ReplicationManager
from real.engine.shm import held_slot
from real.persistent.from_memory import PersistentTier
from real.runtime.env import (
    GEMINI_RESTORE_PLAN,
    GEMINI_STORE_ADDRS,
    GEMINI_TOKEN,
    GEMINI_VERIFY_LOCAL,
)
from real.trainer.inject import hold_point
from real.trainer.inprocess import check_abort
from shared.adaptive import due, persist_every
from shared.errors import NodeStoreError, VerificationError
from shared.placement import plan_placement
from shared.recovery import RecoveryPlan
from shared.scenario import GBIT, Scenario

log = logging.getLogger(__name__)
ADDRS_ENV, TOKEN_ENV, PLAN_ENV = GEMINI_STORE_ADDRS, GEMINI_TOKEN, GEMINI_RESTORE_PLAN
VERIFY_ENV = GEMINI_VERIFY_LOCAL
RESTORE_ROUNDS = 4
NEVER = 1 << 62  # a persistence interval no run reaches


class GeminiCheckpointer:
    """In-memory checkpoints of one rank: capture, replicate, verify, commit, restore.

    Args:
        scenario: cluster shape (nodes, accelerators per node) and checkpoint settings.
        rank, world_size, node, local_rank: this trainer's place in the job.
        run_dir: the run's folder (the default persistent tier lives in ``persistent/``).
        store_address: this node's store (default: entry ``node`` of the store addresses).
        token: the job's secret (default: ``GEMINI_TOKEN``).
        store_addresses: every node's store (default: ``GEMINI_STORE_ADDRS``).
        persistent_url: fsspec URL of the persistent tier (default: the scenario's storage
            URL, else ``<run_dir>/persistent``).
        model: the training model; a ``DistributedDataParallel`` one is profiled (``attach``).
        template: returns this rank's current state; the persistent tier reads this rank's
            tensors shaped as it (shards as shards). Without one, every tensor whole.
        event_log: where ckpt_* and state_restored events go (default: ``ckpt-n<node>-r<rank>``).
        verify_local: a restore from this node's memory hashes every block against the sealed
            manifest before copying (default: ``GEMINI_VERIFY_LOCAL=1``, else off: the slot's
            manifest, checksum and MAC are checked and its data, sealed by this job, trusted;
            replicas are always verified as they arrive, and peer restores as they stream).
    """

    def __init__(
        self,
        *,
        scenario: Scenario,
        rank: int,
        world_size: int,
        node: int,
        local_rank: int,
        run_dir: str | Path,
        store_address: str | None = None,
        token: str | None = None,
        store_addresses: list[str] | None = None,
        persistent_url: str | None = None,
        model: Any = None,
        template: Callable[[], Mapping[str, Any]] | None = None,
        event_log: EventLog | None = None,
        verify_local: bool | None = None,
    ) -> None:
        cluster, config = scenario.cluster, scenario.checkpoint
        if world_size != cluster.ranks:
            raise ValueError(
                f"world_size {world_size} does not match the scenario's "
                f"{cluster.nodes} nodes x {cluster.accelerators_per_node} ranks"
            )
        addresses = store_addresses or [
            a.strip() for a in os.environ.get(ADDRS_ENV, "").split(",") if a.strip()
        ]
        if store_address is not None:
            addresses = addresses or [store_address] * cluster.nodes
            addresses[node] = store_address
        if len(addresses) != cluster.nodes:
            raise ValueError(
                f"need one store address per node ({cluster.nodes}), got "
                f"{len(addresses)}: set {ADDRS_ENV}=host:port,host:port,..."
            )
        secret = token or os.environ.get(TOKEN_ENV)
        if not secret:
            raise ValueError(f"no job token: pass token= or set {TOKEN_ENV}")
        self.scenario, self.rank, self.node, self.local_rank = scenario, rank, node, local_rank
        self.addresses, self.token = addresses, secret
        self.per_node = cluster.accelerators_per_node
        self.persistent_url = (
            persistent_url or cluster.storage.url or str(Path(run_dir) / "persistent")
        )
        self.placement = plan_placement(
            cluster.nodes,
            config.replicas,
            "explicit" if config.placement == "explicit" else config.placement,
            domains=cluster.domain_names(),
            explicit=config.explicit_placement,
        )
        self.template = template
        self.verify_local = (
            os.environ.get(VERIFY_ENV, "") == "1" if verify_local is None else verify_local
        )
        self._clobbered = False
        self._own_events = event_log is None
        self.events = event_log or EventLog.from_env(f"ckpt-n{node}-r{rank}", node=node, rank=rank)
        self.client = StoreClient(node, addresses[node], secret)
        self.capturer = Capturer(
            self.client, rank, config.buffer_bytes, config.sub_buffers, config.local_slots
        )
        self.replication = ReplicationManager(
            scenario, self.placement, node, rank, self.capturer, addresses, secret, self.events
        )
        # checkpoint.interval: save() checkpoints every k-th iteration from the anchor (the
        # start, the restored iteration, or where k last changed); k is agreed by all ranks.
        self._fixed_interval = 1 if config.interval == "adaptive" else config.interval
        self._interval, self._anchor = self._fixed_interval, 0
        self._resumed_at: float | None = None  # when the last save() returned
        self.persistent: PersistentTier | None = None
        # persist_interval: young|daly: the interval follows the failures this process saw.
        self._born, self._failures = time.monotonic(), 0
        if config.persists_from_memory:
            # First: its group is built lazily (connected by its first save), which must not
            # overlap another group's construction on a thread of ours (engine-keep, next).
            self.persistent = PersistentTier(
                self.persistent_url,
                config.persist_every_iterations or NEVER,
                self.capturer,
                rank,
                self.events,
            )
            self.replication.on_commit = self.persistent.committed
        # A gloo group for the engine's small collectives (CPU tensors, also under NCCL).
        self.group = _gloo_group()
        # The sender agrees on the newest iteration every rank has committed on a gloo group of
        # its own, in the background (collectives of two threads must not share a group); the
        # group connects in the background too, off the restart's path.
        if config.commit != "next_iteration_end":
            self.replication.keep_group = _background_group("engine-keep")
        if model is not None and hasattr(model, "register_comm_hook"):
            self.attach(model)  # DDP: profile its all-reduces to find the idle spans

    def attach(self, ddp_model: Any) -> None:
        """Profile ``ddp_model``'s all-reduces to find idle spans (before its first backward)."""
        self.replication.attach(ddp_model)

    def save(self, iteration: int, state: Mapping[str, Any]) -> None:
        """Capture ``state`` (returns once copied); replication and commit follow.

        Raises:
            AttemptAborted: the node agent stopped this attempt (in-process recovery).
            ConnectionError: a peer is gone (the agreement on the last committed checkpoint
                failed): nothing is captured, so every iteration a recovery may need stays.
        """
        costs, started = self.capturer.costs, time.perf_counter()
        check_abort()
        if self._resumed_at is not None:  # the iteration's training time, save() excluded
            self.replication.iteration_seconds.append(started - self._resumed_at)
        persist = self._persist_every()
        if not due(iteration, self._anchor, self._interval, persist):
            # Not a checkpoint iteration: the next one begins, the checkpoint in flight rides
            # in its idle spans, and a prepared one counts once this iteration has ended.
            self.replication.commit_prepared()
            self.replication.tick()
            hold_point(self.rank, iteration)  # the harness's failure at this iteration's end
            self._resumed_at = time.perf_counter()
            return
        # The previous checkpoint's remaining chunks go now (an abort ends the wait).
        self.replication.wait(check=check_abort)
        waited = time.perf_counter()
        costs.add("save: wait for the previous checkpoint", waited - started)
        self.replication.commit_prepared()  # commit: next_iteration_end, its iteration has ended
        # The newest iteration every rank has committed must survive this capture, here and
        # on the peers, or a failure now could leave no iteration that all ranks hold.
        if self.scenario.checkpoint.commit == "next_iteration_end":
            # The commit just happened here: agree on it now (the commit rule needs it).
            last = self.replication.last_committed
            agreed = restoring.all_reduce_int(-1 if last is None else last, "min", self.group)
            if self.group is not None:
                costs.add(
                    "save: all_reduce(min) of the last committed (round trip)",
                    time.perf_counter() - waited,
                )
        else:  # agreed in the background after each checkpoint finished (no round trip here)
            known = self.replication.keep()
            agreed = -1 if known is None else known
            if self.group is not None:
                costs.add(
                    "save: every rank's last commit, agreed in the background (wait)",
                    time.perf_counter() - waited,
                )
        if self.replication.interval.adaptive:
            self._agree_interval(iteration)
        if self.scenario.checkpoint.persist_interval != "fixed":
            self._agree_persistence(iteration)
            persist = self._persist_every()
        anchor, interval = self._anchor, self._interval
        # The iterations until the next checkpoint: this one's chunks ride in their idle spans.
        self.replication.window = next(
            j for j in range(1, interval + 1) if due(iteration + j, anchor, interval, persist)
        )
        captured = self.capturer.capture(iteration, state, None if agreed < 0 else agreed)
        captured_at = time.perf_counter()
        if self.persistent is not None:
            self.persistent.captured(iteration, state)
        self.events.emit(
            "ckpt_captured",
            iteration=iteration,
            bytes=captured.nbytes,
            duration_s=captured.seconds,
            throughput_bytes_per_s=captured.nbytes / max(captured.seconds, 1e-9),
        )
        # The harness's failure at this iteration's end strikes here, before a byte is sent.
        hold_point(self.rank, iteration)
        self.replication.submit(captured)
        ended = time.perf_counter()
        costs.add("save: event, hand-off to the sender (fixed)", ended - captured_at)
        costs.add("save: total", ended - started, captured.nbytes)
        self._resumed_at = time.perf_counter()

    def _persist_every(self) -> int | None:
        every = None if self.persistent is None else self.persistent.every
        return None if every is None or every >= NEVER else every

    def _agree_persistence(self, iteration: int) -> None:
        """``persist_interval: young|daly``: Young's or Daly's interval for the failures this
        process has seen (``shared.adaptive.persist_every``), the largest proposal of all ranks
        (a collective, at a checkpoint iteration every rank reaches)."""
        assert self.persistent is not None
        config, cluster = self.scenario.checkpoint, self.scenario.cluster
        seconds = self.replication.iteration_seconds
        proposal = self.persistent.every
        if seconds:
            # t_save: the job's state over the storage's bandwidth (plus serialising it), as
            # the simulator's background persistence from memory.
            save_s = self.scenario.model.checkpoint_bytes / (
                cluster.storage.bandwidth_gbit_s * GBIT
            ) + (cluster.storage.save_time_s or 0.0)
            process = self.scenario.failures.process
            prior = None if process is None else process.node_mtbf_s(cluster.nodes) / cluster.nodes
            chosen = persist_every(
                "young" if config.persist_interval == "young" else "daly",
                save_s,
                statistics.median(seconds),
                self._failures,
                time.monotonic() - self._born,
                prior,
            )
            proposal = NEVER if chosen is None else chosen
        agreed = restoring.all_reduce_int(proposal, "max", self.group)
        if agreed != self.persistent.every:
            log.info(
                "node %d rank %d: persisting every %s iterations from iteration %d",
                self.node,
                self.rank,
                "no" if agreed >= NEVER else agreed,
                iteration,
            )
            self.persistent.every = agreed

    def _agree_interval(self, iteration: int) -> None:
        """``checkpoint.interval: adaptive``: every rank takes the largest k proposed (a
        collective, at a checkpoint iteration every rank reaches), from this iteration on."""
        proposal = self.replication.interval.interval
        agreed = restoring.all_reduce_int(proposal, "max", self.group)
        if agreed == self._interval:
            return
        decision = self.replication.last_decision
        self.events.emit(
            "ckpt_interval_changed",
            iteration=iteration,
            interval=agreed,
            previous=self._interval,
            proposed=proposal,
            # This rank's inputs: the throughput it planned with (measured, at most the link's
            # bandwidth), one iteration's idle time and its training time.
            throughput_bytes_per_s=None if decision is None else decision.throughput_bytes_per_s,
            idle_s=None if decision is None else decision.idle_s,
            iteration_s=(
                statistics.median(self.replication.iteration_seconds)
                if self.replication.iteration_seconds
                else None
            ),
        )
        log.info(
            "node %d rank %d: checkpoint every %d iterations from iteration %d (was %d)",
            self.node,
            self.rank,
            agreed,
            iteration,
            self._interval,
        )
        self._interval, self._anchor = agreed, iteration

    def wait(self, timeout_s: float = 300.0) -> bool:
        """Wait until the last saved checkpoint is replicated (or failed).

        With ``commit: on_arrival`` it is then committed; with ``next_iteration_end`` it stays
        prepared until the next ``save()``.
        """
        return self.replication.wait(timeout_s)

    @property
    def last_committed(self) -> int | None:
        return self.replication.last_committed

    def restore(
        self,
        template: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        plan: RecoveryPlan | None = None,
        into: LiveState | None = None,
    ) -> Restored | None:
        """Restore the newest iteration every rank can get; None to start from scratch.

        Args:
            template: the state's shape for the persistent tier's DCP load, or a callable
                returning it (asked for only when that tier serves); default: ``into``, else
                the constructor's, else none: every tensor is read whole, as stored (under
                FSDP2 the global tensors, which the adapters' loads take too).
            plan: the root agent's plan (default: ``GEMINI_RESTORE_PLAN``, else decided here).
            into: the live state (the model's and optimizer's tensors, as given to ``save()``),
                or a callable returning it, asked for only when a memory tier serves: every
                checkpointed tensor is copied straight into the live tensor of the same name,
                dtype and shape (from the slot's memory, or from the peer's socket), and
                ``Restored.state`` holds those same tensors; tensors with no live counterpart
                come back fresh. None: fresh tensors (a caller with no state yet).

        Raises:
            RuntimeError: no consistent checkpoint after several plans; or a shard that failed
                verification had already been streamed into the live tensors and no other
                source replaced it (the live state is then undefined: restart the process).
        """
        started = time.perf_counter()
        costs_before = self.capturer.costs.snapshot()
        plan = plan or _plan_from_env()
        # Every rank, a replacement too, starts the interval afresh from the restored iteration.
        self._interval, self._anchor, self._resumed_at = self._fixed_interval, 0, None
        clients: dict[int, StoreClient | None] = {self.node: self.client}
        self._clobbered = False

        def client(node: int) -> StoreClient | None:
            if node not in clients:
                try:
                    with self.capturer.costs.timed("restore: connect to a store (round trips)"):
                        clients[node] = StoreClient(node, self.addresses[node], self.token, 10.0)
                except OSError:
                    clients[node] = None
            return clients[node]

        live = _Live(into, self.capturer.costs)
        try:
            for _ in range(RESTORE_ROUNDS):
                if plan is None:
                    costs = self.capturer.costs
                    with costs.timed("restore: holdings of every store (round trips)"):
                        found = restoring.survey(
                            client,
                            self.placement.nodes,
                            complete=tiers.complete_counts(self.scenario, self.verify_local),
                        )
                    with costs.timed("restore: persistent tier's newest iteration"):
                        persistent = (
                            tiers.latest_persistent(self.persistent_url)
                            if self._persistent_configured()
                            else None
                        )
                    with costs.timed("restore: plan, all_gather to agree (round trip)"):
                        plan = restoring.agree(
                            restoring.decide(self.placement, found, self.per_node, persistent),
                            self.placement.nodes,
                            self.group,
                        )
                    log.info(
                        "node %d rank %d: recovery plan: %s", self.node, self.rank, plan.reason
                    )
                if plan.iteration is None:
                    if self._clobbered:
                        raise RuntimeError(
                            f"node {self.node} rank {self.rank}: a shard that failed "
                            "verification was streamed into the live state and no checkpoint "
                            "is left to replace it; restart this process"
                        )
                    return None
                result = self._fetch(plan, client, template, live)
                # One reduction says both whether any rank failed its read and whether any
                # restored a copy that was only complete (not committed everywhere).
                status = 2 if result is None else int(not result[3])
                with self.capturer.costs.timed("restore: all_reduce, every rank read (round trip)"):
                    status = restoring.all_reduce_int(status, "max", self.group)
                if status < 2 and result is not None:
                    tier, source_node, state, _ = result
                    seconds = time.perf_counter() - started
                    spent = difference(self.capturer.costs.snapshot(), costs_before)
                    log.info(
                        "node %d rank %d: iteration %d restored from %s in %.3f s (%s)",
                        self.node,
                        self.rank,
                        plan.iteration,
                        tier,
                        seconds,
                        ", ".join(
                            f"{name.removeprefix('restore: ')} {value['s']:.3f}"
                            for name, value in spent.items()
                        ),
                    )
                    if self._own_events:  # a trainer passing its log records this itself
                        self.events.emit(
                            "state_restored",
                            iteration=plan.iteration,
                            tier=tier,
                            source_node=source_node,
                            duration_s=seconds,
                        )
                    self.replication.restored(plan.iteration, committed=status == 0)
                    self._anchor = plan.iteration
                    self._forget_newer(plan.iteration)
                    self._failures += 1  # a restore follows a failure (or a job restart)
                    return Restored(plan.iteration, tier, state, source_node, seconds)
                plan = None  # someone's shard failed everywhere: plan again without it
            raise RuntimeError(
                f"node {self.node} rank {self.rank}: no consistent checkpoint "
                f"after {RESTORE_ROUNDS} recovery plans; see the log"
            )
        finally:
            for node, other in clients.items():
                if other is not None and node != self.node:
                    other.close()

    def _persistent_configured(self) -> bool:
        """Whether a persistent tier may hold checkpoints; without one, its modules (DCP,
        fsspec: over a second to import) stay unimported."""
        if self.persistent is not None or self.scenario.cluster.storage.url:
            return True
        return tiers.persistent_exists(self.persistent_url)

    def _fetch(
        self,
        plan: RecoveryPlan,
        client: Any,
        template: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None,
        live: _Live,
    ) -> tuple[Any, int | None, Any, bool] | None:
        """This rank's shard of the plan's iteration: (tier, source node, state, whether the
        copy read was committed), or None when no source served it."""
        assert plan.iteration is not None
        iteration, rank = plan.iteration, self.rank
        source = plan.source_for_rank(rank, self.per_node)
        if source.tier == "persistent":
            try:
                return (
                    "persistent",
                    None,
                    restoring.load_persistent_state(
                        self.persistent_url,
                        iteration,
                        self._template(template if template is not None else live.get()),
                    ),
                    True,
                )
            except (ImportError, OSError, ValueError, RuntimeError) as error:
                log.error(
                    "node %d rank %d: iteration %d: persistent tier %s failed: %s",
                    self.node,
                    rank,
                    iteration,
                    self.persistent_url,
                    error,
                )
                return None
        # The planned holder first, then every other holder of this rank's shard.
        holders = [
            source.from_node,
            *[h for h in self.placement.holders[self.node] if h != source.from_node],
        ]
        for holder in holders:
            assert holder is not None
            try:
                if holder == self.node:
                    self.capturer.remap()
                    held = held_slot(self.capturer.slots, iteration)
                    return (
                        "local",
                        holder,
                        restoring.read_local(
                            self.capturer.slots,
                            rank,
                            iteration,
                            into=live.get(),
                            verify_data=self.verify_local,
                            costs=self.capturer.costs,
                        ),
                        held is not None and held.state().committed,
                    )
                peer = client(holder)
                if peer is None:
                    raise ConnectionError("store unreachable")
                state = live.get()
                try:
                    read = restoring.read_peer(
                        peer, rank, iteration, into=state, costs=self.capturer.costs
                    )
                    return "peer", holder, read, bool(peer.served_committed)
                except PlacedDataError:
                    self._clobbered = state is not None  # streamed into the live state
                    raise
            except (VerificationError, NodeStoreError, OSError) as error:
                tier = "local memory" if holder == self.node else f"node {holder}'s memory"
                log.warning(
                    "node %d rank %d: iteration %d from %s unusable: %s; trying the next tier",
                    self.node,
                    rank,
                    iteration,
                    tier,
                    error,
                )
                self._invalidate(holder, iteration, str(error), client)
        return None

    def _forget_newer(self, iteration: int) -> None:
        """Invalidate this rank's local checkpoints newer than the restored iteration (committed
        or complete): they belong to a timeline the job abandoned."""
        for slot in self.capturer.slots:
            held = None if slot is None else slot.state().held
            if held is not None and held > iteration:
                self.client.invalidate(self.rank, held, "newer than the restore")

    def _template(
        self, given: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None
    ) -> Mapping[str, Any] | None:
        """The state's shape, asked for only when needed: ``Trainer.state()`` before the first
        step initialises the optimizer's state (DCP's state-dict helpers do), which would change
        the training that follows. None when nobody gave one: the persistent tier then reads
        every tensor whole, as stored (``real.persistent.dcp.load_persistent``)."""
        if given is not None:
            return given() if callable(given) else given
        return None if self.template is None else self.template()

    def _invalidate(self, holder: int, iteration: int, reason: str, client: Any) -> None:
        if "no committed" in reason:  # nothing there to invalidate
            return
        try:
            peer = self.client if holder == self.node else client(holder)
            if peer is not None:
                peer.invalidate(self.rank, iteration, reason)
        except (OSError, NodeStoreError):
            pass

    def close(self, abandon: bool = False) -> None:
        """Finish the last checkpoint (bounded wait) and release every resource.

        Args:
            abandon: a failure stopped the job: drop replication and persistence in flight
                instead of finishing them (the peers may be gone).
        """
        failed = abandon
        try:
            if abandon:
                self._abandon_replication()
            else:
                # Finishing the last checkpoint waits for its replicas: an abort by the agent
                # (a peer gone meanwhile) ends the wait, as in save().
                self.replication.close(check=check_abort)
        except BaseException:
            failed = True
            self._abandon_replication()  # the peers may be gone: drop what is in flight
            raise
        finally:
            try:
                if self.persistent is not None:
                    self.persistent.close(abandon=failed)
            finally:
                self.capturer.close()
                self.client.close()
                if self._own_events:
                    self.events.close()

    def _abandon_replication(self) -> None:
        """Drop the replication in flight (it waits for the sender thread), the persistent
        tier's read-back on that thread first (it stops between two tensors)."""
        if self.persistent is not None:
            self.persistent.cancel()
        self.replication.abandon()


class _Live:
    """The live state to restore into, asked for at most once, and only when needed."""

    def __init__(self, into: LiveState | None, costs: Any) -> None:
        self._into = into
        self._costs = costs
        self._state: Mapping[str, Any] | None = None

    def get(self) -> Mapping[str, Any] | None:
        if self._state is None and self._into is not None:
            if callable(self._into):  # e.g. a trainer's state dict: DCP's helpers, at a cost
                with self._costs.timed("restore: the live state asked for"):
                    self._state = self._into()
            else:
                self._state = self._into
        return self._state


def _gloo_group() -> Any:
    """A gloo group of all ranks (collective: every rank constructs its checkpointer at the same
    point): the default group under gloo, else a new one; None outside a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    from real.runtime.procgroup import new_gloo_group

    return new_gloo_group()


def _background_group(name: str) -> Any:
    """A gloo group of all ranks for a background thread, connected in the background (see
    ``BackgroundGlooGroup``), or None outside a process group of more than one rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    from real.runtime.procgroup import BackgroundGlooGroup

    return BackgroundGlooGroup(name)


def _plan_from_env() -> RecoveryPlan | None:
    text = os.environ.get(PLAN_ENV, "").strip()
    if not text:
        return None
    if not text.startswith("{"):
        text = Path(text).read_text()
    return restoring.plan_from_json(json.loads(text))
