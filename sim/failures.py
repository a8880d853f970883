"""The failures a simulated run will suffer, before the run starts.

Three sources, all decided up front so that a seed fixes the whole run:

- **time-based**: the stochastic process of ``shared.failures.sample_failures`` (per-node
  MTBF, exponential or Weibull, software/hardware mix, whole failure domains at once) and
  explicit entries with ``at_time_s``;
- **iteration-based**: explicit entries with ``at_iteration: k`` strike the moment iteration
  k ends (its capture done), before its checkpoint has committed, the first time the run gets
  there (as the real injector fires them, once the failing nodes' ranks have captured k,
  which hold there until it strikes;
  ``during: replication``: halfway through the replication of iteration k's checkpoint);
- **during recovery**: an explicit entry with ``during: recovery`` strikes during the recovery
  from the entry before it in the schedule, where the real harness's injector fires it: a lost
  node once the survivors are stopped, a trainer crash as the restarted trainers start.

Scenario failure kinds mean what ``shared.failure_kinds`` says, as in the real harness:
``software`` (memory survives) or ``hardware`` for recovery; ``group`` is planned here as every
node of the named nodes' placement groups. A ``root_agent`` failure hits the node running the
root agent when it strikes, which only the run knows: it is planned with the named nodes and
resolved by the simulation (``sim.simulation``) with ``shared.failure_kinds.resolve_failure``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from shared.failure_kinds import effect_of, group_nodes
from shared.failures import sample_failures
from shared.placement import Placement
from shared.scenario import Scenario

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, order=True)
class PlannedFailure:
    """One failure to inject.

    Attributes:
        time_s: when it strikes (time-based), else 0.
        sequence: tie-breaker, the order the failure was planned in.
        nodes: nodes failing together, ascending (``root_agent``: the named nodes; the
            simulation replaces them by the root's node when the failure strikes).
        kind: "software" or "hardware" (what recovery sees).
        label: the scenario's kind (software, hardware, network, root_agent, group).
        cause: "node", "domain:<name>" or "explicit".
        at_iteration: iteration-based failures: the iteration in flight.
        during: "training", "replication" or "recovery".
        schedule_index: position in the explicit schedule, or None.
    """

    time_s: float
    sequence: int
    nodes: tuple[int, ...] = field(compare=False)
    kind: str = field(compare=False)
    label: str = field(compare=False)
    cause: str = field(compare=False)
    at_iteration: int | None = field(default=None, compare=False)
    during: str = field(default="training", compare=False)
    schedule_index: int | None = field(default=None, compare=False)


class FailureQueue:
    """The failures still to come, time-based in a heap, iteration-based in order."""

    def __init__(
        self,
        timed: list[PlannedFailure],
        by_iteration: list[PlannedFailure],
        on_recovery: dict[int, list[PlannedFailure]],
    ) -> None:
        self._timed = list(timed)
        heapq.heapify(self._timed)
        self._by_iteration = sorted(by_iteration, key=lambda f: (f.at_iteration or 0, f.sequence))
        self._on_recovery = on_recovery

    def next_timed(self) -> PlannedFailure | None:
        return self._timed[0] if self._timed else None

    def pop_timed(self) -> PlannedFailure:
        return heapq.heappop(self._timed)

    def next_by_iteration(self) -> PlannedFailure | None:
        return self._by_iteration[0] if self._by_iteration else None

    def pop_by_iteration(self) -> PlannedFailure:
        return self._by_iteration.pop(0)

    def arm_recovery_failures(
        self, schedule_index: int | None, time_s: float, *, software: bool
    ) -> None:
        """Schedule at ``time_s`` the ``during: recovery`` entries that follow
        ``schedule_index`` and are trainer crashes (``software=True``) or lost nodes."""
        if schedule_index is None:
            return
        waiting = self._on_recovery.get(schedule_index, [])
        for failure in [f for f in waiting if (f.kind == "software") == software]:
            heapq.heappush(self._timed, _at(failure, time_s))
            waiting.remove(failure)

    @property
    def time_based_count(self) -> int:
        return len(self._timed)


def _at(failure: PlannedFailure, time_s: float) -> PlannedFailure:
    return PlannedFailure(
        time_s,
        failure.sequence,
        failure.nodes,
        failure.kind,
        failure.label,
        failure.cause,
        failure.at_iteration,
        failure.during,
        failure.schedule_index,
    )


def plan_failures(
    scenario: Scenario, placement: Placement, rng: np.random.Generator, duration_s: float
) -> FailureQueue:
    """All failures of a run (module docstring); ``rng`` is used only for the process."""
    timed: list[PlannedFailure] = []
    by_iteration: list[PlannedFailure] = []
    on_recovery: dict[int, list[PlannedFailure]] = {}
    sequence = 0
    for index, entry in enumerate(scenario.failures.schedule):
        if any(not 0 <= n < placement.nodes for n in entry.nodes):
            continue  # a node that does not exist: skipped, with a warning (shared rules)
        nodes = tuple(sorted(entry.nodes))
        if entry.kind == "group":
            nodes = group_nodes(entry.nodes, placement)
        kind = effect_of(entry.kind)
        failure = PlannedFailure(
            entry.at_time_s or 0.0,
            sequence,
            nodes,
            kind,
            entry.kind,
            "explicit",
            entry.at_iteration,
            entry.during,
            index,
        )
        sequence += 1
        if entry.during == "recovery":
            on_recovery.setdefault(index - 1, []).append(failure)
        elif entry.at_time_s is not None:
            timed.append(failure)
        else:
            by_iteration.append(failure)
    process = scenario.failures.process
    if process is not None:
        cluster = scenario.cluster
        domains = cluster.domain_names()
        domain_rate = process.domain_failures_per_day
        with_domains = domains is not None and domain_rate > 0
        sampled = sample_failures(
            nodes=cluster.nodes,
            duration_s=duration_s,
            rng=rng,
            distribution=process.distribution,
            mtbf_s=process.node_mtbf_s(cluster.nodes),
            weibull_shape=process.weibull_shape,
            hardware_fraction=process.hardware_fraction,
            domains=domains if with_domains else None,
            domain_mtbf_s=SECONDS_PER_DAY / domain_rate if with_domains else None,
        )
        for event in sampled:
            label = "domain" if event.cause.startswith("domain:") else event.kind
            timed.append(
                PlannedFailure(event.time_s, sequence, event.nodes, event.kind, label, event.cause)
            )
            sequence += 1
    return FailureQueue(timed, by_iteration, on_recovery)
