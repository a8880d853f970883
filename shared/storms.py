"""Failure storms: when failures arrive faster than a job can recover from them.

A stochastic failure process fails the whole job at rate
``lambda = N / node_MTBF`` (plus whole domains). Every recovery takes at least
``R = detection + restart + retrieval overhead`` (and a failure needs one more iteration
after it to make progress, when the iteration time is given). With Poisson failures, a
recovery finishes before the next failure with probability ``exp(-lambda R)``, which is also
about the best effective training time ratio the job can reach. Of the ``M = lambda D``
failures of a simulated duration ``D``, ``M exp(-lambda R)`` are expected to be followed by a
finished recovery. When failures arrive faster than recoveries finish (``lambda R > 1``) and
that is below one, training is expected to make no progress at all and the scenario is refused
(typically a rate in the wrong unit); otherwise it is accepted with a warning, and
the simulator stops a run as soon as ``stall_failure_limit`` failures in a row have struck
without any training progress between them.

These are pure functions of the scenario: ``shared.scenario_rules`` turns them into findings
(an error or a warning) and ``sim.simulation`` uses ``stall_failure_limit`` for its guard.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.scenario import Scenario

SECONDS_PER_DAY = 86_400.0

STALL_FALSE_ALARM = 0.01
"""Chance, accepted over a whole run, that a run whose recoveries keep up with its failures is
stopped as a storm anyway (see ``stall_failure_limit``)."""


def job_failure_rate_per_s(scenario: Scenario) -> float:
    """Failures of the whole job per second from ``failures.process`` (0 without one)."""
    process = scenario.failures.process
    if process is None:
        return 0.0
    cluster = scenario.cluster
    rate = cluster.nodes / process.node_mtbf_s(cluster.nodes)
    domains = cluster.domain_names()
    if domains is not None:
        rate += len(set(domains)) * process.domain_failures_per_day / SECONDS_PER_DAY
    return rate


def expected_process_failures(scenario: Scenario) -> float:
    """Failures the process is expected to cause in the simulated duration."""
    return job_failure_rate_per_s(scenario) * scenario.sim.duration_days * SECONDS_PER_DAY


def fastest_recovery_s(scenario: Scenario) -> tuple[float, str]:
    """A lower bound on the time from a failure to the first training progress after it.

    Every recovery detects the failure, restarts the ranks and pays the fixed cost of a restore;
    training then needs one iteration (when the iteration time is given) to make progress.
    Detection is a trainer's exit report when the process can produce software failures, else
    the root's probe of the agents (``detection.lost_node: probe``) or the earliest a heartbeat
    lease can run out.

    Returns:
        (seconds, how the bound is made up, for messages).
    """
    detection, recovery = scenario.detection, scenario.recovery
    process = scenario.failures.process
    software = process is None or process.hardware_fraction < 1
    if software:
        detect_s, detect = detection.exit_report_s, "exit report"
    elif detection.lost_node == "probe":
        # At the soonest the survivors are already inside a collective as the node goes.
        detect_s = detection.collective_failure_s + detection.probe_detection_s
        detect = "probe"
    else:
        detect_s = detection.lease_timeout_s - detection.heartbeat_interval_s
        detect = "lease"
    parts = [
        (detect_s, f"detection ({detect}) {detect_s:g} s"),
        (recovery.restart_s, f"restart {recovery.restart_s:g} s"),
        (recovery.retrieval_overhead_s, f"retrieval overhead {recovery.retrieval_overhead_s:g} s"),
    ]
    iteration_s = _given_iteration_s(scenario)
    if iteration_s is not None:
        parts.append((iteration_s, f"one iteration {iteration_s:g} s"))
    total = sum(seconds for seconds, _ in parts)
    return total, " + ".join(text for seconds, text in parts if seconds > 0) or "0 s"


def _given_iteration_s(scenario: Scenario) -> float | None:
    training = scenario.training
    if training.phases is not None:
        return sum(p.duration_s for p in training.phases)
    return training.iteration_time_s


def stall_failure_limit(expected_failures: float, scheduled: int) -> int:
    """Failures in a row without training progress after which a simulation stops.

    A run whose recoveries keep up with its failures (``lambda R <= 1``: on average a failure
    comes no sooner than one recovery after the previous one) sees a failure strike before
    progress with probability at most ``1 - 1/e``; ``k`` such failures in a row happen
    somewhere among its ``M`` failures with probability at most ``M (1 - 1/e)^k``. The limit is
    the smallest ``k`` that keeps this below ``STALL_FALSE_ALARM``, and never below the
    scheduled failures plus one (an explicit schedule may chain failures on purpose).

    Args:
        expected_failures: ``M``, the failures the run expects (process and schedule).
        scheduled: entries of the explicit schedule.
    """
    interrupted = 1 - math.exp(-1)
    failures = max(1.0, expected_failures)
    k = math.ceil(math.log(failures / STALL_FALSE_ALARM) / -math.log(interrupted))
    return max(k, scheduled + 1, 2)
