"""Placement strategies: shapes, invariants, failure domains, explicit holders, errors."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.placement import Placement, plan_placement

# --- small explicit examples -------------------------------------------------------------------


def test_group_is_consecutive_blocks() -> None:
    placement = plan_placement(6, 3, "group")
    assert placement.strategy == "group"
    assert placement.groups == ((0, 1, 2), (3, 4, 5))
    assert placement.holders[4] == (4, 5, 3)
    assert set(placement.peers_of(4)) == {3, 5}
    assert placement.replicas_held_by(4) == (3, 5)
    assert placement.group_of(4) == (3, 4, 5)


def test_ring_sends_to_successors() -> None:
    placement = plan_placement(5, 3, "ring")
    assert placement.groups == ((0, 1, 2, 3, 4),)
    assert placement.holders == ((0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 0), (4, 0, 1))
    assert placement.peers_of(3) == (4, 0)
    assert placement.replicas_held_by(0) == (3, 4)


def test_mixed_example_from_design() -> None:
    placement = plan_placement(5, 2, "mixed")
    assert placement.strategy == "mixed"
    assert placement.groups == ((0, 1), (2, 3, 4))
    assert placement.holders == ((0, 1), (1, 0), (2, 3), (3, 4), (4, 2))
    assert placement.group_of(3) == (2, 3, 4)


def test_auto_resolves_to_group_or_mixed() -> None:
    assert plan_placement(16, 2).strategy == "group"
    assert plan_placement(16, 3).strategy == "mixed"
    assert plan_placement(16, 3, "auto").groups[-1] == (12, 13, 14, 15)


def test_single_replica_holds_only_own_copy() -> None:
    for strategy in ("group", "ring", "mixed"):
        placement = plan_placement(4, 1, strategy)
        assert placement.holders == ((0,), (1,), (2,), (3,))
        assert all(placement.peers_of(n) == () for n in range(4))


def test_to_json_shape() -> None:
    data = plan_placement(4, 2, "group").to_json()
    assert data == {
        "nodes": 4,
        "replicas": 2,
        "strategy": "group",
        "holders": {"0": [0, 1], "1": [1, 0], "2": [2, 3], "3": [3, 2]},
        "groups": [[0, 1], [2, 3]],
        "domain_conflicts": [],
        "note": "",
    }
    json.dumps(data)


# --- invariants of every placement --------------------------------------------------------------


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int, str]:
    nodes = draw(st.integers(1, 64))
    replicas = draw(st.integers(1, nodes))
    choices = ["ring", "mixed", "auto"] + (["group"] if nodes % replicas == 0 else [])
    return nodes, replicas, draw(st.sampled_from(choices))


def check_invariants(placement: Placement) -> None:
    n, m = placement.nodes, placement.replicas
    assert len(placement.holders) == n
    for node, holders in enumerate(placement.holders):
        assert len(holders) == m
        assert len(set(holders)) == m
        assert holders[0] == node
        assert all(0 <= h < n for h in holders)
        assert placement.peers_of(node) == holders[1:]
        assert node in placement.group_of(node)
    assert sorted(x for g in placement.groups for x in g) == list(range(n))
    received = Counter(h for holders in placement.holders for h in holders[1:])
    for node in range(n):
        assert len(placement.peers_of(node)) == m - 1
        assert received[node] == m - 1
        assert len(placement.replicas_held_by(node)) == m - 1


@given(shapes())
@settings(max_examples=150, deadline=None)
def test_every_placement_is_valid(shape: tuple[int, int, str]) -> None:
    nodes, replicas, strategy = shape
    placement = plan_placement(nodes, replicas, strategy)  # type: ignore[arg-type]
    check_invariants(placement)
    assert placement.domain_conflicts == ()
    m = replicas
    if placement.strategy == "group":
        assert placement.groups == tuple(tuple(range(i, i + m)) for i in range(0, nodes, m))
    elif placement.strategy == "ring":
        assert placement.holders == tuple(
            tuple((i + j) % nodes for j in range(m)) for i in range(nodes)
        )
    else:
        assert placement.strategy == "mixed"
        full = nodes // m - 1
        ring = placement.groups[-1]
        assert m <= len(ring) <= 2 * m - 1
        assert ring == tuple(range(full * m, nodes))
        assert placement.groups[:-1] == tuple(tuple(range(i * m, i * m + m)) for i in range(full))


# --- failure domains ----------------------------------------------------------------------------


def arrangements(
    nodes: int, replicas: int, strategy: str, order: tuple[int, ...]
) -> list[list[int]]:
    """Holder sets of ``strategy`` laid over ``order`` (independent of the module's code)."""
    m = replicas
    if strategy == "group":
        parts = [order[i : i + m] for i in range(0, nodes, m)]
    elif strategy == "ring":
        parts = [order]
    else:
        full = nodes // m - 1
        parts = [order[i * m : i * m + m] for i in range(full)] + [order[full * m :]]
    return [
        [part[(p + j) % len(part)] for j in range(m)] for part in parts for p in range(len(part))
    ]


def separable(nodes: int, replicas: int, strategy: str, domains: list[str]) -> bool:
    """Whether some relabelling separates every checkpoint's holders (by the counting bounds)."""
    m = replicas
    counts = sorted(Counter(domains).values(), reverse=True)
    if strategy == "group":
        return counts[0] <= nodes // m and len(counts) >= m
    if strategy == "ring":
        return counts[0] <= nodes // m
    full = nodes // m - 1
    ring = nodes - full * m
    if len(counts) < ring:
        return False
    left = [c - 1 for c in counts[:ring]] + counts[ring:]
    return max(left) <= full


def conflicts_of(placement: Placement, domains: list[str]) -> tuple[int, ...]:
    return tuple(
        i for i, h in enumerate(placement.holders) if len({domains[x] for x in h}) < len(h)
    )


@st.composite
def domain_cases(draw: st.DrawFn) -> tuple[int, int, str, list[str]]:
    nodes, replicas, strategy = draw(shapes())
    labels = draw(st.integers(1, 8))
    domains = draw(st.lists(st.integers(0, labels - 1), min_size=nodes, max_size=nodes))
    return nodes, replicas, strategy, [f"rack{d}" for d in domains]


@given(domain_cases())
@settings(max_examples=200, deadline=None)
def test_domains_separated_exactly_when_possible(case: tuple[int, int, str, list[str]]) -> None:
    nodes, replicas, strategy, domains = case
    placement = plan_placement(nodes, replicas, strategy, domains=domains)  # type: ignore[arg-type]
    check_invariants(placement)
    assert placement.strategy in ("group", "mixed", "ring")
    assert placement.domain_conflicts == conflicts_of(placement, domains)
    if separable(nodes, replicas, placement.strategy, domains):
        assert placement.domain_conflicts == ()
    else:
        assert placement.domain_conflicts
        assert "could not be separated" in placement.note


def brute_force_separable(
    nodes: int, replicas: int, strategy: str, counts: tuple[int, ...]
) -> bool:
    domains = [f"d{i}" for i, c in enumerate(counts) for _ in range(c)]
    return any(
        all(len({domains[x] for x in h}) == replicas for h in holders)
        for order in itertools.permutations(range(nodes))
        for holders in [arrangements(nodes, replicas, strategy, order)]
    )


@pytest.mark.parametrize("nodes", range(2, 7))
def test_domain_aware_matches_brute_force(nodes: int) -> None:
    """For tiny clusters, no conflicts whenever any relabelling of the strategy has none."""
    feasible: dict[tuple[int, str, tuple[int, ...]], bool] = {}
    for replicas in range(2, nodes + 1):
        strategies = ["ring", "mixed"] + (["group"] if nodes % replicas == 0 else [])
        for labels in itertools.product("ABCD" if nodes < 6 else "ABC", repeat=nodes):
            domains = list(labels)
            counts = tuple(sorted(Counter(domains).values(), reverse=True))
            for strategy in strategies:
                key = (replicas, strategy, counts)
                if key not in feasible:
                    feasible[key] = brute_force_separable(nodes, replicas, strategy, counts)
                    assert feasible[key] == separable(nodes, replicas, strategy, domains), key
                placement = plan_placement(nodes, replicas, strategy, domains=domains)  # type: ignore[arg-type]
                assert (placement.domain_conflicts == ()) == feasible[key], (strategy, domains)


def test_balanced_domains_with_enough_racks_have_no_conflicts() -> None:
    for racks in (2, 3, 4):
        for replicas in range(1, racks + 1):
            nodes = 12
            if nodes % replicas:
                continue
            contiguous = [f"r{i * racks // nodes}" for i in range(nodes)]
            placement = plan_placement(nodes, replicas, "group", domains=contiguous)
            assert placement.domain_conflicts == ()
            for group in placement.groups:
                assert len({contiguous[x] for x in group}) == replicas


def test_rack_per_group_is_regrouped() -> None:
    racks = [f"rack{i // 4}" for i in range(16)]
    plain = plan_placement(16, 2, "group")
    assert conflicts_of(plain, racks) == tuple(range(16))
    aware = plan_placement(16, 2, "group", domains=racks)
    assert aware.strategy == "group"
    assert aware.domain_conflicts == ()
    assert "distinct domains" in aware.note


def test_already_separated_domains_keep_plain_placement() -> None:
    racks = [f"rack{i % 2}" for i in range(8)]
    assert plan_placement(8, 2, domains=racks).groups == plan_placement(8, 2).groups


def test_too_few_domains_reports_conflicts_and_why() -> None:
    placement = plan_placement(6, 3, "group", domains=["a", "b"] * 3)
    assert placement.domain_conflicts == tuple(range(6))
    assert "only 2 failure domains for 3 replicas" in placement.note
    check_invariants(placement)


def test_unbalanced_domains_report_the_big_domain() -> None:
    placement = plan_placement(8, 2, "group", domains=["big"] * 6 + ["x", "y"])
    assert placement.domain_conflicts
    assert "'big' has 6 nodes" in placement.note


# --- explicit -----------------------------------------------------------------------------------


def test_explicit_prepends_own_node() -> None:
    placement = plan_placement(4, 2, "explicit", explicit=[[1], [1, 0], [3], [2]])
    assert placement.strategy == "explicit"
    assert placement.holders == ((0, 1), (1, 0), (2, 3), (3, 2))
    assert placement.groups == ((0, 1), (2, 3))


def test_explicit_groups_are_connected_components() -> None:
    placement = plan_placement(5, 2, "explicit", explicit=[[1], [2], [0], [4], [3]])
    assert placement.groups == ((0, 1, 2), (3, 4))
    assert placement.replicas_held_by(0) == (2,)


def test_explicit_reports_domain_conflicts() -> None:
    placement = plan_placement(
        4, 2, "explicit", explicit=[[1], [0], [3], [2]], domains=["a", "a", "a", "b"]
    )
    assert placement.domain_conflicts == (0, 1)
    assert "share a failure domain" in placement.note


@pytest.mark.parametrize(
    ("explicit", "message"),
    [
        ([[1], [0], [3]], r"explicit must list the holders of every node \(4 entries\), got 3"),
        ([[1], [0], [3], [2, 1]], r"explicit\[3\]: .*exactly replicas \(2\) holders"),
        ([[1], [0], [3], [3]], r"explicit\[3\]: .*exactly replicas"),
        ([[1], [0], [3], [4]], r"explicit\[3\]: .*between 0 and 3"),
        ([[1, 0], [0], [3], [2]], r"explicit\[0\]: node 0 must be listed first or left out"),
        ([[1, 1], [0], [3], [2]], r"explicit\[0\]: .*"),
    ],
)
def test_bad_explicit_is_rejected(explicit: list[list[int]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_placement(4, 2, "explicit", explicit=explicit)


def test_explicit_duplicates_are_rejected() -> None:
    with pytest.raises(ValueError, match="distinct"):
        plan_placement(4, 3, "explicit", explicit=[[1, 1], [0, 2], [3, 0], [2, 1]])


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 1), {}, "nodes must be an integer of at least 1, got 0"),
        ((16, 17), {}, r"replicas must be between 1 and nodes \(16\), got 17"),
        ((16, 0), {}, r"replicas must be between 1 and nodes \(16\), got 0"),
        ((16, 3, "group"), {}, r"replicas \(3\) to divide nodes \(16\); use strategy 'mixed'"),
        ((16, 2, "star"), {}, "strategy must be one of group, ring, mixed, auto, explicit"),
        ((4, 2), {"domains": ["a"] * 3}, r"one failure domain per node \(4\), got 3"),
        ((4, 2, "explicit"), {}, "explicit holders are required with strategy 'explicit'"),
        ((4, 2, "ring"), {"explicit": [[1], [0], [3], [2]]}, "allowed only with it"),
    ],
)
def test_bad_input_says_what_is_allowed(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan_placement(*args, **kwargs)  # type: ignore[arg-type]


def test_placement_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="own copy must be listed first"):
        Placement(2, 2, "explicit", ((1, 0), (1, 0)), ((0, 1),))
    with pytest.raises(ValueError, match="groups must cover every node"):
        Placement(2, 1, "group", ((0,), (1,)), ((0,),))
    with pytest.raises(ValueError, match=r"node must be between 0 and 3, got 4"):
        plan_placement(4, 2).peers_of(4)
