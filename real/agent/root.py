"""The root agent: failure detection, stop, replacement, recovery plan, restart.

Whichever node agent wins the election (:mod:`real.coord.election`) runs this in a thread. All
of the root's state lives in the coordination store (:mod:`real.agent.jobkeys`), so a root
elected after the previous one died **adopts** the job: it reads the attempt record, counts
every member without a heartbeat as lost, and finishes (or starts) the recovery.

One recovery, in the order of the event chain (``details["failure"]`` on every event):

1. **Detect.** The detector (:mod:`real.coord.detector`) reports lost nodes (a probe its
   survivors' broken collectives or its heartbeat's silence started, or lease expiry) and
   trainer exits (reported by the agents at once). A lost node or an exit of the node an
   injected failure names is that failure's ``failure_detected``; other exits are *symptoms*
   (the survivors of a killed peer fail their collectives) that start the stop without being
   failures of their own, unless nothing else explains them (then they are an unscheduled
   software failure).
2. **Stop.** The attempt record goes to ``stopped``; every live member stops its trainers and
   acknowledges. A member that dies meanwhile is noticed by its lease (a failure during
   recovery) and not waited for. ``training_stopped``.
3. **Replace.** Every lost slot gets a fresh node from the cloud operator (standby pool and
   delays from the scenario; the launcher or the cluster starts its agent) that takes the
   slot. ``replacement_requested``, then ``replacement_ready`` once its agent has registered and
   beats.
4. **Plan.** Every member's store reports what it holds (per owner rank, committed
   iterations); ``shared.recovery.plan_recovery`` picks one iteration for all and a source per
   node (local, peer, persistent, or from scratch), given the lost slots and the newest
   persistent checkpoint. A store that does not answer is a lost node: back to 3.
5. **Restart.** A new attempt record (``running``; fresh rendezvous port, the stores' addresses,
   the plan as ``GEMINI_RESTORE_PLAN``); ``restart_begin``. The trainers record
   ``process_group_ready``, ``state_restored`` (tier) and ``training_resumed``.

A failure that arrives during steps 2-4 joins the recovery in progress (its nodes are added and
its events are recorded under its own index); one that arrives after the restart starts a new
recovery. The job finishes when every rank of the current attempt reports done.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

from real.agent import jobkeys
from real.coord import keys
from real.coord.detector import Detection, FailureDetector
from real.coord.kv import KeyValueStore
from real.coord.operator import CloudOperator
from real.coord.probe import probe_all
from real.engine.client import StoreClient
from real.engine.eventlog import EventLog
from real.engine.tiers import complete_counts, latest_persistent
from real.runtime.processes import free_port
from shared.errors import KVError, MetadataVerificationError
from shared.failure_kinds import HARDWARE_KINDS
from shared.placement import plan_placement
from shared.recovery import RecoveryPlan, plan_recovery
from shared.scenario import ROOT_POLL_S, Scenario


def persistent_url(scenario: Scenario, run_dir: Path) -> str:
    """The persistent tier's URL: the scenario's storage, else the run folder's
    ``persistent/``. The trainers' rule (``real.trainer.main.storage_url``), not imported from
    there: that module pulls the training stack in, seconds of import on a loaded machine."""
    return scenario.cluster.storage.url or str(run_dir / "persistent")


def preimport_persistent_tier(url: str | None = None) -> threading.Thread:
    """Import the persistent tier's index reader (``real.persistent.storage``: fsspec, not DCP
    nor torch) in the background, now, not at the first recovery: ``latest_persistent``
    imports it lazily, and an import on a recovery's path delays that recovery's plan (DCP's,
    when this module still pulled it in, by 0.5-3 s). Called when an agent starts: any agent
    may become the root.

    Given the tier's ``url``, it also reads the tier's index once: that imports the URL's
    fsspec filesystem (s3fs and botocore for ``s3://``), builds the instance fsspec keeps for
    later calls, and finds the credentials. v07's first recovery paid that, 0.6 s between the
    replacement and the plan (netns mode, the tier an S3 endpoint)."""

    def warm() -> None:
        importlib.import_module("real.persistent.storage")
        if url is None:
            return
        from real.persistent.storage import latest_persistent_iteration

        try:
            latest_persistent_iteration(url)
        except Exception as error:  # the recovery reads it again, and says what fails
            log.debug("persistent tier %s not readable yet: %s", url, error)

    thread = threading.Thread(target=warm, name="import-persistent", daemon=True)
    thread.start()
    return thread


log = logging.getLogger(__name__)
POLL_S = ROOT_POLL_S
"""The longest the root goes without reading the store. It acts at once on a change: it waits
on a watch of the keys the agents write (exits, suspects, acknowledgements, registrations,
done), and reads the store every ``POLL_S`` for what writes nothing (a lease that expires)."""
WATCHED = [
    keys.EXITS_PREFIX,
    keys.SUSPECTS_PREFIX,
    jobkeys.ACKS_PREFIX,
    jobkeys.DONE_PREFIX,
    jobkeys.STORES_PREFIX,
    jobkeys.STANDBY_PREFIX,
]
UNSCHEDULED_BASE = 1000
"""Failures no injector record names (real ones) are numbered from here in the event log."""


START_REMINDER_S = 30.0
"""How often a root waiting for the job's nodes names the slots still without an agent."""


class RecoveryAborted(Exception):
    """The root lost its leadership (or was told to stop) in the middle of a recovery."""


class RecordChanged(Exception):
    """The attempt record is not the one this root last read or wrote: another root wrote it.
    The agent starts a root again while its node still leads, which adopts the job as it
    stands (``NodeAgent._run_root``)."""


def summarize_ended_job(
    kv: KeyValueStore, run_dir: Path, scenario: Scenario, strategy: str, node_id: int
) -> None:
    """Write the run folder's ``events.jsonl`` and ``summary.json``
    (``real.launcher.results.summarize_run``, mode ``cluster``) once the job has ended,
    finished or failed (a failed job's summary carries its reason). Used by the root that ends
    the job, and by the agent that marks it failed after its root failed too often. A summary
    that cannot be written is logged, never fatal: the events stay."""
    try:
        record = jobkeys.read_json(kv, jobkeys.ATTEMPT_KEY)
    except KVError as error:  # the store went down with the job
        log.warning("node %d: root: no summary of the run: %s", node_id, error)
        return
    if record is None or record.get("state") not in ("finished", "failed"):
        return
    from real.launcher.results import summarize_run  # not on the path of a recovery

    failed = str(record.get("reason") or "failed") if record["state"] == "failed" else None
    try:
        summary, _ = summarize_run(
            run_dir, scenario.name, strategy, scenario.seed, "cluster", failed
        )
    except Exception as error:  # odd events included: the job has ended either way
        log.warning("node %d: root: no summary of the run: %s", node_id, error)
        return
    where = run_dir / "summary.json"
    if failed is None:
        log.info("node %d: root: %d failures, summary in %s", node_id, len(summary.failures), where)
    elif int(record.get("attempt") or 0) == 0:  # failed before its first attempt
        log.error(
            "node %d: root: the job never started (%s); summary in %s", node_id, failed, where
        )
    else:
        log.error(
            "node %d: root: the job failed after %d failures (%s); summary in %s",
            node_id,
            len(summary.failures),
            failed,
            where,
        )


class RootAgent:
    """The root agent's work loop; ``run_safely()`` returns when the job is finished or
    ``stop`` is set.

    Args:
        kv: a client of the coordination store (owned: closed at the end).
        node_id, slot: the node running the root.
        scenario: the job's scenario.
        run_dir: the run's folder.
        events: the agent's event log (root events carry ``node`` = the root's slot).
        stop: set when this agent stops being the root.
        token: the job's secret, to ask the stores what they hold.
        summary_strategy: when given, the strategy the trainers run: once the job has ended
            (finished or failed), the root writes the run folder's ``events.jsonl`` and
            ``summary.json`` (``real.launcher.results.summarize_run``, mode ``cluster``), as
            ``gemini-ckpt real`` does for its emulated cluster, whose launcher passes None
            and summarizes the run itself.
        resume: plan the job's first attempt from the persistent tier's newest checkpoint
            (``_first_plan``); False (the emulated cluster unless ``--resume``): from
            scratch, whatever the tier holds.
    """

    _record_raw: bytes | None = None
    """The attempt record as this root last read or wrote it (``_write_record``)."""

    def __init__(
        self,
        kv: KeyValueStore,
        node_id: int,
        slot: int,
        scenario: Scenario,
        run_dir: Path,
        events: EventLog,
        stop: threading.Event,
        token: str,
        summary_strategy: str | None = None,
        resume: bool = True,
    ) -> None:
        self.kv, self.node_id, self.slot = kv, node_id, slot
        self.summary_strategy, self.resume = summary_strategy, resume
        self.scenario, self.run_dir, self.events, self.stop = scenario, run_dir, events, stop
        self.token = token
        cluster, config = scenario.cluster, scenario.checkpoint
        self.nodes, self.per_node = cluster.nodes, cluster.accelerators_per_node
        self.placement = plan_placement(
            cluster.nodes,
            config.replicas,
            config.placement,
            domains=cluster.domain_names(),
            explicit=config.explicit_placement,
        )
        self.operator = CloudOperator.from_scenario(cluster, rng=random.Random(scenario.seed))
        self.lease_timeout_s = scenario.detection.lease_timeout_s
        detection = scenario.detection
        self.probe_timeout_s = detection.probe_timeout_s
        self.detector = FailureDetector(
            kv,
            self.lease_timeout_s,
            poll_s=POLL_S,
            prober=self._probe,
            suspect_grace_s=detection.probe_timeout_s + detection.abort_timeout_s,
            silence_s=detection.silence_s,
            collective_timeout_s=detection.collective_timeout_s,
        )
        self.persistent_url = persistent_url(scenario, run_dir)
        self.store_links = StoreLinks(token)
        self.recoveries = 0
        self.crash_streak: dict[int, int] = {}  # slot -> restarts in a row it crashed soon after
        # Restarts in a row that found nothing committed since the one before, no node lost.
        self.stuck_streak = 0
        self.last_restart: tuple[int | None] | None = None  # its plan's iteration
        self.attempt_began = time.time()
        self._cursor: int | None = None  # of the store watch

    def wait(self) -> None:
        """Until a watched key changes (or ``POLL_S`` passes, or the root is told to stop)."""
        if self.stop.is_set():
            return
        try:
            self._cursor, _ = self.kv.watch(WATCHED, self._cursor, POLL_S)
        except KVError as error:
            log.warning("node %d: root: store watch: %s", self.node_id, error)
            self._cursor = None
            self.stop.wait(POLL_S)

    # -- main loop --------------------------------------------------------------------------

    def run_safely(self) -> Exception | None:
        """:meth:`run`, then close the store client; the exception that ended it early (logged),
        else None (the job ended, or this root was told to stop or stepped down)."""
        try:
            self.run()
            self._summarize()
        except RecoveryAborted:
            log.warning("node %d: root stepped down during a recovery", self.node_id)
        except RecordChanged as error:  # its agent starts a root again while it leads
            log.warning("%s", error)
            return error
        except Exception as error:
            log.exception("node %d: root agent failed", self.node_id)
            return error
        finally:
            self.store_links.close()
            self.kv.close()
        return None

    def _require_leadership(self) -> bytes:
        """Before each write of the job's keys: raise ``RecoveryAborted`` unless this process
        holds the election's leader key now; return that key's value as read. A root paused
        past its lease (SIGSTOP, a frozen VM) went on where it stopped once resumed, before
        its agent saw it had lost the election: it wrote the job's record over the new root's
        (a failure of its own making, and the new root's replacement node told it was no
        longer a member). A read, then the write: a root stopped between the two could still
        write once, which the record's compare-and-swap (``_write_record``) and the guarded
        writes and deletes (``_leader_put``, ``_leader_delete``) then refuse; and a root whose
        own node won the election again after its pause (same node, same process) passes."""
        self._check()  # the agent told it to stop: its election saw the leadership lost
        raw = self.kv.get(keys.LEADER_KEY)
        try:
            holder = keys.decode(raw) if raw is not None else {}
        except ValueError:
            holder = {}
        if holder.get("node") != self.node_id or holder.get("pid") != os.getpid():
            log.warning(
                "node %d: root: no longer the leader (the election's key is %s's); stepping down",
                self.node_id,
                holder.get("node", "nobody"),
            )
            raise RecoveryAborted
        assert raw is not None  # decoded above: a holder was there
        return raw

    def _leader_put(self, key: str, value: bytes) -> None:
        """Write one of the job's keys (a replacement order, the next node id, a failure
        handled) only while this root holds the election's key, atomically
        (``KeyValueStore.put_guarded``): a root that passed the check, then paused while
        another was elected, writes nothing once resumed and steps down (``RecoveryAborted``).
        Until 2026-12-07 these were guarded by the check alone, so such a root could order a
        second node for a slot the new root had already ordered one for, or hand a standby
        agent a slot the new root gave another."""
        held = self._require_leadership()
        if not self.kv.put_guarded(key, value, keys.LEADER_KEY, held):
            self._step_down(f"writing {key}")

    def _leader_delete(self, prefix: str) -> None:
        """Delete every key under ``prefix`` (a stopped attempt's exits, suspects, acks) only
        while this root holds the election's key, atomically, as ``_leader_put`` writes: a
        root resumed after a pause must not clear what the new root has yet to read."""
        held = self._require_leadership()
        if not self.kv.delete_guarded(prefix, keys.LEADER_KEY, held, prefix=True):
            self._step_down(f"clearing {prefix}")

    def _step_down(self, what: str) -> NoReturn:
        """A guarded write found the election's key another's, or gone: stop acting as root."""
        log.warning(
            "node %d: root: the election's key changed before %s; stepping down",
            self.node_id,
            what,
        )
        raise RecoveryAborted

    def _write_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write the attempt record, a leader's only (``_require_leadership``), and only over
        the record this root last read or wrote (``KeyValueStore.replace``): a root that passed
        the leadership check, then paused while another was elected and wrote the record,
        fails here instead of overwriting it. Raises ``RecordChanged`` then; the record
        written otherwise."""
        self._require_leadership()
        raw = keys.encode(record)
        if not self.kv.replace(jobkeys.ATTEMPT_KEY, self._record_raw, raw):
            raise RecordChanged(
                f"node {self.node_id}: root: the attempt record changed since this root read it "
                "(another root wrote it); not overwriting it"
            )
        self._record_raw = raw
        return record

    def _summarize(self) -> None:
        """Once the job has ended, its results in the run folder (``summary_strategy``;
        :func:`summarize_ended_job`). (The agent may already be stopping this root: the job's
        end stops every agent.)"""
        if self.summary_strategy is not None:
            summarize_ended_job(
                self.kv, self.run_dir, self.scenario, self.summary_strategy, self.node_id
            )

    def run(self) -> None:
        self._cursor, _ = self.kv.watch(WATCHED, None, 0.0)  # before the first read
        self._record_raw = self.kv.get(jobkeys.ATTEMPT_KEY)
        record = jobkeys.parse_json(self._record_raw)
        if record is None:
            record = self._start_job()
            if record is None:
                return
            pending: list[Detection] = []
        else:
            pending = self._adopt(record)
            if record["state"] == "stopped":
                record = self._recover(record, pending, resumed=list(record.get("failures", [])))
                pending = []
        while not self.stop.is_set():
            if record["state"] in ("finished", "failed"):
                return
            if self._all_done(record):
                # Ask the stores first: agents take their stores down once they see "finished".
                memory = self._store_memory(record)
                record = {**record, "state": "finished"}
                self._write_record(record)
                self._emit("run_finished", attempt=record["attempt"], **memory)
                log.info("node %d: root: job finished", self.node_id)
                return
            detections = pending + self.detector.poll()
            pending = []
            if detections:
                record = self._recover(record, detections)
                continue  # look again at once: what happened meanwhile is read now
            self.wait()

    def _store_memory(self, record: dict[str, Any]) -> dict[str, Any]:
        """Checkpoint memory of every member's node store (its ``stats``), asked once every
        trainer is done and before the job is marked finished: ``checkpoint_memory_bytes`` (the
        largest node's) and ``store_memory_bytes`` per slot."""
        registrations = self._registrations()
        per_slot: dict[str, int] = {}
        node_memory = 0
        for slot, node_id in sorted(jobkeys.members_of(record).items()):
            address = registrations.get(node_id, {}).get("address")
            if address is None:
                continue
            try:
                client = StoreClient(slot, address, self.token, 5.0)
                try:
                    stats = client.stats()
                finally:
                    client.close()
            except (OSError, RuntimeError) as error:
                log.warning("slot %d store %s: no stats: %s", slot, address, error)
                continue
            per_slot[str(slot)] = int(stats["memory_bytes"])
            node_memory = int(stats["node_memory_bytes"])
        if not per_slot:
            return {}
        return {
            "checkpoint_memory_bytes": max(per_slot.values()),
            "store_memory_bytes": per_slot,
            "node_memory_bytes": node_memory,
        }

    def _probe(self, node_ids: list[int]) -> list[int]:
        """The nodes among ``node_ids`` whose agent does not answer a probe now."""
        registrations = self._registrations()
        addresses = {
            n: str(registrations[n]["probe"])
            for n in node_ids
            if n in registrations and registrations[n].get("probe")
        }
        lost = probe_all(addresses, self.probe_timeout_s)
        if lost:
            log.warning("node %d: root: nodes %s do not answer a probe", self.node_id, lost)
        return lost

    def _emit(self, kind: str, iteration: int | None = None, **details: Any) -> None:
        self.events.emit(kind, iteration=iteration, node=self.slot, **details)

    def _check(self) -> None:
        if self.stop.is_set():
            raise RecoveryAborted

    # -- start and adoption -----------------------------------------------------------------

    def _registrations(self) -> dict[int, dict[str, Any]]:
        return {int(k): v for k, v in jobkeys.read_prefix(self.kv, jobkeys.STORES_PREFIX).items()}

    def _start_job(self) -> dict[str, Any] | None:
        """Wait for one registered, beating agent per slot; write attempt 1. Past
        ``recovery.start_timeout_s`` without one on every slot, the job fails, naming the
        slots without one (a node lost while the job started, an agent never launched)."""
        log.info("node %d: root: waiting for %d nodes", self.node_id, self.nodes)
        timeout_s = self.scenario.recovery.start_timeout_s
        began = time.monotonic()
        deadline = began + timeout_s
        told = began
        while not self.stop.is_set():
            alive = set(self.detector.alive_nodes())
            by_slot: dict[int, int] = {}
            for node_id, registration in sorted(self._registrations().items()):
                if node_id in alive:
                    by_slot.setdefault(int(registration["slot"]), node_id)
            missing = [slot for slot in range(self.nodes) if slot not in by_slot]
            if missing and time.monotonic() - told >= START_REMINDER_S:
                told = time.monotonic()
                log.warning(
                    "node %d: root: after %.0f s no live agent on slot(s) %s yet; the job "
                    "starts once each has one (it gives up after %g s: "
                    "recovery.start_timeout_s)",
                    self.node_id,
                    told - began,
                    missing,
                    timeout_s,
                )
            if missing and time.monotonic() > deadline:
                reason = (
                    f"the job did not start: no live agent on slot(s) {missing} after "
                    f"{timeout_s:g} s (recovery.start_timeout_s); start `gemini-ckpt agent "
                    "--slot N` for each, or see their agents' logs"
                )
                log.error("node %d: root: %s", self.node_id, reason)
                self._write_record(jobkeys.failed_record({"attempt": 0, "members": {}}, reason))
                self._emit("run_finished", attempt=0, failed=True, reason=reason)
                return None
            if not missing:
                members = {slot: by_slot[slot] for slot in range(self.nodes)}
                ids = [*self._registrations(), *members.values()]
                if self.kv.get(jobkeys.NEXT_NODE_ID_KEY) is None:
                    self._leader_put(jobkeys.NEXT_NODE_ID_KEY, str(max(ids) + 1).encode())
                for node_id in members.values():
                    self.detector.expect(node_id)
                plan, refusal = self._first_plan()
                if refusal is not None:
                    log.error("node %d: root: %s", self.node_id, refusal)
                    never = {"attempt": 0, "members": {}}
                    self._write_record(jobkeys.failed_record(never, refusal))
                    self._emit("run_finished", attempt=0, failed=True, reason=refusal)
                    return None
                record = self._attempt_record(1, members, plan, [])
                self._write_record(record)
                self.detector.attempt = 1
                resumed = {} if plan["iteration"] is None else {"resumed_from": plan["iteration"]}
                self._emit("run_started", attempt=1, members=_json_members(members), **resumed)
                return record
            self.wait()
        return None

    def _first_plan(self) -> tuple[dict[str, Any], str | None]:
        """Attempt 1's plan, and a reason to fail the job instead (else None).

        A job submitted again after it lost every node (docs/cluster.md) resumes from the
        persistent tier's newest checkpoint, every node reading its shard from there; with
        none there, training starts from scratch. A checkpoint this job cannot verify (its
        ``.metadata`` signed under another job's key) fails the job before any trainer
        starts: resuming would fail in every trainer, and starting afresh would overwrite the
        other job's checkpoints.
        """
        scratch: dict[str, Any] = {"iteration": None, "sources": []}
        from real.persistent.storage import index_reader, world_size_refusal

        # Raises when the tier cannot be read (OSError; the root starts again, and after
        # ROOT_FAILURES the job fails with it): a job that cannot see its checkpoints must
        # not start afresh over them.
        complete = index_reader(self.persistent_url).read_index()["complete"]
        iteration = max((int(e["iteration"]) for e in complete), default=None)
        if iteration is None:
            return scratch, None
        if not self.resume:
            log.warning(
                "node %d: root: the persistent tier %s holds iteration %d; this job starts "
                "from scratch (the agents were started with --no-resume; under gemini-ckpt "
                "real, --resume resumes)",
                self.node_id,
                self.persistent_url,
                iteration,
            )
            return scratch, None
        # DCP and torch come with the verification: paid only by a job that resumes.
        from real.persistent.metadata import metadata_key

        key, source = metadata_key()
        try:
            index_reader(self.persistent_url).verify_metadata(iteration, key)
        except MetadataVerificationError as error:
            return scratch, (
                f"the persistent tier {self.persistent_url} holds iteration {iteration}, which "
                f"this job cannot resume from: {error}. To resume from it, set "
                "GEMINI_PERSISTENT_KEY to the key of the job that wrote it; to start afresh, "
                "give this job a storage URL (cluster.storage.url) or run folder of its own"
            )
        entry: dict[str, Any] = next((e for e in complete if int(e["iteration"]) == iteration), {})
        refusal = world_size_refusal(self.persistent_url, entry, self.nodes * self.per_node)
        if refusal is not None:
            return scratch, f"the persistent tier holds iteration {iteration}: {refusal}"
        plan = plan_recovery(self.placement, {}, {}, iteration)
        log.info(
            "node %d: root: resuming from persistent iteration %d (key from %s)",
            self.node_id,
            iteration,
            source,
        )
        return _plan_json(plan), None

    def _adopt(self, record: dict[str, Any]) -> list[Detection]:
        """Take over a job from a dead root: members without a heartbeat, or whose agent does
        not answer a probe (a root deposed early still has its heartbeat), are lost.

        Each loss is dated from the node's last sign of life, as the detector dates the losses
        it sees: an unanswered node from its heartbeat's time; a node whose heartbeat key had
        lapsed (its value gone with it) a lease before now, the least silence that lets a key
        lapse. (A loss dated at its detection made a lost root's node look found at once, and
        left the wait for its lease out of that failure's downtime.)"""
        members = jobkeys.members_of(record)
        beats = self.detector.heartbeat_times()
        others = [n for n in members.values() if n in beats and n != self.node_id]
        unanswered = set(self._probe(others))
        now = time.time()
        self.detector.attempt = int(record["attempt"])
        lost = []
        for node_id in members.values():
            self.detector.expect(node_id)
            if node_id not in beats or node_id in unanswered:
                self.detector.forget(node_id)
                if node_id in unanswered:
                    how, last = "probe", min(now, beats[node_id])
                else:
                    how, last = "lease", now - self.lease_timeout_s
                lost.append(Detection("hardware", node_id, None, None, now, last, None, how))
        log.info(
            "node %d: root adopts attempt %s (%s); lost: %s",
            self.node_id,
            record["attempt"],
            record["state"],
            [d.node for d in lost],
        )
        return lost

    def _attempt_record(
        self,
        attempt: int,
        members: dict[int, int],
        plan: dict[str, Any],
        failures: list[int],
    ) -> dict[str, Any]:
        registrations = self._registrations()
        stores = [registrations[members[slot]]["address"] for slot in range(self.nodes)]
        first = registrations[members[0]]
        master = first.get("host", "127.0.0.1")
        record = {
            "attempt": attempt,
            "state": "running",
            "members": _json_members(members),
            "stores": stores,
            "plan": plan,
            "failures": failures,
        }
        rendezvous = first.get("rendezvous")
        if rendezvous:
            # Slot 0's agent keeps a rendezvous store listening; the attempt has its prefix.
            host, _, port = str(rendezvous).rpartition(":")
            record.update(
                master_addr=host, master_port=int(port), rendezvous_prefix=f"attempt{attempt}"
            )
        else:
            record.update(master_addr=master, master_port=_free_port(master))
        return record

    def _all_done(self, record: dict[str, Any]) -> bool:
        if record["state"] != "running":
            return False
        done = self.kv.get_prefix(f"{jobkeys.DONE_PREFIX}{record['attempt']}/")
        return len(done) >= self.nodes * self.per_node

    # -- recovery ---------------------------------------------------------------------------

    def _recover(
        self,
        record: dict[str, Any],
        detections: Iterable[Detection],
        resumed: Iterable[int] = (),
    ) -> dict[str, Any]:
        recovery = _Recovery(self, jobkeys.members_of(record), list(resumed))
        recovery.absorb(detections)
        attempt = int(record["attempt"])
        stopped = {**record, "state": "stopped", "failures": recovery.indices}
        self._write_record(stopped)
        recovery.wait_stopped(attempt)
        reason = self._give_up(recovery)
        if reason is not None:
            log.error("node %d: root: %s", self.node_id, reason)
            failed = self._write_record(jobkeys.failed_record(stopped, reason))
            self._emit("run_finished", attempt=attempt, failed=True, reason=reason)
            return failed
        while True:
            recovery.replace()
            plan = recovery.plan()
            if plan is None:
                continue  # a store did not answer: its node is lost, replace it too
            recovery.absorb(self.detector.poll())
            if recovery.unreplaced():
                continue
            break
        reason = self._stuck(recovery, plan.iteration)
        if reason is not None:
            log.error("node %d: root: %s", self.node_id, reason)
            failed = self._write_record(jobkeys.failed_record(stopped, reason))
            self._emit("run_finished", attempt=attempt, failed=True, reason=reason)
            return failed
        record = self._attempt_record(
            attempt + 1, recovery.members, _plan_json(plan), recovery.indices
        )
        tiers = plan.tiers()
        for index in recovery.indices:
            self._emit(
                "restart_begin",
                iteration=plan.iteration,
                failure=index,
                attempt=attempt + 1,
                tiers=tiers,
                sources=[[x.node, x.tier, x.from_node] for x in plan.sources],
                rollback=plan.rollback,
                reason=plan.reason,
                failed=_json_members(recovery.failed),
            )
        self._write_record(record)
        self.attempt_began = time.time()
        self.detector.attempt = attempt + 1
        for index in recovery.indices:
            handled = keys.encode({"time": time.time()})
            self._leader_put(f"{jobkeys.HANDLED_PREFIX}{index}", handled)
        self._leader_delete(f"{jobkeys.ACKS_PREFIX}{attempt}/")
        log.info(
            "node %d: root: attempt %d restarts at iteration %s: %s",
            self.node_id,
            attempt + 1,
            plan.iteration,
            plan.reason,
        )
        return record

    def _give_up(self, recovery: _Recovery) -> str | None:
        """Why the job must stop instead of recovering (restart budget spent, a crash loop),
        or None. Every failure is recovered otherwise, whatever caused it."""
        self.recoveries += 1
        budget = self.scenario.recovery.max_restarts
        if budget is not None and self.recoveries > budget:
            return f"recovery.max_restarts ({budget}) spent; giving up"
        config = self.scenario.recovery
        for slot in range(self.nodes):
            crashed_at = recovery.exit_time.get(slot)
            soon = crashed_at is not None and (
                crashed_at - self.attempt_began < config.crash_loop_window_s
            )
            self.crash_streak[slot] = self.crash_streak.get(slot, 0) + 1 if soon else 0
            if self.crash_streak[slot] >= config.crash_loop_restarts:
                return (
                    f"crash loop: node {slot}'s trainer died within "
                    f"{config.crash_loop_window_s:g} s of each of the last "
                    f"{self.crash_streak[slot]} restarts; fix the cause (see "
                    f"{self.run_dir}/logs/trainer-*.log) and start the job again"
                )
        return None

    def _stuck(self, recovery: _Recovery, iteration: int | None) -> str | None:
        """Why the job must stop because its attempts make no progress, or None.

        A restart that restores the iteration the one before it restored (nothing committed
        in between) after an attempt that broke within ``recovery.crash_loop_window_s`` of its
        start, with no node lost, counts; ``recovery.crash_loop_restarts`` in a row stop the
        job. The crash loop above needs the same slot's trainer to exit each time; a
        model kept from an earlier attempt (a DDP wrapper, FSDP2 sharding over its dead
        group) fails every attempt from whichever rank survived the one before, or breaks
        its collectives with no exit at all. Lost nodes do not count: a storm of them is bad
        luck, which the job recovers from; nor do failures the injector scheduled."""
        lost_node = "hardware" in recovery.failed.values()
        # A failure the emulated cluster's injector scheduled is meant, however soon it comes.
        scheduled = any(index < UNSCHEDULED_BASE for index in recovery.indices)
        same = self.last_restart == (iteration,)
        soon = (  # the attempt broke soon after it began: it did not just miss a checkpoint
            recovery.first_seen is not None
            and recovery.first_seen - self.attempt_began
            < self.scenario.recovery.crash_loop_window_s
        )
        stuck = same and soon and not lost_node and not scheduled
        self.stuck_streak = self.stuck_streak + 1 if stuck else 0
        self.last_restart = (iteration,)
        restarts = self.scenario.recovery.crash_loop_restarts
        if self.stuck_streak < restarts:
            return None
        where = "from scratch" if iteration is None else f"from iteration {iteration}"
        return (
            f"attempt loop: the last {self.stuck_streak} attempts each restarted {where} "
            "and failed before committing an iteration, with no node lost (a DDP wrapper, "
            "FSDP2 module or DeepSpeed module made in an earlier attempt? docs/training.md, "
            "'Build outside, wrap inside'; or a rank that raises, every attempt, an error "
            "that reads like a peer's, such as a TimeoutError of its own); fix the cause (see "
            f"{self.run_dir}/logs/trainer-*.log) and start the job again"
        )


class _Recovery:
    """The bookkeeping of one recovery (see the module docstring)."""

    def __init__(self, root: RootAgent, members: dict[int, int], resumed: list[int]) -> None:
        self.root, self.kv = root, root.kv
        self.members = dict(members)
        self.failed: dict[int, str] = {}
        self.indices: list[int] = list(resumed)
        self.failure_of_slot: dict[int, int] = {}
        self.symptoms: list[Detection] = []
        self.exit_time: dict[int, float] = {}  # slot -> when its trainer exited (software)
        self.first_seen: float | None = None  # the earliest evidence of a failure, wall s
        self.replacements: dict[int, int] = {}  # slot -> the replacement's node id
        self._original = dict(members)
        records = jobkeys.read_prefix(self.kv, jobkeys.FAILURES_PREFIX)
        for index in resumed:
            for slot in records.get(str(index), {}).get("nodes", []):
                self.failure_of_slot.setdefault(int(slot), index)
        if resumed:
            self._adopt_orders()

    def _adopt_orders(self) -> None:
        """A new root resuming a recovery takes over the orders its predecessor gave for this
        one: those replacing a slot's current member. Ordering again would leave the node of
        the first order (a standby agent that may already hold the slot) unused, and wait
        for a second one. An order of an earlier recovery replaced a member the attempt
        record no longer names."""
        for key, order in jobkeys.read_prefix(self.kv, jobkeys.REPLACEMENTS_PREFIX).items():
            try:
                slot, replaces, node_id = int(order["slot"]), int(order["replaces"]), int(key)
            except (KeyError, TypeError, ValueError):
                continue
            if self.members.get(slot) == replaces and node_id != replaces:
                self.replacements.setdefault(slot, node_id)
                log.info("adopted the order of node %d for slot %d", node_id, slot)

    # -- classification ---------------------------------------------------------------------

    def slot_of(self, node_id: int) -> int | None:
        for slot, member in self.members.items():
            if member == node_id:
                return slot
        return None

    def absorb(self, detections: Iterable[Detection]) -> None:
        for detection in detections:
            slot = self.slot_of(detection.node)
            if slot is None:
                # Not a member: a replacement that died before joining (replace() orders
                # another), or a node already replaced.
                for s, node_id in list(self.replacements.items()):
                    if node_id == detection.node and detection.kind == "hardware":
                        log.warning("replacement node %d for slot %d lost", node_id, s)
                        del self.replacements[s]
                continue
            if detection.kind == "hardware":
                self.root.detector.forget(detection.node)
                if self.failed.get(slot) == "hardware":
                    continue
                self.failed[slot] = "hardware"
                self._detected(slot, detection, HARDWARE_KINDS)
            else:
                # Survivors of a failure park in process and never exit: a trainer that
                # exited while its node lives is a software failure of its own.
                if self.failed.get(slot) is not None:
                    self.symptoms.append(detection)
                    continue
                self.failed[slot] = "software"
                if detection.exitcode is not None:
                    self.exit_time[slot] = detection.last_seen_at
                self._detected(slot, detection, ("software",))

    def _match(self, slot: int, kinds: tuple[str, ...]) -> int | None:
        """The oldest injected, unhandled failure of one of ``kinds`` naming ``slot``."""
        handled = set(jobkeys.read_prefix(self.kv, jobkeys.HANDLED_PREFIX))
        records = jobkeys.read_prefix(self.kv, jobkeys.FAILURES_PREFIX)
        for key in sorted(records, key=int):
            value = records[key]
            if key in handled or value.get("kind") not in kinds:
                continue
            if slot in [int(n) for n in value.get("nodes", [])]:
                return int(key)
        return None

    def _detected(self, slot: int, detection: Detection, kinds: tuple[str, ...]) -> None:
        if self.first_seen is None or detection.last_seen_at < self.first_seen:
            self.first_seen = detection.last_seen_at
        index = self._match(slot, kinds)
        if index is None:
            index = self.failure_of_slot.get(slot)
        if index is None:
            index = UNSCHEDULED_BASE + len(jobkeys.read_prefix(self.kv, jobkeys.HANDLED_PREFIX))
            index += len(self.indices)
            log.warning("slot %d: unscheduled %s failure (index %d)", slot, detection.kind, index)
        self.failure_of_slot[slot] = index
        if index in self.indices:
            return
        self.indices.append(index)
        details = detection.event_details()
        details["failure_kind"] = "hardware" if detection.kind == "hardware" else "software"
        self.root.events.emit(
            "failure_detected",
            node=slot,
            rank=detection.rank,
            failure=index,
            node_id=detection.node,
            **{k: v for k, v in details.items() if k != "failure"},
        )

    # -- stop -------------------------------------------------------------------------------

    def wait_stopped(self, attempt: int) -> None:
        """Wait until every live member acknowledged the stop of ``attempt``."""
        root = self.root
        deadline = time.monotonic() + 3 * root.lease_timeout_s + 30.0
        prefix = f"{jobkeys.ACKS_PREFIX}{attempt}/"
        while True:
            root._check()
            self.absorb(root.detector.poll())
            acks = {int(k) for k in jobkeys.read_prefix(self.kv, prefix)}
            waiting = [
                node_id
                for slot, node_id in self.members.items()
                if self.failed.get(slot) != "hardware" and node_id not in acks
            ]
            if not waiting:
                break
            if time.monotonic() > deadline:
                now = time.time()
                log.error("nodes %s did not stop their trainers; counted as lost", waiting)
                self.absorb(Detection("hardware", n, None, None, now, now) for n in waiting)
            root.wait()
        if not self.indices:
            # Only symptoms: nothing injected explains them. The first killed-by-signal exit
            # (else the first exit) is an unscheduled software failure.
            first = sorted(self.symptoms, key=lambda d: (not (d.exitcode or 0) < 0, d.detected_at))[
                0
            ]
            slot = self.slot_of(first.node)
            assert slot is not None
            self.failed[slot] = "software"
            self._detected(slot, first, ("software",))
        for index in self.indices:
            root.events.emit("training_stopped", node=root.slot, failure=index, attempt=attempt)
        # Exit and suspect records of the stopped attempt are handled: a restart starts clean.
        root._leader_delete(keys.EXITS_PREFIX)
        root._leader_delete(keys.SUSPECTS_PREFIX)
        root.detector.clear_suspects()

    # -- replacement ------------------------------------------------------------------------

    def unreplaced(self) -> list[int]:
        """Lost slots still held by the lost node (no replacement has joined yet)."""
        return [
            slot
            for slot, kind in self.failed.items()
            if kind == "hardware" and self.members[slot] == self._original[slot]
        ]

    def replace(self) -> None:
        """Order a node for every lost slot and wait until each has joined."""
        root = self.root
        while True:
            root._check()
            self.absorb(root.detector.poll())
            lost = [s for s, kind in self.failed.items() if kind == "hardware"]
            for slot in lost:
                if self.members[slot] != self._original[slot] or slot in self.replacements:
                    continue
                order = root.operator.request_replacement(slot)
                standby = self._standby_agent() if order.source == "standby" else None
                # No live standby agent: the cluster starts a new agent under a fresh id.
                node_id = self._fresh_node_id() if standby is None else standby
                order_record = {
                    "node_id": node_id,
                    "slot": slot,
                    "replaces": self._original[slot],
                    "ready_at": order.ready_at,
                    "source": order.source,
                    "standby": standby is not None,
                }
                # A write of the job's, fenced as a leader's (no second root orders a node).
                root._leader_put(
                    f"{jobkeys.REPLACEMENTS_PREFIX}{node_id}", keys.encode(order_record)
                )
                self.replacements[slot] = node_id
                if standby is None:  # on a real cluster somebody starts it: say with which id
                    log.warning(
                        "slot %d: no live standby agent; ordered node %d: start "
                        "`gemini-ckpt agent ... --standby --node-id %d` on a new machine",
                        slot,
                        node_id,
                        node_id,
                    )
                else:
                    log.info("slot %d: ordered standby node %d", slot, node_id)
                root.events.emit(
                    "replacement_requested",
                    node=slot,
                    failure=self.failure_of_slot.get(slot),
                    node_id=node_id,
                    source=order.source,
                    delay_s=round(order.delay_s, 6),
                )
            alive = set(root.detector.alive_nodes())
            registered = root._registrations()
            waiting = [
                slot
                for slot, node_id in self.replacements.items()
                if self.members[slot] != node_id
                and not (node_id in alive and node_id in registered)
            ]
            for slot, node_id in self.replacements.items():
                if slot not in waiting and self.members[slot] != node_id:
                    self.members[slot] = node_id
                    root.detector.expect(node_id)
                    index = self.failure_of_slot.get(slot)
                    root.events.emit("replacement_ready", node=slot, failure=index, node_id=node_id)
            if not waiting and not self.unreplaced():
                return
            root.wait()

    def _fresh_node_id(self) -> int:
        """The next node id no agent has registered (standby agents started by hand may have
        taken any), reserved in the store."""
        taken = {
            int(k)
            for prefix in (jobkeys.STORES_PREFIX, jobkeys.STANDBY_PREFIX)
            for k in jobkeys.read_prefix(self.kv, prefix)
        }
        node_id = int(self.kv.get(jobkeys.NEXT_NODE_ID_KEY) or b"0")
        while node_id in taken:
            node_id += 1
        self.root._leader_put(jobkeys.NEXT_NODE_ID_KEY, str(node_id + 1).encode())
        return node_id

    def _standby_agent(self) -> int | None:
        """A live standby agent no order has taken yet (the lowest id), or None."""
        alive = set(self.root.detector.alive_nodes())
        taken = {int(k) for k in jobkeys.read_prefix(self.kv, jobkeys.REPLACEMENTS_PREFIX)}
        waiting = [
            int(k)
            for k in jobkeys.read_prefix(self.kv, jobkeys.STANDBY_PREFIX)
            if int(k) in alive and int(k) not in taken
        ]
        return min(waiting) if waiting else None

    # -- plan -------------------------------------------------------------------------------

    def plan(self) -> RecoveryPlan | None:
        """The recovery plan from what the stores hold; None when a store did not answer."""
        root = self.root
        registrations = root._registrations()
        by_rank: dict[int, dict[int, set[int]]] = {}
        slots = sorted(self.members)
        addresses = {slot: registrations[self.members[slot]]["address"] for slot in slots}

        def ask(slot: int) -> dict[int, set[int]] | BaseException:
            return root.store_links.holdings(slot, addresses[slot], complete)

        complete = complete_counts(root.scenario)
        # Every store at once (a store that must be connected to anew costs a handshake),
        # and the persistent tier's newest checkpoint meanwhile.
        with ThreadPoolExecutor(max_workers=min(16, len(slots) + 1)) as pool:
            newest = pool.submit(latest_persistent, root.persistent_url)
            answers = dict(zip(slots, pool.map(ask, slots), strict=True))
            persistent = newest.result()
        root.store_links.keep(set(addresses.values()))
        for slot, answer in answers.items():
            if isinstance(answer, BaseException):
                node_id = self.members[slot]
                address = addresses[slot]
                log.warning("slot %d store %s unreachable: %s; node lost", slot, address, answer)
                now = time.time()
                self.absorb([Detection("hardware", node_id, None, None, now, now)])
                return None
            by_rank[slot] = answer
        holdings: dict[int, dict[int, set[int]]] = {}
        for holder, ranks in by_rank.items():
            for owner in range(root.nodes):
                sets = [ranks.get(owner * root.per_node + r, set()) for r in range(root.per_node)]
                common = set.intersection(*sets)
                if common:
                    holdings.setdefault(holder, {})[owner] = common
        kinds: dict[int, Any] = {
            s: ("hardware" if k == "hardware" else "software") for s, k in self.failed.items()
        }
        log.info("recovery inputs: holdings by rank %s; persistent %s", by_rank, persistent)
        return plan_recovery(root.placement, kinds, holdings, persistent)


class StoreLinks:
    """The root's connections to the members' node stores, kept from one recovery's plan to
    the next. A plan asks every store what it holds; a connection made for each question cost
    a connect, the handshake's three messages and a new thread in the store, several
    milliseconds of every failure's downtime on a loaded host, between the stop and the
    restart. A kept connection that broke (its store restarted, or closed it) is made once
    anew; one that timed out is not (its store does not answer: its node is lost)."""

    def __init__(self, token: str, timeout_s: float = 5.0) -> None:
        self.token, self.timeout_s = token, timeout_s
        self._clients: dict[str, StoreClient] = {}
        self._lock = threading.Lock()

    def holdings(
        self, slot: int, address: str, complete: bool
    ) -> dict[int, set[int]] | BaseException:
        """What the store at ``address`` holds (``StoreClient.holdings``), or the error that
        says it does not answer."""
        with self._lock:
            client = self._clients.pop(address, None)
        kept = client is not None
        while True:
            try:
                if client is None:
                    client = StoreClient(slot, address, self.token, self.timeout_s)
                held = client.holdings(complete=complete)
            except (OSError, RuntimeError) as error:
                if client is not None:
                    client.close()
                    client = None
                if kept and not isinstance(error, TimeoutError):
                    kept = False
                    continue
                return error
            with self._lock:
                self._clients[address] = client
            return {o: set(its) for o, its in held.items()}

    def keep(self, addresses: set[str]) -> None:
        """Close the connections to every store but those at ``addresses``."""
        with self._lock:
            gone = [a for a in self._clients if a not in addresses]
            closing = [self._clients.pop(a) for a in gone]
        for client in closing:
            client.close()

    def close(self) -> None:
        self.keep(set())


def _plan_json(plan: RecoveryPlan) -> dict[str, Any]:
    return {
        "iteration": plan.iteration,
        "rollback": plan.rollback,
        "sources": [
            {"node": s.node, "tier": s.tier, "from_node": s.from_node} for s in plan.sources
        ],
    }


def _json_members(members: dict[int, Any]) -> dict[str, Any]:
    return {str(slot): value for slot, value in sorted(members.items())}


def _free_port(host: str) -> int:
    """A port free on ``host`` now (the rendezvous of the next attempt), else on any address."""
    for address in (host, ""):
        try:
            return free_port(address)
        except OSError:
            continue
    raise KVError("no free port for the rendezvous")
