"""Run summaries: the recovery phases of every failure and the run's totals.

Both the simulator and the real harness derive their ``summary.json`` from their event log
with ``summarize``, so the phases are measured the same way in both (docs/design.md section 5):

- detection: failure injected -> failure detected;
- stop: detected -> surviving trainers stopped;
- replacement: stopped -> replacement node ready (hardware failures only, else 0);
- restart: restart begins -> process group ready on every rank (the last rank's event);
- retrieval: process group ready on every rank -> state restored on every rank;
- lost progress: iterations recomputed (reached before the failure minus restored) times the
  failure-free iteration time, plus the part of the iteration in flight when the failure struck
  unless the restore brought that iteration back (a failure after every rank captured it);
- wasted time = lost progress + retrieval (the paper's definition);
- downtime = failure injected -> training resumed.

A failure nothing injected (a real cluster's, numbered from 1000 by the root agent) has no
``failure_injected`` event: its phases start at the first evidence of it that the detection
carries, the trainer's exit or the lost node's last heartbeat (``failure_detected``'s time less
its ``detection_latency_s``).
"""

from __future__ import annotations

import bisect
import itertools
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from shared.events import Event, replaced_whole


@dataclass(frozen=True)
class FailureRecord:
    """The recovery of one failure, phase by phase (seconds)."""

    index: int
    time_s: float
    kind: str
    nodes: tuple[int, ...]
    detection_s: float
    stop_s: float
    replacement_s: float
    restart_s: float
    retrieval_s: float
    lost_iterations: int
    lost_progress_s: float
    wasted_s: float
    downtime_s: float
    tier: str
    restored_iteration: int | None
    complete: bool = True
    joined: int | None = None


@dataclass(frozen=True)
class RunSummary:
    """What a run measured (real) or predicted (sim).

    Attributes:
        source: "sim" or "real".
        scenario: the scenario's name.
        strategy: "gemini" or "persistent".
        seed: the seed of this run.
        duration_s: run length (simulated or wall), s.
        iterations_completed: iterations whose progress survived to the end.
        iteration_time_s: iteration time with checkpointing, s: the median of every rank's
            iterations in a real run; the mean in a simulation (the baseline's blocking saves
            spread over every iteration).
        iteration_time_no_ckpt_s: median iteration time without checkpointing, s (None if
            unknown).
        failures: one record per failure.
        checkpoints_per_hour: the strategy's checkpoints per hour of the run (a simulation's
            duration, a measured run's after its start-up; downtime included in both): Gemini's
            committed in memory, the baseline's saved to persistent storage.
        checkpoint_memory_bytes: CPU memory per node used for checkpoints.
        extra: face-specific figures.
    """

    source: str
    scenario: str
    strategy: str
    seed: int
    duration_s: float
    iterations_completed: int
    iteration_time_s: float
    iteration_time_no_ckpt_s: float | None
    failures: tuple[FailureRecord, ...]
    checkpoints_per_hour: float
    checkpoint_memory_bytes: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total_wasted_s(self) -> float:
        return sum(f.wasted_s for f in self.failures)

    @property
    def total_downtime_s(self) -> float:
        """Seconds without training that failures caused, each second once: the downtimes of
        a failure and of one that joined its recovery overlap (the union of the intervals
        ``[time_s, time_s + downtime_s]``)."""
        spans = merged_spans((f.time_s, f.time_s + f.downtime_s) for f in self.failures)
        return sum(end - start for start, end in spans)

    @property
    def mean_wasted_s(self) -> float:
        return statistics.fmean(f.wasted_s for f in self.failures) if self.failures else 0.0

    @property
    def mean_downtime_s(self) -> float:
        return statistics.fmean(f.downtime_s for f in self.failures) if self.failures else 0.0

    @property
    def fraction_from_memory(self) -> float | None:
        if not self.failures:
            return None
        memory = sum(1 for f in self.failures if f.tier in ("local", "peer"))
        return memory / len(self.failures)

    @property
    def ettr(self) -> float:
        """Effective training time ratio: useful training time over the run's training time,
        from its first iteration on (a real run's start-up, ``extra["startup_s"]``, left
        out, as the simulator, which starts training at once, has none)."""
        startup = self.extra.get("startup_s")
        training_s = self.duration_s - (float(startup) if isinstance(startup, int | float) else 0.0)
        if training_s <= 0:
            return 0.0
        ideal = self.iteration_time_no_ckpt_s or self.iteration_time_s
        return min(1.0, self.iterations_completed * ideal / training_s)

    @property
    def checkpoint_overhead(self) -> float | None:
        """Relative slow-down of an iteration due to checkpointing."""
        if not self.iteration_time_no_ckpt_s:
            return None
        return self.iteration_time_s / self.iteration_time_no_ckpt_s - 1.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = [asdict(f) for f in self.failures]
        data["extra"] = dict(self.extra)
        data["totals"] = {
            "failures": len(self.failures),
            "wasted_s": self.total_wasted_s,
            "downtime_s": self.total_downtime_s,
            "mean_wasted_s": self.mean_wasted_s,
            "mean_downtime_s": self.mean_downtime_s,
            "fraction_from_memory": self.fraction_from_memory,
            "ettr": self.ettr,
            "checkpoint_overhead": self.checkpoint_overhead,
        }
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSummary:
        failures = tuple(
            FailureRecord(**{**f, "nodes": tuple(f["nodes"])}) for f in data["failures"]
        )
        fields = {k: v for k, v in data.items() if k not in ("failures", "totals")}
        return cls(failures=failures, **fields)


def merged_spans(spans: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """``(start, end)`` spans merged where they overlap or touch, in time order: the seconds
    they cover, each once."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def write_summary(path: str | Path, summary: RunSummary) -> None:
    """Write ``summary`` as JSON, whole or not at all (a temporary file renamed over it)."""
    text = json.dumps(summary.to_json(), indent=2, sort_keys=True) + "\n"
    with replaced_whole(path) as partial:
        partial.write_text(text, encoding="utf-8")


def read_summary(path: str | Path) -> RunSummary:
    return RunSummary.from_json(json.loads(Path(path).read_text()))


def failure_records(
    events: Iterable[Event], iteration_time_s: float, save_s: float = 0.0
) -> tuple[FailureRecord, ...]:
    """Derive one ``FailureRecord`` per failure from an event log.

    Events of one failure carry ``details["failure"]``. When a second failure strikes during
    the recovery of a first, the first's chain ends at the second's ``failure_injected`` and
    the first's downtime runs until training resumes after both (marked incomplete only if
    training never resumed). The second is marked ``joined`` (the first's index), and its
    wasted time counts only what it adds: the iterations its restore goes back beyond the
    first's, and its retrieval unless it shares the first's restore. Otherwise both would
    count the same lost work and the same restore.

    Lost progress is the wall time of the work a failure destroyed: each lost iteration
    at ``iteration_time_s``, plus the part of the iteration in flight, which includes the part
    of a blocking save in flight. A blocking save that completed is not lost: it made its
    iteration durable.

    Args:
        events: the run's events (any order).
        iteration_time_s: what redoing one lost iteration costs, s: the failure-free iteration
            without the baseline's blocking saves (Gemini's capture, made in every iteration,
            is in it).
        save_s: the longest blocking save an iteration ends with (the baseline's), s: the part
            of an iteration in flight is at most ``iteration_time_s + save_s``.
    """
    chains: dict[int, dict[str, Event]] = {}
    order = sorted(with_failure_anchors(list(events)), key=lambda e: e.time_s)
    last_iteration = 0
    progress_since = 0.0  # when the iteration in flight started
    reached_at_failure: dict[int, tuple[int, float]] = {}
    resumes: list[float] = []
    tiers: dict[int, int] = {}
    for event in order:
        if event.kind == "iteration_end" and event.iteration is not None:
            last_iteration = max(last_iteration, event.iteration)
            progress_since = max(progress_since, event.time_s)
        if event.kind in ("training_resumed", "run_started"):
            resumes.append(event.time_s)
            progress_since = max(progress_since, event.time_s)
        index = event.details.get("failure")
        if not isinstance(index, int) or isinstance(index, bool):
            continue
        chain = chains.setdefault(index, {})
        if event.kind == "failure_injected" and index not in reached_at_failure:
            # A face that skips uneventful iterations (the simulator) states what was reached.
            reached = event.details.get("reached_iteration", last_iteration)
            partial = event.details.get("partial_iteration_s", event.time_s - progress_since)
            reached_at_failure[index] = (int(reached), float(partial))  # type: ignore[arg-type]
        # Keep the first event of each kind: the phase starts when the first node reports it.
        # For process_group_ready and state_restored the last one counts (the restart ends
        # when every rank is ready, the retrieval when every rank has its state: a rank's
        # restore waits for the slowest in its collectives), and the failure's tier is the
        # farthest any rank had to go.
        if event.kind == "state_restored":
            tiers[index] = max(tiers.get(index, -1), _tier_rank(event.details.get("tier")))
        if event.kind in _LAST_COUNTS or event.kind not in chain:
            chain[event.kind] = event
    records = []
    restores: dict[int, tuple[float, int | None] | None] = {}
    for index in sorted(chains):
        chain = chains[index]
        injected = chain.get("failure_injected")
        if injected is None:
            continue
        reached, partial = reached_at_failure[index]
        record = _record(
            index, chain, injected, reached, partial, iteration_time_s, save_s, resumes
        )
        if tiers.get(index, -1) >= 0:
            record = replace(record, tier=TIER_ORDER[tiers[index]])
        restored = chain.get("state_restored")
        restores[index] = None if restored is None else (restored.time_s, restored.iteration)
        records.append(record)
    counted = _joined(records, restores, resumes, iteration_time_s)
    return tuple(counted[r.index] for r in records)


def _joined(
    records: Sequence[FailureRecord],
    restores: Mapping[int, tuple[float, int | None] | None],
    resumes: Sequence[float],
    iteration_time_s: float,
) -> dict[int, FailureRecord]:
    """Every record, those of failures detected while an earlier one's recovery was in
    progress (no training resumed between the earlier failure and this one's detection)
    re-counted so that the work and the restore they share with that one count once
    (``failure_records``).

    The detection, not the failure's time, decides: an unannounced lost node is dated from its
    last heartbeat, up to a beat before it died, maybe before a resume it did not interrupt.
    When the earlier failure never restored (the harness recovers a failure that strikes once
    the restart began on its own, with a restart of its own), its lost work is counted against
    the restore that followed instead of as a restart from scratch.
    """
    out = {r.index: r for r in records}
    ordered = sorted(records, key=lambda r: (r.time_s, r.index))
    for first, second in itertools.pairwise(ordered):
        before, record = out[first.index], out[second.index]
        detected = record.time_s + record.detection_s
        if bisect.bisect_right(resumes, detected) > bisect.bisect_right(resumes, before.time_s):
            continue  # training resumed in between: a failure of its own
        restore = restores.get(record.index)
        shared = False
        if restores.get(before.index) is None and restore is not None:
            partial = before.lost_progress_s - before.lost_iterations * iteration_time_s
            lost = max(0, before.lost_iterations - (record.restored_iteration or 0))
            progress = lost * iteration_time_s + partial
            out[before.index] = replace(
                before,
                lost_iterations=lost,
                lost_progress_s=progress,
                wasted_s=progress + before.retrieval_s,
                restored_iteration=record.restored_iteration,
                tier=record.tier,
            )
            extra = 0
        else:
            extra = max(0, (before.restored_iteration or 0) - (record.restored_iteration or 0))
            shared = restore is not None and restore == restores.get(before.index)
        progress = extra * iteration_time_s
        out[record.index] = replace(
            record,
            lost_iterations=extra,
            lost_progress_s=progress,
            wasted_s=progress + (0.0 if shared else record.retrieval_s),
            joined=before.index,
        )
    return out


def with_failure_anchors(events: list[Event]) -> list[Event]:
    """``events`` with a ``failure_injected`` event (``unscheduled: true``) for each failure
    detected that no injection announced, at the first evidence of the failure: the detection
    less its latency (from the trainer's exit, or from the lost node's last heartbeat)."""
    injected = {e.details.get("failure") for e in events if e.kind == "failure_injected"}
    anchors: dict[int, Event] = {}
    for event in events:
        index = event.details.get("failure")
        if (
            event.kind != "failure_detected"
            or not isinstance(index, int)
            or isinstance(index, bool)
            or index in injected
        ):
            continue
        latency = event.details.get("detection_latency_s", 0.0)
        latency_s = float(latency) if isinstance(latency, int | float) else 0.0
        anchor = Event(
            max(0.0, event.time_s - max(0.0, latency_s)),
            "failure_injected",
            node=event.node,
            details={
                "failure": index,
                "failure_kind": event.details.get("failure_kind", "unknown"),
                "nodes": [] if event.node is None else [event.node],
                "unscheduled": True,
            },
        )
        if index not in anchors or anchor.time_s < anchors[index].time_s:
            anchors[index] = anchor
    return [*events, *anchors.values()]


TIER_ORDER = ("local", "peer", "persistent")

_LAST_COUNTS = frozenset({"process_group_ready", "state_restored"})
"""Events that end a phase once every rank has reported them."""


def _tier_rank(tier: object) -> int:
    """Position of a restore tier from nearest to farthest; -1 for anything else."""
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else -1


def _record(
    index: int,
    chain: Mapping[str, Event],
    injected: Event,
    reached: int,
    partial_s: float,
    iteration_time_s: float,
    save_s: float,
    resumes: Sequence[float],
) -> FailureRecord:
    t0 = injected.time_s

    def at(kind: str, default: float) -> float:
        event = chain.get(kind)
        return event.time_s if event is not None else default

    detected = at("failure_detected", t0)
    stopped = at("training_stopped", detected)
    ready = at("replacement_ready", stopped)
    restart = at("restart_begin", max(stopped, ready))
    group_ready = at("process_group_ready", restart)
    restored_event = chain.get("state_restored")
    restored = restored_event.time_s if restored_event is not None else group_ready
    resumed_event = chain.get("training_resumed")
    # ``resumes`` is in time order: the first at or after t0, by bisection (a scan per failure
    # made summaries of runs with 100,000 failures take minutes).
    later = bisect.bisect_left(resumes, t0)
    resumed = (
        resumed_event.time_s
        if resumed_event is not None
        else (resumes[later] if later < len(resumes) else restored)
    )
    restored_iteration = restored_event.iteration if restored_event is not None else None
    tier = str(restored_event.details.get("tier", "unknown")) if restored_event else "none"
    # Iterations are numbered from 1; restoring iteration r resumes at r + 1. Nothing
    # restored (start from scratch) loses everything reached.
    lost = max(0, reached - (restored_iteration if restored_iteration is not None else 0))
    # A failure after every rank captured the iteration in flight (its last rank's
    # iteration_end not yet written) restores that iteration: its work is not lost.
    kept = restored_iteration is not None and restored_iteration > reached
    partial = 0.0 if kept else max(0.0, min(partial_s, iteration_time_s + save_s))
    lost_progress = lost * iteration_time_s + partial
    retrieval = max(0.0, restored - group_ready)
    nodes_value = injected.details.get("nodes")
    if isinstance(nodes_value, list):
        nodes = tuple(int(n) for n in nodes_value)
    else:
        nodes = () if injected.node is None else (injected.node,)
    return FailureRecord(
        index=index,
        time_s=t0,
        kind=str(injected.details.get("failure_kind", "unknown")),
        nodes=nodes,
        detection_s=max(0.0, detected - t0),
        stop_s=max(0.0, stopped - detected),
        replacement_s=max(0.0, ready - stopped) if "replacement_ready" in chain else 0.0,
        restart_s=max(0.0, group_ready - restart),
        retrieval_s=retrieval,
        lost_iterations=lost,
        lost_progress_s=lost_progress,
        wasted_s=lost_progress + retrieval,
        downtime_s=max(0.0, resumed - t0),
        tier=tier,
        restored_iteration=restored_iteration,
        complete=resumed_event is not None or bool(later),
    )
