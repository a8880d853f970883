"""Checkpoint strategies, reduced to a closed-form timeline of iterations and checkpoints.

Whatever the strategy, training between two failures is perfectly regular: iteration k starts,
reaches its optimizer update (its *end*, the progress point) after ``progress_s``, and the next
iteration starts ``cycle_s`` after it started, plus a blocking ``pause_s`` after every
``pause_every``-th iteration (a persistent save). Each checkpoint of iteration k completes at a
fixed delay after k's end. So the simulator never steps through iterations: ``Timeline`` gives
the end of iteration k, the iterations reached by time t and the newest checkpoint captured or
committed at time t in O(1) (or a bisection), and the simulation jumps from failure to failure.

Strategies (``checkpoint.strategy``):

- ``gemini``: every iteration to CPU memory (own copy + m-1 peers per the ``shared``
  placement), traffic interleaved per the ``shared`` schedule or blocking (``sim.training``);
  optionally persisted in the background every K iterations from CPU memory (non-blocking: the
  copy is already in memory; an upload still in flight makes the next one wait its turn).
- ``persistent`` (the paper's baselines): a blocking save every K iterations. The save
  serialises for ``storage.save_time_s`` (blocking), then uploads the bytes at the storage's
  aggregate bandwidth in the background; without ``save_time_s`` the save writes straight to
  storage and blocks for its fixed cost (``storage.save_overhead_s``) and the whole upload.
  K by ``baseline_interval``: ``fixed``; ``strawman`` every 3 h; ``highfreq`` every
  ceil(t_ckpt / T_iter) iterations, t_ckpt the time a save takes to reach storage; ``young`` /
  ``daly`` from ``shared.costs`` with the blocking time as the checkpoint cost and the whole
  job's MTBF.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from shared import costs
from shared.adaptive import due
from shared.errors import ScenarioError
from shared.recovery import complete_counts
from shared.scenario import Scenario

STRAWMAN_INTERVAL_S = 3 * 3600.0


@dataclass(frozen=True)
class StrategyModel:
    """The per-configuration constants of a checkpoint strategy.

    Attributes:
        name: "gemini" or "persistent".
        progress_s: iteration start to its update, s.
        cycle_s: iteration start to the next iteration's start (no pause), s.
        last_replica_delay_s: iteration end to its in-memory checkpoint's capture done and last
            replica stored (gemini), s.
        commit: ``checkpoint.commit``: ``on_arrival`` (a checkpoint counts once its last
            replica arrives) or ``next_iteration_end`` (once the next iteration ends).
        pause_every: K of the blocking persistent save (persistent), or None.
        pause_s: the blocking part of a persistent save, s.
        persist_every: K of the persistent checkpoints (both strategies), or None.
        upload_s: time a persistent checkpoint takes to reach storage after the pause, s.
        iteration_no_ckpt_s: failure-free iteration without checkpointing, s.
        memory_bytes: CPU memory per node used for checkpoints, bytes.
        interval_rule: how K was chosen.
        checkpoint_every: gemini: k, iterations between in-memory checkpoints
            (``checkpoint.interval``, ``sim.cadence``); the persistence interval's multiples
            are checkpointed too.
        compressed: gemini: replication compresses its chunks.
    """

    name: str
    progress_s: float
    cycle_s: float
    last_replica_delay_s: float
    commit: str
    pause_every: int | None
    pause_s: float
    persist_every: int | None
    upload_s: float
    iteration_no_ckpt_s: float
    memory_bytes: float
    interval_rule: str
    checkpoint_every: int = 1
    compressed: bool = False

    @property
    def in_memory(self) -> bool:
        return self.name == "gemini"

    @property
    def commit_at_next_end(self) -> bool:
        """A checkpoint counts only when the next iteration ends (the paper's accounting)."""
        return self.commit == "next_iteration_end"

    @property
    def holds_captured(self) -> bool:
        """Whether a node's store reports its own shard of an iteration once captured, before
        the checkpoint commits (in memory, and ``shared.recovery.complete_counts``, as the
        harness asks it): a software failure then restores the newest captured iteration
        from local memory."""
        return self.in_memory and complete_counts(self.commit)

    @property
    def commit_delay_s(self) -> float:
        """Iteration end to its in-memory checkpoint committed (gemini has no pauses), s."""
        return self.cycle_s if self.commit_at_next_end else self.last_replica_delay_s

    @property
    def mean_iteration_s(self) -> float:
        """Average wall time per iteration, blocking saves included."""
        pause = self.pause_s / self.pause_every if self.pause_every else 0.0
        return self.cycle_s + pause


def persistent_save_times(scenario: Scenario) -> tuple[float, float]:
    """(blocking seconds, background upload seconds) of one persistent save of the whole job."""
    storage = scenario.cluster.storage
    # One copy of the job's state: under DDP the ranks hold the same state, and a DCP save
    # splits its writes among them (while a DCP load reads the whole state on every rank).
    upload = scenario.model.checkpoint_bytes / (storage.bandwidth_gbit_s * 1e9 / 8)
    if storage.save_time_s is None:
        return storage.save_overhead_s + upload, 0.0
    return storage.save_time_s, upload


def baseline_interval(scenario: Scenario, iteration_s: float) -> tuple[int, str]:
    """K of the persistent baseline and a description of the rule that chose it."""
    ckpt = scenario.checkpoint
    blocking, upload = persistent_save_times(scenario)
    rule = ckpt.baseline_interval
    if rule == "fixed":
        if ckpt.baseline_every_iterations is not None:
            return ckpt.baseline_every_iterations, "fixed"
        assert ckpt.baseline_interval_s is not None
        return max(1, round(ckpt.baseline_interval_s / iteration_s)), "fixed"
    if rule == "strawman":
        return max(1, round(STRAWMAN_INTERVAL_S / iteration_s)), "strawman (every 3 h)"
    if rule == "highfreq":
        return costs.highfreq_interval_iterations(blocking + upload, iteration_s), "highfreq"
    process = scenario.failures.process
    if process is None:
        raise ScenarioError(
            scenario.name,
            [f"checkpoint.baseline_interval: {rule} needs failures.process for the MTBF"],
        )
    job_mtbf = process.node_mtbf_s(scenario.cluster.nodes) / scenario.cluster.nodes
    formula = costs.young_interval_s if rule == "young" else costs.daly_interval_s
    interval = formula(blocking, job_mtbf)
    return max(1, round(interval / iteration_s)), f"{rule} ({interval:.0f} s)"


@dataclass(frozen=True)
class Timeline:
    """Closed-form training from a restore at ``start_s`` of iteration ``base`` onwards.

    Iteration k (k > base) ends at ``end(k)``, when its in-memory checkpoint (if k is
    checkpointed) is captured; that checkpoint commits at ``commit_time(k)``.
    """

    start_s: float
    base: int
    model: StrategyModel

    def pauses_before(self, k: int) -> int:
        """Blocking saves between the restore and the start of iteration k."""
        every = self.model.pause_every
        if not every or k <= self.base + 1:
            return 0
        return (k - 1) // every - self.base // every

    def start(self, k: int) -> float:
        return (
            self.start_s
            + (k - self.base - 1) * self.model.cycle_s
            + self.pauses_before(k) * self.model.pause_s
        )

    def end(self, k: int) -> float:
        """Time of iteration k's update (its progress point)."""
        return self.start(k) + self.model.progress_s

    def lost_since(self, k: int, time_s: float) -> float:
        """When the work lost by a failure at ``time_s`` began, for ``k = reached_by(time_s)``.

        Iteration k's update, or, once the blocking save that follows k has returned, that
        save's end: the save made k durable, and the harness reports k's end after it (so a
        failure injected as k ends, which strikes after that save, loses nothing of k + 1).
        A failure during the save loses the part of it already made, as in the harness.
        """
        if k <= self.base:
            return self.start_s
        end = self.end(k)
        every = self.model.pause_every
        if every and k % every == 0 and time_s >= end + self.model.pause_s:
            return end + self.model.pause_s
        return end

    def reached_by(self, time_s: float) -> int:
        """The newest iteration whose update happened at or before ``time_s``."""
        if time_s < self.end(self.base + 1):
            return self.base
        guess = self.base + 1 + int((time_s - self.start_s) / self.model.mean_iteration_s)
        high = max(guess * 2 - self.base, self.base + 2)
        while self.end(high) <= time_s:
            high = 2 * high - self.base
        low = self.base + 1  # end(low) <= time_s < end(high)
        span = range(low, high)
        return low + bisect.bisect_right(span, time_s, key=self.end) - 1

    def is_checkpoint(self, k: int) -> bool:
        """Whether iteration k is checkpointed in memory (``shared.adaptive.due``)."""
        model = self.model
        return k > self.base and due(k, self.base, model.checkpoint_every, model.persist_every)

    def checkpoint_at_or_before(self, k: int) -> int | None:
        """The newest checkpointed iteration at or before k, since the restore, or None."""
        every, persist = self.model.checkpoint_every, self.model.persist_every
        if k <= self.base:
            return None
        best = self.base + (k - self.base) // every * every
        if persist:
            best = max(best, k // persist * persist)
        return best if best > self.base else None

    def checkpoints_through(self, k: int) -> int:
        """Checkpointed iterations in ``(base, k]``."""
        every, persist = self.model.checkpoint_every, self.model.persist_every
        if k <= self.base:
            return 0
        count = (k - self.base) // every
        if persist and every > 1:
            # Multiples of persist_every that are not on the lattice base + j * every.
            count += sum(
                1
                for m in range((self.base // persist + 1) * persist, k + 1, persist)
                if (m - self.base) % every
            )
        return count

    def commit_time(self, k: int) -> float:
        """When iteration k's in-memory checkpoint commits: its last replica stored, or with
        ``commit_at_next_end`` the end of iteration k+1 (the same instant as that update)."""
        if self.model.commit_at_next_end:
            if self.model.checkpoint_every == 1:
                return self.end(k + 1)
            # Replicated over the k iterations that follow: it counts at the first iteration
            # end once every replica is stored (the real engine commits it at that save()).
            stored = self.end(k) + self.model.last_replica_delay_s
            j = max(k + 1, self.reached_by(stored))
            return self.end(j) if self.end(j) >= stored else self.end(j + 1)
        return self.end(k) + self.model.last_replica_delay_s

    def committed_by(self, time_s: float) -> int | None:
        """Newest in-memory checkpoint committed by ``time_s``, since the restore, or None.

        A commit at ``time_s`` itself counts: a failure injected as iteration k+1 ends strikes
        after ``save(k+1)`` has returned, which commits k under ``next_iteration_end``, as the
        real injector (watching the trainers' ``iteration_end`` events) fires it.
        """
        found = self.checkpoint_at_or_before(self.reached_by(time_s))
        while found is not None and self.commit_time(found) > time_s:
            found = self.checkpoint_at_or_before(found - 1)
        return found

    def captured_by(self, time_s: float) -> int | None:
        """Newest in-memory checkpoint captured by ``time_s``, since the restore, or None.

        A checkpoint is captured when its node's own copy is complete, before any replica is
        stored. ``end(k)`` is taken as the instant ``save(k)`` returned, capture included: the
        real harness copies the shard synchronously inside ``save()`` and emits the trainer's
        ``iteration_end`` after it, so a failure injected as iteration k ends finds k captured.
        (The copy engine's time, part of ``last_replica_delay_s``, is not added here.)
        """
        return self.checkpoint_at_or_before(self.reached_by(time_s))
