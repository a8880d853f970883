"""Recovery probability: paper reference values, enumeration vs counting, Monte Carlo, errors."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.placement import Placement, Strategy, plan_placement
from shared.probability import (
    count_surviving_subsets,
    counting_probability,
    enumerate_probability,
    enumerate_surviving_subsets,
    monte_carlo_probability,
    paper_closed_form,
    recovery_probability,
)

# --- reference values (docs/design.md section 3)
# --------------------------------------------------------

REFERENCE = [
    ("group", 2, 0.9333),
    ("group", 3, 0.8000),
    ("group", 4, 0.6154),
    ("ring", 2, 0.8667),
    ("ring", 3, 0.6286),
]


@pytest.mark.parametrize(("strategy", "failures", "expected"), REFERENCE)
def test_reference_values_n16_m2(strategy: str, failures: int, expected: float) -> None:
    placement = plan_placement(16, 2, strategy)  # type: ignore[arg-type]
    assert round(enumerate_probability(placement, failures), 4) == expected
    assert round(counting_probability(placement, failures), 4) == expected


def test_reference_values_as_fractions() -> None:
    group, ring = plan_placement(16, 2, "group"), plan_placement(16, 2, "ring")
    assert Fraction(count_surviving_subsets(group, 4), math.comb(16, 4)) == Fraction(8, 13)
    assert Fraction(count_surviving_subsets(ring, 2), math.comb(16, 2)) == Fraction(13, 15)


def test_paper_closed_form_reference() -> None:
    assert paper_closed_form(16, 2, 1) == 1.0
    assert paper_closed_form(16, 2, 2) == pytest.approx(14 / 15)
    assert paper_closed_form(16, 2, 3) == pytest.approx(0.8)
    assert paper_closed_form(16, 2, 4) == pytest.approx(0.6)  # below the exact 0.6154
    assert paper_closed_form(4, 2, 4) == 0.0  # 1 - 4*1/(2*1) < 0, clipped


# --- enumeration == counting, exactly -----------------------------------------------------------


def small_placements(nodes: int) -> list[Placement]:
    placements = []
    for replicas in range(1, nodes + 1):
        for strategy in ("group", "ring", "mixed"):
            if strategy == "group" and nodes % replicas:
                continue
            placements.append(plan_placement(nodes, replicas, strategy))
            for domains in (
                [f"r{i * 3 // nodes}" for i in range(nodes)],  # three contiguous racks
                [f"r{i // 2}" for i in range(nodes)],  # racks of two
            ):
                placements.append(plan_placement(nodes, replicas, strategy, domains=domains))
    return placements


@pytest.mark.parametrize("nodes", range(1, 13))
def test_enumeration_equals_counting(nodes: int) -> None:
    relabelled = 0
    for placement in small_placements(nodes):
        relabelled += (
            placement.groups
            != plan_placement(
                nodes,
                placement.replicas,
                placement.strategy,  # type: ignore[arg-type]
            ).groups
        )
        for failures in range(nodes + 1):
            expected = enumerate_surviving_subsets(placement, failures)
            assert count_surviving_subsets(placement, failures) == expected, (
                placement.strategy,
                placement.replicas,
                placement.groups,
                failures,
            )
    if nodes >= 4:
        assert relabelled  # the domain-aware variants were really exercised


@given(st.integers(1, 12), st.data())
@settings(max_examples=60, deadline=None)
def test_counting_matches_enumeration_for_random_domains(nodes: int, data: st.DataObject) -> None:
    replicas = data.draw(st.integers(1, nodes))
    strategy: Strategy = data.draw(st.sampled_from(["ring", "mixed", "auto"]))
    domains = data.draw(st.lists(st.sampled_from("abcd"), min_size=nodes, max_size=nodes))
    placement = plan_placement(nodes, replicas, strategy, domains=domains)
    failures = data.draw(st.integers(0, nodes))
    assert count_surviving_subsets(placement, failures) == enumerate_surviving_subsets(
        placement, failures
    )


def test_counting_handles_several_rings_built_by_hand() -> None:
    rings = ((0, 1, 2), (3, 4, 5), (6, 7, 8, 9))
    holders: list[tuple[int, ...]] = [()] * 10
    for ring in rings:
        for p, node in enumerate(ring):
            holders[node] = (node, ring[(p + 1) % len(ring)])
    placement = Placement(10, 2, "ring", tuple(holders), rings)
    for failures in range(11):
        assert count_surviving_subsets(placement, failures) == enumerate_surviving_subsets(
            placement, failures
        )


def test_edge_failure_counts() -> None:
    placement = plan_placement(6, 2, "ring")
    assert counting_probability(placement, 0) == enumerate_probability(placement, 0) == 1.0
    assert counting_probability(placement, 6) == enumerate_probability(placement, 6) == 0.0
    alone = plan_placement(6, 1)
    assert counting_probability(alone, 1) == 0.0


# --- large N -----------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [1000, 10_000])
@pytest.mark.parametrize("replicas", [2, 4, 5])
def test_counting_large_group_agrees_with_closed_form(nodes: int, replicas: int) -> None:
    placement = plan_placement(nodes, replicas, "group")
    for failures in range(replicas, 2 * replicas):  # where the paper's expression is exact
        assert counting_probability(placement, failures) == pytest.approx(
            paper_closed_form(nodes, replicas, failures), rel=1e-12, abs=1e-15
        )
    for failures in (2 * replicas, 3 * replicas + 1, 200):  # beyond, only a lower bound
        assert paper_closed_form(nodes, replicas, failures) <= counting_probability(
            placement, failures
        )
        # Strictly below in exact arithmetic: the bound counts twice the sets losing two groups.
        union_bound = math.comb(nodes, failures) - nodes // replicas * math.comb(
            nodes - replicas, failures - replicas
        )
        assert union_bound < count_surviving_subsets(placement, failures)


def test_counting_large_ring_and_mixed() -> None:
    for nodes in (1000, 10_001):
        mixed = counting_probability(plan_placement(nodes, 3, "mixed"), 300)
        ring = counting_probability(plan_placement(nodes, 3, "ring"), 300)
        assert 0 < ring < mixed < 1  # a ring loses more ways than groups do
    # Cross-check the cycle formula at large N against sampling.
    placement = plan_placement(1000, 2, "ring")
    exact = counting_probability(placement, 20)
    estimate = monte_carlo_probability(
        placement, 20, trials=20_000, rng=np.random.default_rng(7), confidence=0.999
    )
    assert estimate.ci_low <= exact <= estimate.ci_high


def test_recovery_probability_picks_counting_for_large_n() -> None:
    result = recovery_probability(plan_placement(10_000, 2, "group"), 50)
    assert result.method == "exact-counting"
    assert result.ci_low == result.probability == result.ci_high
    assert result.trials is None
    assert result.closed_form is not None and result.closed_form < result.probability
    assert result.closed_form_exact is False


# --- Monte Carlo --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "placement",
    [
        plan_placement(16, 2, "group"),
        plan_placement(16, 2, "ring"),
        plan_placement(17, 3, "mixed"),
        plan_placement(6, 2, "explicit", explicit=[[1], [2], [0], [4], [5], [3]]),
    ],
    ids=["group", "ring", "mixed", "explicit"],
)
def test_monte_carlo_interval_contains_exact(placement: Placement) -> None:
    exact = enumerate_probability(placement, 4)
    result = monte_carlo_probability(placement, 4, trials=40_000, rng=np.random.default_rng(2023))
    assert result.method == "monte-carlo" and result.trials == 40_000
    assert result.ci_low <= exact <= result.ci_high
    assert result.ci_low <= result.probability <= result.ci_high
    assert result.ci_high - result.ci_low < 0.02


def test_monte_carlo_is_reproducible_with_a_seed() -> None:
    placement = plan_placement(16, 2)
    first = monte_carlo_probability(placement, 3, trials=1000, rng=np.random.default_rng(5))
    second = monte_carlo_probability(placement, 3, trials=1000, rng=np.random.default_rng(5))
    assert first == second


def test_domain_failures_lower_the_probability() -> None:
    racks = [f"rack{i // 4}" for i in range(16)]
    plain = plan_placement(16, 2, "group")  # groups {0,1}, {2,3}: each inside one rack
    aware = plan_placement(16, 2, "group", domains=racks)

    def estimate(placement: Placement, failures: int, domain_failures: int) -> float:
        return monte_carlo_probability(
            placement,
            failures,
            trials=20_000,
            rng=np.random.default_rng(11),
            domains=racks,
            domain_failures=domain_failures,
        ).probability

    assert estimate(plain, 2, 0) > estimate(plain, 2, 1) == 0.0  # a lost rack loses two groups
    assert estimate(aware, 0, 1) == 1.0  # racks separated: a whole rack is survivable
    assert estimate(aware, 2, 0) > estimate(aware, 2, 1) > 0.0
    with_racks = monte_carlo_probability(
        aware, 2, trials=100, rng=np.random.default_rng(1), domains=racks, domain_failures=1
    )
    assert with_racks.closed_form is None  # the paper's expression ignores correlated failures


def test_wilson_interval_at_certainty() -> None:
    result = monte_carlo_probability(
        plan_placement(8, 2), 1, trials=1000, rng=np.random.default_rng(0)
    )
    assert result.probability == 1.0 == result.ci_high
    assert 0.99 < result.ci_low < 1.0


# --- method choice ------------------------------------------------------------------------------


def test_recovery_probability_method_choice() -> None:
    group = recovery_probability(plan_placement(16, 2, "group"), 4)
    assert group.method == "exact-enumeration"
    assert round(group.probability, 4) == 0.6154
    assert group.closed_form == pytest.approx(0.6) and group.closed_form_exact is False
    three = recovery_probability(plan_placement(16, 2, "group"), 3)
    assert three.closed_form == pytest.approx(three.probability) and three.closed_form_exact
    ring = recovery_probability(plan_placement(16, 2, "ring"), 3)
    assert ring.closed_form is None and not ring.closed_form_exact

    explicit = plan_placement(
        40, 2, "explicit", explicit=[[(i + 1) % 40 if i % 4 else i + 2] for i in range(40)]
    )
    sampled = recovery_probability(
        explicit, 4, rng=np.random.default_rng(3), trials=5000, enumeration_limit=1000
    )
    assert sampled.method == "monte-carlo" and sampled.trials == 5000
    with pytest.raises(ValueError, match="pass rng for Monte Carlo"):
        recovery_probability(explicit, 4, enumeration_limit=1000)
    enumerated = recovery_probability(explicit, 4)  # C(40, 4) = 91390 <= 200000
    assert enumerated.method == "exact-enumeration"
    assert sampled.ci_low <= enumerated.probability <= sampled.ci_high


# --- errors -------------------------------------------------------------------------------------


def test_bad_input_says_what_is_allowed() -> None:
    group = plan_placement(16, 2)
    with pytest.raises(ValueError, match=r"failures must be between 0 and nodes \(16\), got 17"):
        counting_probability(group, 17)
    with pytest.raises(ValueError, match=r"failures must be between 0 and nodes \(16\), got -1"):
        enumerate_probability(group, -1)
    with pytest.raises(ValueError, match="more than 2000000; use counting_probability"):
        enumerate_probability(plan_placement(64, 2), 8)
    explicit = plan_placement(4, 2, "explicit", explicit=[[1], [0], [3], [2]])
    with pytest.raises(ValueError, match="not explicit ones; use enumerate_probability"):
        counting_probability(explicit, 2)
    odd = Placement(4, 2, "group", ((0, 2), (1, 0), (2, 3), (3, 1)), ((0, 1, 2, 3),))
    with pytest.raises(ValueError, match="do not follow group"):
        counting_probability(odd, 2)
    with pytest.raises(ValueError, match="replicas must divide nodes"):
        paper_closed_form(16, 3, 4)
    with pytest.raises(ValueError, match=r"failures must be between 0 and nodes \(16\)"):
        paper_closed_form(16, 2, 20)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="trials must be at least 1"):
        monte_carlo_probability(group, 2, trials=0, rng=rng)
    with pytest.raises(ValueError, match="confidence must be strictly between 0 and 1"):
        monte_carlo_probability(group, 2, trials=10, rng=rng, confidence=1.0)
    with pytest.raises(ValueError, match=r"needs domains naming one failure domain per node"):
        monte_carlo_probability(group, 2, trials=10, rng=rng, domain_failures=1)
    with pytest.raises(ValueError, match=r"number of domains \(2\), got 3"):
        monte_carlo_probability(
            group, 2, trials=10, rng=rng, domains=["a", "b"] * 8, domain_failures=3
        )
