"""Failure models: when which nodes fail, and how.

A failure schedule is a time-ordered tuple of ``FailureEvent``. Each event names the nodes
that fail at one instant (several nodes make a simultaneous failure) and the kind of failure:

* ``"software"``: the training processes die but the node and its CPU memory survive, so the
  node can restore from its own in-memory checkpoint;
* ``"hardware"``: the node is lost with its memory and must be replaced; its state comes from
  a peer's replica or from persistent storage.

Schedules come from two sources:

* ``explicit_failures``: a list written in a scenario, validated and sorted;
* ``sample_failures``: a stochastic model. Every node runs an independent renewal process: it
  starts new at time 0, fails after a random time drawn from an exponential or a Weibull
  distribution with mean ``mtbf_s``, is repaired or replaced by an identical new node at once,
  and so on. Each failure is hardware with probability ``hardware_fraction``. Optionally,
  failure domains (racks, switches, power feeds) fail as a whole: each domain has its own
  exponential process with mean ``domain_mtbf_s``, and each of its failures takes every node
  of the domain down at once, as a hardware failure.

Failure rates are often quoted per cluster or as a share of instances per day ("1.5% of
instances fail per day"); the helpers at the end convert those to a per-node MTBF. For N
independent nodes with exponential lifetimes, the whole job fails N times as often as one
node, which is the MTBF the checkpoint-interval formulas in ``shared.costs`` want.

Randomness comes only from the ``numpy.random.Generator`` passed in: the same seed gives the
same schedule.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy.special import gamma

from shared.checks import require_finite_positive, require_int_at_least
from shared.recovery import FailureKind

"""Software: processes die, the node and its memory survive. Hardware: the node is lost."""

FailureDistribution = Literal["exponential", "weibull"]
"""Distribution of one node's time between failures."""

SECONDS_PER_DAY = 86_400.0

_FAILURE_KINDS: tuple[str, ...] = get_args(FailureKind)
_DISTRIBUTIONS: tuple[str, ...] = get_args(FailureDistribution)

# A guard against schedules that would not fit in memory (an MTBF given in the wrong unit,
# typically): more expected events than this is refused.
_MAX_EXPECTED_EVENTS = 10_000_000


@dataclass(frozen=True, slots=True)
class FailureEvent:
    """One failure instant.

    Attributes:
        time_s: When the nodes fail, seconds from the start of the run, finite and >= 0.
        nodes: Indices of the nodes failing at this instant, ascending and distinct, each
            >= 0; several nodes make a simultaneous failure.
        kind: "software" (processes die, memory survives) or "hardware" (nodes lost).
        cause: Where the event came from: "node" (one node's own failure process),
            "domain:<name>" (a whole failure domain), or "explicit" (a written schedule).
    """

    time_s: float
    nodes: tuple[int, ...]
    kind: FailureKind
    cause: str

    def __post_init__(self) -> None:
        # Kept cheap: sample_failures builds hundreds of thousands of these.
        time_s, nodes = self.time_s, self.nodes
        if not (time_s >= 0 and time_s != math.inf):  # also rejects NaN
            raise ValueError(f"time_s must be a finite number >= 0, got {time_s!r}")
        if not nodes:
            raise ValueError("nodes must name at least one node, got ()")
        previous = -1
        for node in nodes:
            # type() rather than isinstance(): bool is an int subclass, and is not a node.
            if type(node) is not int or node <= previous:
                raise ValueError(f"nodes must be ascending, distinct integers >= 0, got {nodes!r}")
            previous = node
        if self.kind not in _FAILURE_KINDS:
            raise ValueError(f"kind must be one of {list(_FAILURE_KINDS)}, got {self.kind!r}")
        if not self.cause:
            raise ValueError("cause must be a non-empty string, got ''")


def explicit_failures(
    entries: Sequence[tuple[float, Sequence[int], FailureKind]],
    *,
    nodes: int | None = None,
) -> tuple[FailureEvent, ...]:
    """Validate a written failure schedule and sort it by time.

    Args:
        entries: (time_s, nodes, kind) per failure instant: time in seconds (finite, >= 0),
            the distinct node indices failing together (in any order), and the kind.
        nodes: Number of nodes in the cluster, >= 1; when given, every node index must be in
            [0, nodes).

    Returns:
        One event per entry, cause "explicit", nodes ascending, sorted by time; entries
        with equal times keep their order.

    Raises:
        ValueError: If an entry is malformed or out of range; the message names the entry.
    """
    if nodes is not None:
        require_int_at_least("nodes", nodes, 1)
    events: list[FailureEvent] = []
    for index, entry in enumerate(entries):
        where = f"entries[{index}]"
        if len(entry) != 3:
            raise ValueError(f"{where} must be (time_s, nodes, kind), got {entry!r}")
        time_s, entry_nodes, kind = entry
        try:
            node_indices = [operator.index(node) for node in entry_nodes]
        except TypeError as e:
            raise ValueError(f"{where}: nodes must be integers, got {entry_nodes!r}") from e
        if not node_indices:
            raise ValueError(f"{where}: nodes must name at least one node, got {entry_nodes!r}")
        if len(set(node_indices)) != len(node_indices):
            raise ValueError(f"{where}: nodes must be distinct, got {entry_nodes!r}")
        lowest = 0
        highest = math.inf if nodes is None else nodes - 1
        for node in node_indices:
            if not lowest <= node <= highest:
                allowed = ">= 0" if nodes is None else f"in [0, {nodes - 1}]"
                raise ValueError(f"{where}: node index must be {allowed}, got {node}")
        try:
            time_value = float(time_s)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: time_s must be a number, got {time_s!r}") from e
        if not math.isfinite(time_value) or time_value < 0:
            raise ValueError(f"{where}: time_s must be a finite number >= 0, got {time_s!r}")
        if kind not in _FAILURE_KINDS:
            raise ValueError(f"{where}: kind must be one of {list(_FAILURE_KINDS)}, got {kind!r}")
        events.append(FailureEvent(time_value, tuple(sorted(node_indices)), kind, "explicit"))
    # sorted() is stable: simultaneous entries keep the order they were written in.
    return tuple(sorted(events, key=lambda event: event.time_s))


def sample_failures(
    *,
    nodes: int,
    duration_s: float,
    rng: np.random.Generator,
    distribution: FailureDistribution = "exponential",
    mtbf_s: float,
    weibull_shape: float = 1.0,
    hardware_fraction: float = 0.5,
    domains: Sequence[str] | None = None,
    domain_mtbf_s: float | None = None,
) -> tuple[FailureEvent, ...]:
    """Draw a failure schedule from per-node renewal processes and domain failures.

    Args:
        nodes: Number of nodes (N), >= 1; nodes are numbered 0 .. N-1.
        duration_s: Length of the schedule, seconds, > 0; events lie in [0, duration_s).
        rng: Source of randomness; the only one used.
        distribution: Time between one node's failures: "exponential", or "weibull" with
            shape ``weibull_shape`` and its scale chosen so that the mean is ``mtbf_s``.
        mtbf_s: Mean time between failures of ONE node, seconds, > 0.
        weibull_shape: Weibull shape k, > 0 (k < 1: infant mortality, k > 1: wear-out);
            must stay 1.0 with the exponential distribution.
        hardware_fraction: Probability that a node failure is hardware, in [0, 1].
        domains: Failure-domain name of each node (length N), or None for no domains.
        domain_mtbf_s: Mean time between failures of each domain, seconds, > 0; required
            with ``domains`` and only allowed with it.

    Returns:
        Events sorted by time. A node's own failure gives an event with that one node and
        cause "node"; a domain failure gives one hardware event with all the domain's nodes
        and cause "domain:<name>".

    Raises:
        ValueError: If an argument is out of range, or the schedule would hold more than
            ten million expected events.
    """
    require_int_at_least("nodes", nodes, 1)
    require_finite_positive("duration_s", duration_s)
    require_finite_positive("mtbf_s", mtbf_s)
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(
            f"distribution must be one of {list(_DISTRIBUTIONS)}, got {distribution!r}"
        )
    require_finite_positive("weibull_shape", weibull_shape)
    if distribution == "exponential" and weibull_shape != 1.0:
        raise ValueError(
            f"weibull_shape must be 1.0 with distribution='exponential' (use "
            f"distribution='weibull' for another shape), got {weibull_shape!r}"
        )
    if not 0 <= hardware_fraction <= 1:
        raise ValueError(f"hardware_fraction must be in [0, 1], got {hardware_fraction!r}")
    if (domains is None) != (domain_mtbf_s is None):
        raise ValueError(
            "domains and domain_mtbf_s must be given together (both or neither), got "
            f"domains={'None' if domains is None else 'a sequence'}, "
            f"domain_mtbf_s={domain_mtbf_s!r}"
        )
    domain_names: list[str] = []
    domain_members: list[tuple[int, ...]] = []
    if domains is not None and domain_mtbf_s is not None:
        if isinstance(domains, str) or len(domains) != nodes:
            raise ValueError(
                f"domains must hold one domain name per node ({nodes} names), got {domains!r}"
            )
        require_finite_positive("domain_mtbf_s", domain_mtbf_s)
        members: dict[str, list[int]] = {}
        for node, name in enumerate(domains):
            members.setdefault(name, []).append(node)  # dicts keep first-appearance order
        domain_names = list(members)
        domain_members = [tuple(member_nodes) for member_nodes in members.values()]
    expected_events = nodes * duration_s / mtbf_s
    if domain_mtbf_s is not None:
        expected_events += len(domain_names) * duration_s / domain_mtbf_s
    if expected_events > _MAX_EXPECTED_EVENTS:
        raise ValueError(
            f"mtbf_s (or domain_mtbf_s) is too short for duration_s: about "
            f"{expected_events:.3g} failures expected, at most {_MAX_EXPECTED_EVENTS} allowed; "
            f"check that the MTBF is per node and in seconds"
        )

    # Draw order is fixed (node times, then kinds, then domain times): the seed decides all.
    if distribution == "exponential":

        def draw_node_gaps(shape: tuple[int, int]) -> npt.NDArray[np.float64]:
            return rng.exponential(mtbf_s, size=shape)

    else:
        # Weibull(k, lambda) has mean lambda * Gamma(1 + 1/k); pick lambda for mean mtbf_s.
        scale_s = mtbf_s / float(gamma(1 + 1 / weibull_shape))
        if not scale_s > 0:  # Gamma(1 + 1/k) overflows for k below about 0.006
            raise ValueError(f"weibull_shape must be >= 0.01, got {weibull_shape!r}")

        def draw_node_gaps(shape: tuple[int, int]) -> npt.NDArray[np.float64]:
            return scale_s * rng.weibull(weibull_shape, size=shape)

    node_ids, node_times = _renewal_times(nodes, duration_s, mtbf_s, draw_node_gaps)
    is_hardware = rng.random(node_times.size) < hardware_fraction

    domain_ids = np.empty(0, dtype=np.int64)
    domain_times = np.empty(0, dtype=np.float64)
    if domain_mtbf_s is not None and domain_names:
        domain_mean_s = domain_mtbf_s

        def draw_domain_gaps(shape: tuple[int, int]) -> npt.NDArray[np.float64]:
            return rng.exponential(domain_mean_s, size=shape)

        domain_ids, domain_times = _renewal_times(
            len(domain_names), duration_s, domain_mean_s, draw_domain_gaps
        )

    # Sort once in numpy, then build the events in order. Node events come first in the
    # concatenation and the sort is stable, so a (probability-zero) tie keeps them first.
    times_s = np.concatenate([node_times, domain_times])
    order = np.argsort(times_s, kind="stable").tolist()
    node_count = node_times.size
    node_list = node_ids.tolist()
    time_list = times_s.tolist()
    hardware_list = is_hardware.tolist()
    domain_list = domain_ids.tolist()
    domain_causes = [f"domain:{name}" for name in domain_names]
    events: list[FailureEvent] = []
    for index in order:
        if index < node_count:
            kind: FailureKind = "hardware" if hardware_list[index] else "software"
            events.append(FailureEvent(time_list[index], (node_list[index],), kind, "node"))
        else:
            domain = domain_list[index - node_count]
            events.append(
                FailureEvent(
                    time_list[index], domain_members[domain], "hardware", domain_causes[domain]
                )
            )
    return tuple(events)


def _renewal_times(
    processes: int,
    duration_s: float,
    mean_s: float,
    draw_gaps: Callable[[tuple[int, int]], npt.NDArray[np.float64]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Event times in [0, duration_s) of independent renewal processes started at 0.

    Draws a block of gaps for every process still short of the horizon, and repeats for those
    whose block ran out first; the block is sized so that one usually suffices.

    Returns:
        (process index, time in seconds) of every event, grouped by process, each group in
        time order.
    """
    expected = duration_s / mean_s
    block = max(4, math.ceil(expected + 4 * math.sqrt(expected) + 4))
    active = np.arange(processes, dtype=np.int64)
    offsets_s = np.zeros(processes, dtype=np.float64)
    ids: list[npt.NDArray[np.int64]] = []
    times: list[npt.NDArray[np.float64]] = []
    while active.size:
        event_times_s = offsets_s[:, None] + np.cumsum(draw_gaps((active.size, block)), axis=1)
        inside = event_times_s < duration_s
        rows, _ = np.nonzero(inside)
        ids.append(active[rows])
        times.append(event_times_s[inside])
        unfinished = inside[:, -1]
        offsets_s = event_times_s[unfinished, -1]
        active = active[unfinished]
    all_ids = np.concatenate(ids)
    all_times = np.concatenate(times)
    # Later blocks append after earlier ones; regroup by process, keeping time order.
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], all_times[order]


# --- Rate conversions -------------------------------------------------------------------------


def failures_per_day_to_mtbf_s(failures_per_day: float, nodes: int) -> float:
    """Per-node MTBF from the expected failures per day of a whole cluster.

    Args:
        failures_per_day: Expected failures per day across the cluster, > 0.
        nodes: Nodes in the cluster, >= 1.

    Returns:
        Mean time between failures of one node, seconds.

    Raises:
        ValueError: If an argument is out of range.
    """
    require_finite_positive("failures_per_day", failures_per_day)
    require_int_at_least("nodes", nodes, 1)
    return nodes * SECONDS_PER_DAY / failures_per_day


def mtbf_s_to_failures_per_day(mtbf_s: float, nodes: int) -> float:
    """Expected failures per day of a cluster of nodes with the given per-node MTBF.

    Args:
        mtbf_s: Mean time between failures of one node, seconds, > 0.
        nodes: Nodes in the cluster, >= 1.

    Returns:
        Expected failures per day across the cluster.

    Raises:
        ValueError: If an argument is out of range.
    """
    require_finite_positive("mtbf_s", mtbf_s)
    require_int_at_least("nodes", nodes, 1)
    return nodes * SECONDS_PER_DAY / mtbf_s


def daily_failure_fraction_to_mtbf_s(fraction_per_day: float) -> float:
    """Per-node MTBF from the share of instances that fail per day ("1.5% per day").

    The share is read as expected failures per node per day (0.015 for 1.5%), so the
    cluster sees fraction * N failures a day; for small shares this equals the probability
    that a node fails within a day, to first order.

    Args:
        fraction_per_day: Share of instances failing per day, in (0, 1].

    Returns:
        Mean time between failures of one node, seconds.

    Raises:
        ValueError: If the fraction is out of range.
    """
    if not math.isfinite(fraction_per_day) or not 0 < fraction_per_day <= 1:
        raise ValueError(f"fraction_per_day must be in (0, 1], got {fraction_per_day!r}")
    return SECONDS_PER_DAY / fraction_per_day


def mtbf_s_to_daily_failure_fraction(mtbf_s: float) -> float:
    """Expected failures per node per day (the share of instances failing daily).

    Args:
        mtbf_s: Mean time between failures of one node, seconds, > 0.

    Returns:
        Expected failures per node per day.

    Raises:
        ValueError: If the MTBF is out of range.
    """
    require_finite_positive("mtbf_s", mtbf_s)
    return SECONDS_PER_DAY / mtbf_s


def cluster_mtbf_s(node_mtbf_s: float, nodes: int) -> float:
    """Mean time between failures of a job that stops when any of its nodes fails.

    Exact for independent exponential nodes (the first of N failures comes N times sooner);
    for other distributions, the long-run mean of the merged renewal processes.

    Args:
        node_mtbf_s: Mean time between failures of one node, seconds, > 0.
        nodes: Nodes in the job, >= 1.

    Returns:
        Mean time between failures of the job, seconds.

    Raises:
        ValueError: If an argument is out of range.
    """
    require_finite_positive("node_mtbf_s", node_mtbf_s)
    require_int_at_least("nodes", nodes, 1)
    return node_mtbf_s / nodes
