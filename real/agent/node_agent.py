"""The node agent: one per node, for the node's lifetime (``gemini-ckpt agent``).

It owns the node's checkpoint memory (a :class:`~real.engine.StoreProcess` serving the slot
files in ``/dev/shm``), keeps the node's heartbeat lease in the coordination store, campaigns
in the root election (the winner also runs :class:`~real.agent.root.RootAgent` in a thread),
and follows the root's **attempt record** (``job/attempt``, :mod:`real.agent.jobkeys`):

- ``running`` and this node a member: assign the attempt to this node's trainers, already
  running and warm (:mod:`real.agent.trainer_processes`), with the attempt's rendezvous, store
  addresses
  and restore plan;
- ``stopped`` (or a newer attempt): abort the older attempt: the trainers leave it and wait,
  in process, for the next one; those that died or are stuck are replaced by warm spares. Then
  acknowledge (``acks/<attempt>/<node_id>``);
- ``finished``: stop and exit; also when this node is no longer a member (the root declared
  it lost and a replacement took its slot: a fenced node leaves on its own).

A trainer that exits with a failure is reported at once (``exits/<node>/<rank>``, read by the
root's detector within its polling period); one whose collective broke (a peer is gone) is
reported as a suspect (``suspects/<node>/<rank>``), on which the root probes every node's agent
(:mod:`real.coord.probe`; this agent answers on the ``probe`` address it registers); one that
finishes writes ``done/<attempt>/<rank>``.

**Persistence.** The background persistence to the persistent tier every K iterations is the
trainer-side checkpointer's (``real.persistent.persister.BackgroundPersister`` needs the trainers'
process group for DCP's collective save); the agent does not copy slots to storage itself.
That keeps one writer per checkpoint and a layout plain DCP loads.

The agent exits (cleaning up its store's slot files and its trainers) on SIGTERM or SIGINT, and
when the process that started it (``--parent-pid``) is gone, so nothing outlives a launcher.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from real.agent import jobkeys

# At start, not on winning: see _launch_root.
from real.agent.root import (
    RootAgent,
    persistent_url,
    preimport_persistent_tier,
    summarize_ended_job,
)
from real.agent.trainer_processes import TrainerPool, TrainerSpec, trainer_env
from real.coord import keys
from real.coord.connect import connect_kv, import_kv_client
from real.coord.election import Election
from real.coord.heartbeat import Heartbeat
from real.coord.kv import KeyValueStore
from real.coord.probe import ProbeServer, refuses
from real.engine.eventlog import EventLog
from real.engine.process import StoreProcess
from real.runtime.env import GEMINI_RUN_DIR, GEMINI_RUN_T0, GEMINI_TOKEN
from real.runtime.processes import pid_alive, resident_bytes
from shared.errors import AgentIdentityError, KVError, TrainerStartError
from shared.failure_kinds import initial_root
from shared.scenario import Scenario

log = logging.getLogger(__name__)
POLL_S = 0.05
"""The longest an agent goes without reading the attempt record and looking at its trainers,
s. It acts at once on a change: a watch on the store wakes it when the record is written, and
its trainers' messages and exits wake it too (on both stores: etcd's own watch since
2026-12-05); the period bounds what no notification covers."""
STANDBY_POLL_S = 0.1
WARM_TIMEOUT_S = 300.0
WATCH_S = 1.0
PARENT_POLL_S = 0.5
"""How often an agent started with ``--parent-pid`` looks whether its launcher still runs, s."""
ROOT_JOIN_S = 120.0
"""How long an agent that stops waits for its root thread: a root that ended the job merges
every node's events into the run's summary first (RootAgent._summarize)."""
ROOT_FAILURES = 5
"""A root that fails this many times in a row (each within ``ROOT_FAILURE_WINDOW_S`` of its
start) fails the job instead of starting again."""
ROOT_FAILURE_WINDOW_S = 60.0
ROOT_RESTART_WAIT_S = 0.5
MEMBERS_GONE_LEASES = 3
"""A standby agent leaves once no member of the job has held a heartbeat for this many
leases (by its own clock, over its reads of the store): the job has nobody left to lead it."""
RECORD_READ_S = 1.0
"""While its store watch runs, an agent reads the attempt record (a standby agent also its
order) when the watch reports a change, and at least this often besides; without a watch, on
every pass (every ``POLL_S``, a standby's every ``STANDBY_POLL_S``). Each read is a request to
the store: on etcd, 4 agents reading every pass made some 80 a second."""


@dataclass(frozen=True)
class AgentConfig:
    """One node agent's settings.

    Attributes:
        kv_url: the coordination store (``tcpstore://`` or ``etcd://``).
        node_id: this machine's id (fresh for a replacement).
        slot: the place in the job this node takes (node rank); None: a standby agent, which
            waits warm (store, trainers, heartbeat) until the root gives it a lost node's slot.
        scenario: the parsed scenario (overrides applied).
        spec: what the trainers run.
        token: the job's secret.
        job: the job's id (slot file prefix).
        host: this node's address (store, rendezvous).
        t0: the run's start (wall seconds), for event times.
        parent_pid: exit when this process is gone (None: never).
        summarize: when this agent's root ends the job, write the run folder's
            ``summary.json`` (False under ``gemini-ckpt real``, whose launcher does).
        resume: when this agent's root starts the job, resume from the persistent tier's
            newest checkpoint (False under ``gemini-ckpt real`` unless ``--resume``).
    """

    kv_url: str
    node_id: int
    slot: int | None
    scenario: Scenario
    spec: TrainerSpec
    token: str
    job: str
    host: str = "127.0.0.1"
    t0: float = 0.0
    parent_pid: int | None = None
    summarize: bool = True
    resume: bool = True


class NodeAgent:
    """The agent of one node; ``run()`` returns when the job finishes or the agent is told to
    stop (``stop()``, SIGTERM)."""

    store: StoreProcess | None = None
    """The node store it owns, once ``run`` made it."""
    claim: Any = None
    """The lease of its node id's claim (``_claim_identity``)."""
    store_died = False
    """Its node store died: it leaves with status 1 (``_store_died``)."""
    memory_reported = False
    """Its ``node_memory`` event is written (``_report_memory``)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.run_dir = config.spec.run_dir
        self.slot = config.slot
        self.events = EventLog(
            self.run_dir / "events" / f"agent-{config.node_id}.jsonl",
            config.t0,
            node=config.slot,
        )
        self.pool: TrainerPool | None = None
        self.running: int | None = None  # the attempt this node's trainers are in
        self.suspected: set[tuple[int, int]] = set()  # (attempt, rank) reported
        self.root_checked: set[int] = set()  # attempts whose broken collective made us probe
        self.assignments: list[dict[str, Any]] = []  # who ran each rank in each attempt
        self.acked: set[int] = set()
        self.started: set[int] = set()
        self.was_member = False
        self.root_thread: threading.Thread | None = None
        self.election: Election | None = None
        self.heartbeat: Heartbeat | None = None
        self.job_failed = False  # the root gave the job up: the agent exits non-zero
        self._root_lock = threading.Lock()
        self.root_stop = threading.Event()
        self.kv: KeyValueStore | None = None
        self.wake = threading.Event()  # something changed: the record, a trainer
        self.record_changed = threading.Event()  # the watch saw a change: read the record
        self.record_changed.set()
        self.watching = False  # the store watch holds a cursor (else: read on every pass)
        self.rendezvous: Any = None  # the job's rendezvous store, kept by every agent
        self.orphaned = False  # its launcher (--parent-pid) is gone: the agent leaves, status 1
        self.members_gone = False  # a standby saw no member beat for MEMBERS_GONE_LEASES leases

    def _watch(self, prefixes: list[str]) -> None:
        """Wake the agent whenever a key under ``prefixes`` changes (a thread of its own,
        with a store client of its own, until the agent stops)."""
        try:
            kv = connect_kv(self.config.kv_url)
        except KVError as error:
            log.warning("node %d: no store watch (%s); polling", self.config.node_id, error)
            return
        try:
            cursor: int | None = None
            failing = False  # said once, until the watch works again (it retries every POLL_S)
            while not self.stopping.is_set():
                try:
                    fresh = cursor is None
                    cursor, changed = kv.watch(prefixes, cursor, WATCH_S)
                except KVError as error:
                    say = log.debug if failing else log.warning
                    say("node %d: store watch: %s; retrying", self.config.node_id, error)
                    failing = True
                    self.watching = False
                    cursor = None
                    self.stopping.wait(POLL_S)
                    continue
                if failing:
                    log.info("node %d: store watch works again", self.config.node_id)
                    failing = False
                if fresh:  # a change before this cursor may be unread: read once more
                    self.watching = True
                if changed or fresh:
                    self.record_changed.set()
                    self.wake.set()
        finally:
            self.watching = False
            kv.close()

    def stop(self) -> None:
        self.stopping.set()
        # The root first: a Ctrl-C reaches every agent of a job at once, and the others'
        # trainers exit while this agent stops its own; a root still running then took their
        # exits for failures ("unscheduled hardware failure") and ordered replacements.
        self.root_stop.set()
        self.wake.set()

    def _follow_parent(self, pid: int) -> None:
        """Stop the agent once process ``pid`` (its launcher) is gone, whatever it is doing:
        also while its node starts (store, warm trainers), which takes seconds."""
        while not self.stopping.wait(PARENT_POLL_S):
            if not pid_alive(pid):
                log.warning("node %d: launcher gone; stopping", self.config.node_id)
                self.orphaned = True
                self.stop()
                return

    # -- lifetime ---------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        # A new run folder has none yet; the node store writes its log there at once.
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        # The store's client first, in this thread: the background imports below must not
        # race this thread's own (``import_kv_client``).
        import_kv_client(config.kv_url)
        # Any agent may become the root (at the start or when a root dies): the persistent
        # tier's modules and filesystem load now, in the background, not on a recovery's path.
        preimport_persistent_tier(persistent_url(config.scenario, self.run_dir))
        # torch (the rendezvous store's) imports meanwhile, seconds on a busy host: an agent
        # stopped while it imports leaves without waiting for it.
        torch_imported = _import_in_background("torch.distributed")
        store = self.store = StoreProcess(
            config.node_id if config.slot is None else config.slot,
            config.token,
            config.host,
            prefix=f"{config.job}-{config.node_id}",
            log_path=self.run_dir / "logs" / f"store-{config.node_id}.log",
        )
        heartbeat: Heartbeat | None = None
        election: Election | None = None
        prober: ProbeServer | None = None
        if config.parent_pid is not None:
            threading.Thread(
                target=self._follow_parent,
                args=(config.parent_pid,),
                name="parent-watch",
                daemon=True,
            ).start()
        try:
            self.kv = connect_kv(config.kv_url)
            self._require_free_identity()
            self._claim_identity()
            self._require_the_jobs_scenario()
            threading.Thread(
                target=self._watch,
                args=([jobkeys.ATTEMPT_KEY, jobkeys.REPLACEMENTS_PREFIX],),
                name="store-watch",
                daemon=True,
            ).start()
            # Stopped while the node comes up (a Ctrl-C during the cluster's start): no store
            # and no trainers started only to be stopped, seconds of CPU on a busy host.
            if self.stopping.is_set():
                return self._stopped_status()
            address = store.start()
            while not (self.stopping.is_set() or torch_imported.wait(0.05)):
                pass
            if self.stopping.is_set():
                return self._stopped_status()
            self.rendezvous = _rendezvous_store(config.host)
            # Warm trainers start now, while the rest of the node and the job come up.
            self.pool = TrainerPool(
                config.spec,
                config.node_id,
                {
                    GEMINI_TOKEN: config.token,
                    GEMINI_RUN_DIR: str(self.run_dir),
                    GEMINI_RUN_T0: repr(config.t0),
                },
                spares="now" if config.slot is not None else "background",
                on_change=self.wake.set,
            )
            prober = ProbeServer(config.node_id, config.host)
            self._write_pids(store)
            # Join (or offer this node to) the job only once its trainers are warm: an attempt
            # assigned to processes still importing torch would wait for them, and a failure
            # meanwhile would find nothing ready to take over.
            # (a standby node's spares warm in the background: it offers itself without them)
            if not self.pool.wait_ready(
                WARM_TIMEOUT_S, self.stopping, spares=config.slot is not None
            ):
                if self.stopping.is_set():  # while they warmed: they stop on the way out
                    return self._stopped_status()
                failure = self.pool.start_failure()
                if failure is not None:  # the script's, not ours: said as a user error, whole
                    raise TrainerStartError(f"node {config.node_id}: {failure}")
                raise TrainerStartError(
                    f"node {config.node_id}: trainers not warm after {WARM_TIMEOUT_S:.0f} s; "
                    f"see {self.run_dir}/logs/trainer-node{config.node_id}-*.log"
                )
            self._write_pids(store)
            registration = {
                "node_id": config.node_id,
                "address": address,
                "probe": prober.address,
                "host": config.host,
                "pid": os.getpid(),
                "rendezvous": f"{config.host}:{self.rendezvous.port}",
            }
            detection = config.scenario.detection
            heartbeat = Heartbeat(
                self.kv, config.node_id, detection.heartbeat_interval_s, detection.lease_timeout_s
            ).start()
            if self.slot is None and not self._wait_for_slot(registration):
                return 1 if self.store_died or self.members_gone else 0
            assert self.slot is not None
            self.pool.take_slot(self.slot)
            self.events.node = self.slot
            jobkeys.put_json(
                self.kv,
                f"{jobkeys.STORES_PREFIX}{config.node_id}",
                {**registration, "slot": self.slot},
            )
            election = Election(
                connect_kv(config.kv_url),
                config.node_id,
                ttl_s=detection.lease_timeout_s,
                poll_s=min(0.25, detection.lease_timeout_s / 4),
                events=self.events,
                on_change=self._leadership,
                # the job's first root is slot 0's agent, as in the simulator: the others
                # hold back their first campaign until it leads (or a lease's time passed)
                hold_s=0.0
                if self.slot == initial_root(config.scenario.cluster.nodes)
                else detection.lease_timeout_s,
            )
            self.election = election
            self.heartbeat = heartbeat
            election.campaign(0)
            log.info("node %d (slot %d): agent up, store %s", config.node_id, self.slot, address)
            return self._follow()
        finally:
            self._stop_trainers()
            if prober is not None:
                prober.close()
            self.root_stop.set()
            if election is not None:
                election.resign()
            if self.root_thread is not None:
                # A root that ended the job writes its summary first (RootAgent._summarize).
                self.root_thread.join(ROOT_JOIN_S)
                if self.root_thread.is_alive():
                    log.warning(
                        "node %d: the root did not end within %.0f s (writing the run's "
                        "summary?); leaving without it",
                        config.node_id,
                        ROOT_JOIN_S,
                    )
            if heartbeat is not None:
                heartbeat.stop()
            if self.claim is not None:
                with contextlib.suppress(KVError):
                    self.claim.revoke()
            store.stop()
            self.rendezvous = None  # its server ends with it
            if self.kv is not None:
                self.kv.close()
            self.events.close()

    def _require_free_identity(self) -> None:
        """Refuse to start with the node id of a live agent of the job (its heartbeat lease is
        held), or, for a slot's agent, with the slot of a live member: either would run a
        second copy beside it (shared pids, event files and slot files; two trainers of one
        rank). A node the root ordered for the slot takes it at once: a probe finds a lost node
        before its lease lapses. Raises ``AgentIdentityError``; an agent restarted after its
        predecessor died waits for that one's lease to lapse (``detection.lease_timeout_s``)."""
        assert self.kv is not None
        config = self.config
        lease = config.scenario.detection.lease_timeout_s
        if self.kv.get(keys.node_key(config.node_id)) is not None:
            raise AgentIdentityError(
                f"node id {config.node_id} is taken by a live agent of this job (its heartbeat "
                f"lease is held): give this agent another --node-id, or wait {lease:g} s after "
                "that agent stopped"
            )
        if config.slot is None:
            return
        if self._ordered_for_slot():
            return  # the root ordered this node for the slot: its lost member may still beat
        for node_id, registration in jobkeys.read_prefix(self.kv, jobkeys.STORES_PREFIX).items():
            live = self.kv.get(keys.node_key(int(node_id))) is not None
            if live and int(registration.get("slot", -1)) == config.slot:
                raise AgentIdentityError(
                    f"slot {config.slot} is held by node {node_id}, a live agent of this job: "
                    "give each slot one agent (--slot), and start spares with --standby"
                )

    def _claim_identity(self) -> None:
        """Claim this node id in the store at once (``agents/<id>``, created only if absent,
        bound to a lease this agent keeps until it exits). The heartbeat that
        ``_require_free_identity`` looks for begins only once the node's trainers are warm,
        seconds later: two agents given one node id and started together (as a scheduler
        starts them) both passed that check and ran side by side. Raises
        ``AgentIdentityError`` for the second."""
        config = self.config
        ttl = config.scenario.detection.lease_timeout_s
        mine = keys.encode({"node": config.node_id, "pid": os.getpid(), "host": config.host})
        claim = self._try_claim(mine)
        if claim is None and self.kv is not None and self.kv.get(self._claim_keys()[0]) is None:
            raise AgentIdentityError(
                f"slot {config.slot} is claimed by another agent of this job, starting or "
                "running: give each slot one agent (--slot), and start spares with --standby; "
                f"or wait {ttl:g} s after that agent stopped"
            )
        if claim is None:
            raise AgentIdentityError(
                f"node id {config.node_id} is claimed by another agent of this job, starting "
                f"or running: give this agent another --node-id, or wait {ttl:g} s after that "
                "agent stopped"
            )
        self.claim = claim
        period = config.scenario.detection.heartbeat_interval_s
        threading.Thread(
            target=self._keep_claim, args=(mine, period), name="claim", daemon=True
        ).start()

    def _claim_keys(self) -> list[str]:
        """The keys an agent claims as it starts: its node id (``agents/<id>``) and, for an
        agent started for a slot (``--slot``) the root did not order it to, that slot
        (``slots/<slot>``): two agents given different ids and one slot, started together,
        both passed ``_require_free_identity``, which sees a slot's holder only once it has
        registered. A node the root ordered takes its slot while the lost member's claim may
        still be held."""
        config = self.config
        claimed = [f"{jobkeys.AGENTS_PREFIX}{config.node_id}"]
        if getattr(config, "slot", None) is not None and not self._ordered_for_slot():
            claimed.append(f"{jobkeys.SLOTS_PREFIX}{config.slot}")
        return claimed

    def _ordered_for_slot(self) -> bool:
        """Whether the root ordered this node for the slot it was started for (``--slot``)."""
        assert self.kv is not None
        config = self.config
        order = jobkeys.read_json(self.kv, f"{jobkeys.REPLACEMENTS_PREFIX}{config.node_id}")
        return order is not None and int(order.get("slot", -1)) == config.slot

    def _try_claim(self, value: bytes) -> Any:
        """The lease of a new claim of ``_claim_keys`` (each created only if absent, all on
        one lease), or None when another agent holds one of them."""
        assert self.kv is not None
        claim = self.kv.grant_lease(self.config.scenario.detection.lease_timeout_s)
        try:
            for key in self._claim_keys():
                if not self.kv.create(key, value, claim):
                    claim.revoke()  # and with it the keys this call created
                    return None
        except KVError:
            with contextlib.suppress(KVError):
                claim.revoke()
            raise
        return claim

    def _keep_claim(self, value: bytes, period_s: float) -> None:
        """Keep the node id's claim alive until the agent stops (then ``run`` revokes it).
        A claim that lapsed (a pause longer than its lease, a store outage) is made again;
        if another agent took the id meanwhile, this one stops: it is now the second copy."""
        config = self.config
        while not self.stopping.wait(period_s):
            try:
                if self.claim.refresh():
                    continue
                claim = self._try_claim(value)
                if claim is not None:
                    self.claim = claim
                    continue
                log.error(
                    "node %d: another agent took this node id or slot while this one was paused; "
                    "leaving",
                    config.node_id,
                )
                self.stop()
                return
            except KVError as error:
                log.debug("node %d: claim refresh: %s", config.node_id, error)

    def _require_the_jobs_scenario(self) -> None:
        """Refuse to join a job whose first agent was started with another scenario (another
        file, or other ``--set`` overrides): its ranks would train other iterations, time out
        other collectives, and wait for each other at the end. Raises ``AgentIdentityError``."""
        assert self.kv is not None
        digest = jobkeys.scenario_digest(self.config.scenario)
        if self.kv.create(jobkeys.SCENARIO_KEY, digest.encode()):
            return
        held = self.kv.get(jobkeys.SCENARIO_KEY)
        if held is not None and held.decode() != digest:
            raise AgentIdentityError(
                f"node {self.config.node_id}: this agent's scenario "
                f"({self.config.scenario.name}, digest {digest}) is not the job's (digest "
                f"{held.decode()}): start every agent of a job with the same scenario file and "
                "the same --set overrides"
            )

    def _record_due(self, since_read_s: float) -> bool:
        """Whether to read the attempt record (a standby also its order) now: the store watch
        reported a change, no watch runs, or ``RECORD_READ_S`` passed since the last read. It
        takes the change: one reported from here on is a new one."""
        if self.record_changed.is_set() or not self.watching or since_read_s >= RECORD_READ_S:
            self.record_changed.clear()
            return True
        return False

    def _a_member_beats(self, record: dict[str, Any]) -> bool:
        """Whether a member of ``record``'s attempt holds a live heartbeat key."""
        assert self.kv is not None
        beating = {keys.node_of(key) for key in self.kv.get_prefix(keys.NODES_PREFIX)}
        return bool(beating & set(jobkeys.members_of(record).values()))

    def _wait_for_slot(self, registration: dict[str, Any]) -> bool:
        """A standby agent: announce itself, then wait until the root's order for this node
        comes due (``replacements/<node_id>``) and take its slot; False if told to stop."""
        assert self.kv is not None
        node_id = self.config.node_id
        jobkeys.put_json(self.kv, f"{jobkeys.STANDBY_PREFIX}{node_id}", registration)
        log.info("node %d: standby, waiting for a slot", node_id)
        order: dict[str, Any] | None = None
        record: dict[str, Any] | None = None
        read_at = -math.inf
        silent_since: float | None = None  # the first read since which no member has beaten
        while not self.stopping.is_set():
            if self.config.parent_pid is not None and not pid_alive(self.config.parent_pid):
                return False
            if self._store_died():  # a standby without a store would take a slot to leave it
                self.stop()
                return False
            # Its order and the attempt record are read when the store watch reports a change
            # (it watches both) and at least every RECORD_READ_S; without a watch, on every
            # pass. A standby pool polling every pass cost the store 20 requests a second each.
            now = time.monotonic()
            if self._record_due(now - read_at):
                try:
                    order = jobkeys.read_json(self.kv, f"{jobkeys.REPLACEMENTS_PREFIX}{node_id}")
                    record = jobkeys.read_json(self.kv, jobkeys.ATTEMPT_KEY)
                    if record is None or self._a_member_beats(record):
                        silent_since = None
                    elif silent_since is None:
                        silent_since = now
                    read_at = now
                except KVError as error:
                    log.warning("node %d: store error: %s", node_id, error)
                    order = record = None
                    self.record_changed.set()  # not read: again at the next pass
            if record is not None and record.get("state") in ("finished", "failed"):
                return False  # the job ended without needing this node
            lease_s = self.config.scenario.detection.lease_timeout_s
            silent_s = 0.0 if silent_since is None else read_at - silent_since
            if order is None and silent_s > MEMBERS_GONE_LEASES * lease_s:
                # Every member agent is gone (each fenced itself, or was lost with no root
                # left to order its replacement): nobody will ever give this node a slot, and
                # a standby agent does not lead. Leaving ends the job's processes here, and
                # its launcher (or scheduler) sees the job end instead of waiting forever.
                log.error(
                    "node %d: no member of the job has beaten for %.0f s: every member agent "
                    "is gone, and standby agents do not lead; leaving (the job cannot go on)",
                    node_id,
                    silent_s,
                )
                self.members_gone = True
                return False
            if order is not None and time.time() >= float(order["ready_at"]):
                self.slot = int(order["slot"])
                self.kv.delete(f"{jobkeys.STANDBY_PREFIX}{node_id}")
                log.info("node %d: standby takes slot %d", node_id, self.slot)
                return True
            wait_s = STANDBY_POLL_S
            if order is not None:  # the order comes due at ready_at: be there then
                wait_s = min(wait_s, max(0.0, float(order["ready_at"]) - time.time()))
            self.wake.wait(wait_s)
            self.wake.clear()
        return False

    def _leadership(self, leading: bool) -> None:
        if not leading:
            self.root_stop.set()
            return
        previous = self.root_thread
        if previous is not None and previous.is_alive():
            # Leadership lost and won back (a lease starved on a loaded machine) while the
            # previous root is still winding down: start the new root once it has ended, from
            # another thread so the election keeps refreshing its lease meanwhile.
            threading.Thread(
                target=self._start_root_after,
                args=(previous,),
                name="root-handover",
                daemon=True,
            ).start()
            return
        self._start_root()

    def _start_root_after(self, previous: threading.Thread) -> None:
        previous.join()
        if self.election is not None and self.election.is_leader() and not self.stopping.is_set():
            self._start_root()

    def _start_root(self) -> None:
        with self._root_lock:
            if self.root_thread is not None and self.root_thread.is_alive():
                return
            self._launch_root()

    def _launch_root(self) -> None:
        # Called from the election's thread, which must go on refreshing the new leader's
        # lease: the root is built in a thread of its own (its store connection, and once an
        # import of the training stack that took seconds on a loaded machine, let the lease
        # lapse and another agent take over, again and again). RootAgent's module is imported
        # with this one for the same reason.
        self.root_stop = threading.Event()
        stop = self.root_stop
        if self.stopping.is_set():  # stopped while elected: this root ends before it starts
            stop.set()
        self.root_thread = threading.Thread(
            target=self._run_root, args=(stop,), name="root", daemon=True
        )
        self.root_thread.start()

    def _run_root(self, stop: threading.Event) -> None:
        """Run the root while this node leads. A root that fails (a store request that timed
        out, say) starts again at once, adopting the job where it stands, as a new leader
        would: this node keeps the election's lease, so no other agent would take over, and
        the job would wait for nobody until ``real.timeout_s``. After ``ROOT_FAILURES`` failures
        in a row the job is marked failed with the last error."""
        failures = 0
        while not stop.is_set() and not self.stopping.is_set():
            began = time.monotonic()
            error = self._root_once(stop)
            if error is None:
                return
            failures = 1 if time.monotonic() - began > ROOT_FAILURE_WINDOW_S else failures + 1
            if stop.is_set() or self.stopping.is_set():
                return  # no longer the leader (the store's trouble may have cost it the lease)
            if failures >= ROOT_FAILURES and self._fail_job(
                f"the root agent failed {failures} times in a row; the last error: {error}"
            ):
                return
            log.warning(
                "node %d: root agent failed (%s); starting it again", self.config.node_id, error
            )
            stop.wait(ROOT_RESTART_WAIT_S)

    def _root_once(self, stop: threading.Event) -> Exception | None:
        """One root, from its start to its end; the error that ended it early, else None."""
        try:
            kv = connect_kv(self.config.kv_url)
        except KVError as error:
            log.error("node %d: root cannot reach the store: %s", self.config.node_id, error)
            return error
        try:
            root = RootAgent(
                kv,
                self.config.node_id,
                self.slot if self.slot is not None else -1,
                self.config.scenario,
                self.run_dir,
                self.events,
                stop,
                self.config.token,
                self.config.spec.checkpointer if self.config.summarize else None,
                self.config.resume,
            )
        except Exception as error:
            log.exception("node %d: root agent failed to start", self.config.node_id)
            kv.close()
            return error
        return root.run_safely()  # closes kv

    def _fail_job(self, reason: str) -> bool:
        """Mark the job failed (every agent then stops and exits 1) and, unless the launcher
        summarizes (``summarize``), write the run's summary as a root that ends the job does;
        False when the store could not be told."""
        try:
            kv = connect_kv(self.config.kv_url)
        except KVError:
            return False
        try:
            raw = kv.get(jobkeys.ATTEMPT_KEY)
            record = jobkeys.parse_json(raw)
            if record is None or record.get("state") in ("finished", "failed"):
                return True
            failed = keys.encode(jobkeys.failed_record(record, reason))
            if not kv.replace(jobkeys.ATTEMPT_KEY, raw, failed):  # a root wrote it meanwhile
                log.warning(
                    "node %d: the attempt record changed; not failing the job", self.config.node_id
                )
                return False
            log.error("node %d: root: %s", self.config.node_id, reason)
            self.events.emit(
                "run_finished",
                attempt=record["attempt"],
                node=self.slot,
                failed=True,
                reason=reason,
            )
            if self.config.summarize:  # as the root that ends a job does
                summarize_ended_job(
                    kv,
                    self.run_dir,
                    self.config.scenario,
                    self.config.spec.checkpointer,
                    self.config.node_id,
                )
        except KVError:
            return False
        finally:
            kv.close()
        return True

    def _follow(self) -> int:
        assert self.kv is not None
        record: dict[str, Any] | None = None
        read_at = -math.inf
        while not self.stopping.is_set():
            if self._store_died():
                return 1
            if self.heartbeat is not None and self.heartbeat.lease_lost and self.was_member:
                # Fenced: the root may already have given this slot to a replacement.
                log.error(
                    "node %d: heartbeat lease lost; fencing: stopping trainers and leaving",
                    self.config.node_id,
                )
                self._stop_trainers()
                return 1
            try:
                now = time.monotonic()
                if self._record_due(now - read_at):
                    record, read_at = jobkeys.read_json(self.kv, jobkeys.ATTEMPT_KEY), now
                if record is not None and not self._apply(record):
                    return 1 if self.job_failed else 0
                self._watch_trainers(record)
            except KVError as error:
                log.warning("node %d: store error: %s", self.config.node_id, error)
                self.record_changed.set()  # not read: again at the next pass
            self.wake.wait(POLL_S)
            self.wake.clear()  # what woke it is read by the next pass
        return self._stopped_status()

    def _store_died(self) -> bool:
        """Whether the node store this agent owns has died (killed, or crashed): the node's
        checkpoint memory went with it, and no checkpoint of this node's ranks could commit
        again (no store to hold their replicas). The agent then stops its trainers and
        leaves, so that the root finds the node lost and replaces it, as after a hardware
        failure, rather than train on without protection unnoticed."""
        process = self.store.process if self.store is not None else None
        code = process.poll() if process is not None else None
        if code is None:
            return False
        self.store_died = True
        log.error(
            "node %d: its node store died (exit status %s), and the node's checkpoint memory "
            "with it; stopping the trainers and leaving, so that the root replaces this node",
            self.config.node_id,
            code,
        )
        self._stop_trainers()
        return True

    def _stopped_status(self) -> int:
        """The exit status of an agent told to stop: 1 when its launcher is gone, else 0."""
        return 1 if self.orphaned else 0

    # -- following the root -----------------------------------------------------------------

    def _apply(self, record: dict[str, Any]) -> bool:
        """Act on the attempt record; False when the agent should exit."""
        assert self.kv is not None and self.pool is not None
        attempt, state = int(record["attempt"]), record["state"]
        members = jobkeys.members_of(record)
        member = self.slot is not None and members.get(self.slot) == self.config.node_id
        if member:
            self.was_member = True
        if state == "finished":
            self._stop_trainers()
            return False
        if state == "failed":
            self._stop_trainers()
            self.job_failed = True
            return False
        if self.was_member and not member and self.config.node_id not in members.values():
            log.warning("node %d: no longer a member (replaced); leaving", self.config.node_id)
            return False
        running = self.running
        if running is not None and (running != attempt or state != "running"):
            self.running = None
            aborting = time.monotonic()
            lost = self.pool.abort(running)
            log.info(
                "node %d: attempt %d left by every trainer in %.3f s",
                self.config.node_id,
                running,
                time.monotonic() - aborting,
            )
            if lost:
                log.warning("node %d: trainers %s replaced by spares", self.config.node_id, lost)
            self._write_pids(None)
        if state == "stopped" or (state == "running" and not member):
            if attempt not in self.acked:
                jobkeys.put_json(
                    self.kv,
                    f"{jobkeys.ACKS_PREFIX}{attempt}/{self.config.node_id}",
                    {"time": time.time()},
                )
                self.acked.add(attempt)
        elif state == "running" and member and attempt not in self.started:
            self.started.add(attempt)  # one assignment per attempt
            fresh = self.pool.assign(attempt, trainer_env(record))
            log.info("node %d: attempt %d assigned", self.config.node_id, attempt)
            self.running = attempt
            self.assignments += [
                {
                    "attempt": attempt,
                    "rank": rank,
                    "pid": pid,
                    "started_s": started - self.config.t0,
                }
                for rank, (pid, started) in sorted(self.pool.started().items())
            ]
            spares = sorted(rank for rank, spare in fresh.items() if spare)
            if spares and attempt > 1:
                self.events.emit("spare_assigned", attempt=attempt, ranks=spares)
            self._write_pids(None)
        return True

    def _report_memory(self, pool: TrainerPool, attempt: int) -> None:
        """What this node's processes of ours hold in memory as its first trainer finishes
        (the job's end: its spares warm, its store holding the last checkpoints): the
        ``node_memory`` event, from which a run's summary gives what our machinery costs a
        node beside the checkpoint memory (``real.launcher.results``). Before the trainers'
        ``done``, which ends the job, so the root's summary reads it. A process gone
        meanwhile is left out."""
        self.memory_reported = True
        spares = [m for m in (resident_bytes(pid) for pid in pool.spare_pids()) if m is not None]
        details: dict[str, Any] = {"agent": resident_bytes(os.getpid()), "spares": spares}
        store_pid = self.store.pid if self.store is not None else None
        if store_pid is not None:
            details["store"] = resident_bytes(store_pid)
        self.events.emit("node_memory", attempt=attempt, **details)

    def _watch_trainers(self, record: dict[str, Any] | None) -> None:
        assert self.kv is not None
        pool, attempt = self.pool, self.running
        if pool is None or attempt is None:
            return
        started = pool.processes_started
        exited, finished = pool.poll()
        if pool.processes_started != started:  # spares started (killed with the node if lost)
            self._write_pids(None)
        if finished and not self.memory_reported:
            self._report_memory(pool, attempt)
        for rank in finished:
            jobkeys.put_json(
                self.kv, f"{jobkeys.DONE_PREFIX}{attempt}/{rank}", {"time": time.time()}
            )
        for rank, code in exited.items():
            # Reported at once, whatever the root is doing: it sorts causes from symptoms.
            value = {
                "node": self.config.node_id,
                "rank": rank,
                "exitcode": code,
                "time": time.time(),
                "attempt": attempt,
                "slot": self.slot,
            }
            self.kv.put(keys.exit_key(self.config.node_id, rank), keys.encode(value))
            log.warning(
                "node %d: trainer rank %d exited with %d (attempt %d)",
                self.config.node_id,
                rank,
                code,
                attempt,
            )
        for rank, error in pool.parked_after_failure().items():
            if (attempt, rank) in self.suspected:
                continue
            self.suspected.add((attempt, rank))
            suspect: dict[str, Any] = {
                "node": self.config.node_id,
                "rank": rank,
                "error": error,
                "time": time.time(),
                "attempt": attempt,
            }
            self.kv.put(keys.suspect_key(self.config.node_id, rank), keys.encode(suspect))
            self._check_root(attempt)

    def _check_root(self, attempt: int) -> None:
        """A trainer's collective broke: if the root's own agent is gone (its probe endpoint
        refuses connections), depose it now rather than after its election lease (the root
        is the one that would have probed it). In the background; once per attempt."""
        election = self.election
        if election is None or election.is_leader() or attempt in self.root_checked:
            return
        self.root_checked.add(attempt)
        timeout_s = self.config.scenario.detection.probe_timeout_s

        def check() -> None:
            try:  # the election's client: thread-safe, and the root's lease is its business
                leader = election.leader()
                if leader is None:
                    return
                stores = jobkeys.read_prefix(election.kv, jobkeys.STORES_PREFIX)
                address = stores.get(str(leader), {}).get("probe")
                if address and refuses(address, timeout_s):
                    election.depose(leader)
            except (KVError, NotImplementedError) as error:
                log.warning("node %d: checking the root failed: %s", self.config.node_id, error)

        threading.Thread(target=check, name="check-root", daemon=True).start()

    def _stop_trainers(self) -> None:
        pool, self.pool = self.pool, None
        self.running = None
        if pool is not None:
            pool.stop()
            self._write_pids(None)

    def _write_pids(self, store: StoreProcess | None) -> None:
        """``<run_dir>/pids/<node_id>.json``: what the launcher must kill to fail this node."""
        path = self.run_dir / "pids" / f"{self.config.node_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        current: dict[str, Any] = {}
        if path.exists():
            try:
                current = json.loads(path.read_text())
            except ValueError:
                current = {}
        current["agent"] = os.getpid()
        if store is not None:
            current["store"] = store.pid
        every = set(current.get("all_trainers", []))
        if self.pool is not None:
            active = self.pool.pids()
            current["trainers"] = {str(r): pid for r, pid in active.items()}
            current["spares"] = self.pool.spare_pids()
            current["attempt"] = self.running
            every |= set(active.values()) | set(current["spares"])
        else:
            current["trainers"] = {}
            current["spares"] = []
        current["all_trainers"] = sorted(every)
        current["assignments"] = self.assignments
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(current))
        temporary.replace(path)


def _import_in_background(name: str) -> threading.Event:
    """Import module ``name`` in a daemon thread; the event is set once the import has ended
    (an import that failed is left for the caller's own import to raise again)."""
    done = threading.Event()

    def work() -> None:
        try:
            with contextlib.suppress(Exception):  # the caller's own import says what failed
                importlib.import_module(name)
        finally:
            done.set()

    threading.Thread(target=work, name=f"import-{name}", daemon=True).start()
    return done


def _rendezvous_store(host: str) -> Any:
    """A torch ``TCPStore`` listening on ``host`` for the whole job: the trainers of every
    attempt form their process group through the store of slot 0's agent, each attempt under
    its own key prefix (:func:`real.trainer.inprocess.join_process_group`), so it is listening
    before
    any rank arrives."""
    import datetime

    import torch.distributed as dist

    return dist.TCPStore(  # type: ignore[attr-defined]
        host, 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=60)
    )


def run_agent(config: AgentConfig) -> int:
    """Run a node agent until the job ends; SIGTERM and SIGINT stop it cleanly. Its exit
    status: the agent's, or 130 when a Ctrl-C (SIGINT) stopped it (a SIGTERM, a service
    manager's stop, is a clean end: 0)."""
    agent = NodeAgent(config)
    interrupted = threading.Event()

    def stop(signum: int, frame: object) -> None:
        if signum == signal.SIGINT:
            interrupted.set()
        agent.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    code = agent.run()
    return 130 if interrupted.is_set() and code == 0 else code
