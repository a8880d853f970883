"""Unit tests for shared.failures: schedules, their statistics, and their range checks.

Statistical checks use a fixed seed and a tolerance of several standard errors derived from
the model, so they are not tuned to the seed: any seed passes with overwhelming probability.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from scipy.special import gamma

from shared.failures import (
    SECONDS_PER_DAY,
    FailureEvent,
    cluster_mtbf_s,
    daily_failure_fraction_to_mtbf_s,
    explicit_failures,
    failures_per_day_to_mtbf_s,
    mtbf_s_to_daily_failure_fraction,
    mtbf_s_to_failures_per_day,
    sample_failures,
)
from shared.recovery import FailureKind

DAY_S = 86_400.0


def _sample(seed: int = 0, **overrides: Any) -> tuple[FailureEvent, ...]:
    keywords: dict[str, Any] = {
        "nodes": 1000,
        "duration_s": 30 * DAY_S,
        "mtbf_s": 10 * DAY_S,
    }
    keywords.update(overrides)
    return sample_failures(rng=np.random.default_rng(seed), **keywords)


# --- FailureEvent ---------------------------------------------------------------------------


def test_failure_event_accepts_a_simultaneous_failure() -> None:
    event = FailureEvent(1.5, (0, 3, 7), "hardware", "explicit")
    assert event.nodes == (0, 3, 7)


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ((-1.0, (0,), "hardware", "node"), "time_s"),
        ((math.nan, (0,), "hardware", "node"), "time_s"),
        ((math.inf, (0,), "hardware", "node"), "time_s"),
        ((0.0, (), "hardware", "node"), "nodes"),
        ((0.0, (3, 1), "hardware", "node"), "nodes"),
        ((0.0, (1, 1), "hardware", "node"), "nodes"),
        ((0.0, (-1,), "hardware", "node"), "nodes"),
        ((0.0, (True,), "hardware", "node"), "nodes"),
        ((0.0, (0,), "network", "node"), "kind"),
        ((0.0, (0,), "software", ""), "cause"),
    ],
)
def test_failure_event_rejects_bad_fields(arguments: tuple[Any, ...], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        FailureEvent(*arguments)


# --- Explicit schedules ---------------------------------------------------------------------


def test_explicit_failures_are_sorted_and_normalised() -> None:
    events = explicit_failures(
        [(30.0, [2], "software"), (10.0, [3, 1], "hardware"), (10, (0,), "software")], nodes=4
    )
    assert events == (
        FailureEvent(10.0, (1, 3), "hardware", "explicit"),
        FailureEvent(10.0, (0,), "software", "explicit"),
        FailureEvent(30.0, (2,), "software", "explicit"),
    )


def test_explicit_failures_accept_numpy_integers() -> None:
    (event,) = explicit_failures([(1.0, np.array([2, 0]), "hardware")])  # type: ignore[list-item]
    assert event.nodes == (0, 2)
    assert all(type(node) is int for node in event.nodes)


def test_explicit_failures_of_nothing_is_empty() -> None:
    assert explicit_failures([]) == ()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ((-1.0, [0], "software"), r"entries\[1\]: time_s must be a finite number >= 0"),
        ((math.nan, [0], "software"), r"entries\[1\]: time_s"),
        ((1.0, [4], "software"), r"entries\[1\]: node index must be in \[0, 3\], got 4"),
        ((1.0, [-1], "software"), r"entries\[1\]: node index must be in \[0, 3\]"),
        ((1.0, [], "software"), r"entries\[1\]: nodes must name at least one node"),
        ((1.0, [1, 1], "software"), r"entries\[1\]: nodes must be distinct"),
        ((1.0, [1.5], "software"), r"entries\[1\]: nodes must be integers"),
        ((1.0, [1], "crash"), r"entries\[1\]: kind must be one of \['software', 'hardware'\]"),
        ((1.0, [1]), r"entries\[1\] must be \(time_s, nodes, kind\)"),
    ],
)
def test_explicit_failures_name_the_bad_entry(entry: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        explicit_failures([(0.0, [0], "hardware"), entry], nodes=4)


def test_explicit_failures_without_a_node_count_only_reject_negative_nodes() -> None:
    assert explicit_failures([(0.0, [10_000], "hardware")])[0].nodes == (10_000,)
    with pytest.raises(ValueError, match=r"node index must be >= 0"):
        explicit_failures([(0.0, [-1], "hardware")])
    with pytest.raises(ValueError, match="nodes must be an integer >= 1"):
        explicit_failures([], nodes=0)


_entries = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=1e9, allow_nan=False),
        st.sets(st.integers(min_value=0, max_value=63), min_size=1, max_size=8).map(list),
        st.sampled_from(["software", "hardware"]),
    ),
    max_size=30,
)


@given(_entries)
def test_explicit_failures_keep_every_entry_in_time_order(
    entries: list[tuple[float, list[int], FailureKind]],
) -> None:
    events = explicit_failures(entries, nodes=64)
    assert [event.time_s for event in events] == sorted(time_s for time_s, _, _ in entries)
    assert Counter((e.time_s, e.nodes, e.kind) for e in events) == Counter(
        (time_s, tuple(sorted(nodes)), kind) for time_s, nodes, kind in entries
    )


# --- Sampled schedules: shape and determinism ------------------------------------------------


def test_same_seed_same_schedule_and_different_seed_different_schedule() -> None:
    domains = [f"rack{node // 50}" for node in range(1000)]
    keywords: dict[str, Any] = {
        "distribution": "weibull",
        "weibull_shape": 0.8,
        "domains": domains,
        "domain_mtbf_s": 20 * DAY_S,
    }
    first = _sample(seed=7, **keywords)
    assert first == _sample(seed=7, **keywords)
    assert first != _sample(seed=8, **keywords)


def test_events_lie_in_the_window_and_are_sorted() -> None:
    duration_s = 5 * DAY_S
    events = _sample(
        duration_s=duration_s,
        mtbf_s=DAY_S,
        domains=[str(node % 7) for node in range(1000)],
        domain_mtbf_s=DAY_S,
    )
    times = [event.time_s for event in events]
    assert times == sorted(times)
    assert times[0] >= 0 and times[-1] < duration_s
    assert all(event.nodes[0] >= 0 and event.nodes[-1] < 1000 for event in events)


def test_node_events_name_one_node_and_cause_node() -> None:
    events = _sample(nodes=50, mtbf_s=DAY_S)
    assert events
    assert {event.cause for event in events} == {"node"}
    assert all(len(event.nodes) == 1 for event in events)
    assert {event.nodes[0] for event in events} == set(range(50))  # 30 failures each expected


def test_a_schedule_shorter_than_any_failure_can_be_empty() -> None:
    assert _sample(nodes=3, duration_s=1.0, mtbf_s=1e12) == ()


# --- Sampled schedules: statistics ------------------------------------------------------------


def test_exponential_rate_matches_the_mtbf() -> None:
    nodes, duration_s, mtbf_s = 1000, 30 * DAY_S, 10 * DAY_S
    count = len(_sample(nodes=nodes, duration_s=duration_s, mtbf_s=mtbf_s))
    expected = nodes * duration_s / mtbf_s  # 3000; Poisson, standard deviation ~55
    assert abs(count - expected) < 5 * math.sqrt(expected)


def test_paper_failure_rate_at_1000_instances() -> None:
    # docs/design.md section 7: 1.5% of instances fail per day.
    mtbf_s = daily_failure_fraction_to_mtbf_s(0.015)
    count = len(_sample(nodes=1000, duration_s=30 * DAY_S, mtbf_s=mtbf_s))
    expected = 0.015 * 1000 * 30  # 450
    assert abs(count - expected) < 5 * math.sqrt(expected)


@pytest.mark.parametrize("shape", [0.7, 1.0, 2.0])
def test_weibull_times_between_failures_have_the_mtbf_as_mean_and_the_right_shape(
    shape: float,
) -> None:
    nodes, duration_s, mtbf_s = 500, 100 * DAY_S, DAY_S
    # Long enough that no node is still waiting for its first failure (P < 1e-20).
    events = _sample(
        nodes=nodes,
        duration_s=duration_s,
        mtbf_s=mtbf_s,
        distribution="weibull",
        weibull_shape=shape,
    )
    times_by_node: dict[int, list[float]] = {}
    for event in events:
        times_by_node.setdefault(event.nodes[0], []).append(event.time_s)
    assert len(times_by_node) == nodes

    # Each node starts new at 0, so its first failure time is one exact Weibull draw.
    first_failures = np.array([times[0] for times in times_by_node.values()])
    scale_s = mtbf_s / gamma(1 + 1 / shape)
    assert stats.kstest(first_failures, stats.weibull_min(shape, scale=scale_s).cdf).pvalue > 1e-3

    # Renewal theory: a node sees duration/mtbf failures, plus (CV^2 - 1)/2 from starting
    # new, with variance CV^2 * duration/mtbf. (The mean of the observed gaps would be biased
    # low: the gap cut off by the end of the window, longer on average, is never seen.)
    coefficient_of_variation = math.sqrt(gamma(1 + 2 / shape) / gamma(1 + 1 / shape) ** 2 - 1)
    expected = nodes * duration_s / mtbf_s
    start_effect = nodes * abs(coefficient_of_variation**2 - 1) / 2
    standard_deviation = coefficient_of_variation * math.sqrt(expected)
    assert abs(len(events) - expected) < 5 * standard_deviation + start_effect

    gaps = np.concatenate([np.diff(np.array([0.0, *times])) for times in times_by_node.values()])
    assert np.std(gaps) / gaps.mean() == pytest.approx(coefficient_of_variation, rel=0.1)


@pytest.mark.parametrize("hardware_fraction", [0.0, 0.3, 1.0])
def test_hardware_fraction(hardware_fraction: float) -> None:
    events = _sample(hardware_fraction=hardware_fraction)
    hardware = sum(event.kind == "hardware" for event in events)
    standard_error = math.sqrt(hardware_fraction * (1 - hardware_fraction) / len(events))
    assert abs(hardware / len(events) - hardware_fraction) <= 5 * standard_error


def test_domain_failures_take_down_every_node_of_the_domain() -> None:
    # Interleaved members: domain "r0" holds the even nodes, "r1" the odd ones.
    domains = ["r0", "r1"] * 8
    events = _sample(
        nodes=16,
        duration_s=100 * DAY_S,
        mtbf_s=1e15,  # no node failures of their own
        domains=domains,
        domain_mtbf_s=DAY_S,
    )
    by_cause = Counter(event.cause for event in events)
    assert set(by_cause) == {"domain:r0", "domain:r1"}
    for event in events:
        assert event.kind == "hardware"
        expected_nodes = (
            tuple(range(0, 16, 2)) if event.cause == "domain:r0" else tuple(range(1, 16, 2))
        )
        assert event.nodes == expected_nodes
    for count in by_cause.values():  # 100 expected per domain
        assert abs(count - 100) < 5 * math.sqrt(100)


def test_domain_failures_come_on_top_of_node_failures() -> None:
    nodes = 1000
    events = _sample(
        nodes=nodes,
        domains=[f"rack{node // 40}" for node in range(nodes)],
        domain_mtbf_s=10 * DAY_S,
        hardware_fraction=0.0,
    )
    node_events = [event for event in events if event.cause == "node"]
    domain_events = [event for event in events if event.cause.startswith("domain:")]
    assert all(event.kind == "software" for event in node_events)
    assert all(len(event.nodes) == 40 for event in domain_events)
    assert abs(len(node_events) - 3000) < 5 * math.sqrt(3000)
    assert abs(len(domain_events) - 75) < 5 * math.sqrt(75)  # 25 racks, 3 failures each


# --- Sampled schedules: range checks ----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nodes": 0}, "nodes must be an integer >= 1"),
        ({"duration_s": 0.0}, "duration_s must be a finite number > 0"),
        ({"mtbf_s": -1.0}, "mtbf_s must be a finite number > 0"),
        ({"distribution": "lognormal"}, "distribution must be one of"),
        ({"weibull_shape": 2.0}, "weibull_shape must be 1.0 with distribution='exponential'"),
        ({"distribution": "weibull", "weibull_shape": 0.0}, "weibull_shape must be"),
        ({"distribution": "weibull", "weibull_shape": 0.001}, "weibull_shape must be >= 0.01"),
        ({"hardware_fraction": 1.5}, r"hardware_fraction must be in \[0, 1\]"),
        ({"domains": ["a"] * 1000}, "domains and domain_mtbf_s must be given together"),
        ({"domain_mtbf_s": DAY_S}, "domains and domain_mtbf_s must be given together"),
        ({"domains": ["a"] * 999, "domain_mtbf_s": DAY_S}, "one domain name per node"),
        ({"domains": ["a"] * 1000, "domain_mtbf_s": 0.0}, "domain_mtbf_s must be"),
        ({"mtbf_s": 1.0}, "mtbf_s .* too short"),
    ],
)
def test_sample_failures_rejects_out_of_range_arguments(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _sample(**overrides)


# --- Rate conversions -------------------------------------------------------------------------


def test_one_and_a_half_percent_a_day_is_a_node_mtbf_of_about_67_days() -> None:
    mtbf_s = daily_failure_fraction_to_mtbf_s(0.015)
    assert mtbf_s == pytest.approx(86_400 / 0.015)  # 5,760,000 s
    assert mtbf_s == pytest.approx(failures_per_day_to_mtbf_s(15.0, 1000))
    assert mtbf_s_to_daily_failure_fraction(mtbf_s) == pytest.approx(0.015)
    assert mtbf_s_to_failures_per_day(mtbf_s, 1000) == pytest.approx(15.0)
    # The job of 1000 such nodes fails every 96 minutes.
    assert cluster_mtbf_s(mtbf_s, 1000) == pytest.approx(5760.0)
    assert SECONDS_PER_DAY == DAY_S


def test_conversions_reject_out_of_range_arguments() -> None:
    with pytest.raises(ValueError, match="failures_per_day"):
        failures_per_day_to_mtbf_s(0.0, 10)
    with pytest.raises(ValueError, match="nodes"):
        failures_per_day_to_mtbf_s(1.0, 0)
    with pytest.raises(ValueError, match=r"fraction_per_day must be in \(0, 1\]"):
        daily_failure_fraction_to_mtbf_s(1.5)
    with pytest.raises(ValueError, match="mtbf_s"):
        mtbf_s_to_failures_per_day(0.0, 10)
    with pytest.raises(ValueError, match="mtbf_s"):
        mtbf_s_to_daily_failure_fraction(-1.0)
    with pytest.raises(ValueError, match="node_mtbf_s"):
        cluster_mtbf_s(math.inf, 10)
