"""Tests for shared.recovery: one iteration for every node, each from the best surviving tier."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.placement import Placement, plan_placement
from shared.recovery import FailureKind, RecoveryPlan, Source, plan_recovery

Holdings = dict[int, dict[int, set[int]]]
KINDS: tuple[FailureKind, ...] = get_args(FailureKind)


def _full_holdings(placement: Placement, iterations: Iterable[int]) -> Holdings:
    """Every holder holds every iteration of every shard the placement gives it."""
    held: Holdings = {node: {} for node in range(placement.nodes)}
    for owner, holders in enumerate(placement.holders):
        for holder in holders:
            held[holder][owner] = set(iterations)
    return held


# --- exact examples ---------------------------------------------------------------------------

GROUPS_OF_TWO = plan_placement(4, 2, "group")  # groups {0, 1} and {2, 3}


def test_software_failure_restores_locally_everywhere() -> None:
    plan = plan_recovery(GROUPS_OF_TWO, {1: "software"}, _full_holdings(GROUPS_OF_TWO, [9, 10]), 5)
    assert plan.iteration == 10
    assert plan.sources == tuple(Source(node, "local", node) for node in range(4))
    assert not plan.rollback
    assert plan.tiers() == {"local": 4, "peer": 0, "persistent": 0}
    assert "Iteration 10" in plan.reason


def test_hardware_failure_restores_that_node_from_its_peer() -> None:
    plan = plan_recovery(GROUPS_OF_TWO, {1: "hardware"}, _full_holdings(GROUPS_OF_TWO, [9, 10]), 5)
    assert plan.iteration == 10
    assert plan.sources == (
        Source(0, "local", 0),
        Source(1, "peer", 0),
        Source(2, "local", 2),
        Source(3, "local", 3),
    )
    assert not plan.rollback
    assert plan.tiers() == {"local": 3, "peer": 1, "persistent": 0}


def test_losing_a_whole_group_rolls_everyone_back_to_persistent() -> None:
    failed: dict[int, FailureKind] = {0: "hardware", 1: "hardware"}
    plan = plan_recovery(GROUPS_OF_TWO, failed, _full_holdings(GROUPS_OF_TWO, [9, 10]), 5)
    assert plan.iteration == 5
    assert plan.sources == tuple(Source(node, "persistent", None) for node in range(4))
    assert plan.rollback
    assert plan.tiers() == {"local": 0, "peer": 0, "persistent": 4}
    assert "persistent iteration 5" in plan.reason
    assert "nodes 0, 1" in plan.reason


def test_losing_a_whole_group_without_persistent_checkpoint_restarts_from_scratch() -> None:
    failed: dict[int, FailureKind] = {2: "hardware", 3: "hardware"}
    plan = plan_recovery(GROUPS_OF_TWO, failed, _full_holdings(GROUPS_OF_TWO, [10]), None)
    assert plan == RecoveryPlan(
        iteration=None,
        sources=(),
        rollback=True,
        reason=plan.reason,
    )
    assert "from scratch" in plan.reason
    assert plan.tiers() == {"local": 0, "peer": 0, "persistent": 0}
    with pytest.raises(ValueError, match="from scratch"):
        plan.source_for_rank(0, 1)


def test_nothing_in_memory_and_no_persistent_checkpoint_starts_from_scratch() -> None:
    plan = plan_recovery(GROUPS_OF_TWO, {}, {}, None)
    assert plan.iteration is None and plan.rollback
    assert "No node's shard survives" in plan.reason


def test_every_node_restores_the_same_older_iteration_when_the_newest_is_incomplete() -> None:
    # Node 2 is lost; its peer 3 committed node 2's iteration 9 but not yet 10. Everyone else
    # holds 10, yet all restore 9: consistency before recency.
    holdings = _full_holdings(GROUPS_OF_TWO, [9, 10])
    holdings[3][2] = {9}
    plan = plan_recovery(GROUPS_OF_TWO, {2: "hardware"}, holdings, 5)
    assert plan.iteration == 9
    assert plan.sources[2] == Source(2, "peer", 3)
    assert plan.tiers() == {"local": 3, "peer": 1, "persistent": 0}


def test_iterations_that_do_not_line_up_roll_back() -> None:
    holdings = _full_holdings(GROUPS_OF_TWO, [10])
    holdings[0][0] = {11}
    holdings[1][0] = {11}
    plan = plan_recovery(GROUPS_OF_TWO, {}, holdings, 3)
    assert plan.iteration == 3 and plan.rollback
    assert "iteration 11" in plan.reason and "nodes 1, 2, 3" in plan.reason


def test_a_newer_persistent_checkpoint_wins_and_an_equal_one_does_not() -> None:
    holdings = _full_holdings(GROUPS_OF_TWO, [10])
    newer = plan_recovery(GROUPS_OF_TWO, {}, holdings, 12)
    assert newer.iteration == 12 and newer.rollback
    assert newer.tiers()["persistent"] == 4
    assert "newer than iteration 10" in newer.reason
    equal = plan_recovery(GROUPS_OF_TWO, {}, holdings, 10)
    assert equal.iteration == 10 and not equal.rollback
    assert equal.tiers()["local"] == 4


def test_peer_is_the_first_surviving_holder_in_placement_order() -> None:
    ring = plan_placement(5, 3, "ring")
    assert ring.holders[0] == (0, 1, 2)
    holdings = _full_holdings(ring, [7])
    assert plan_recovery(ring, {0: "hardware"}, holdings, None).sources[0] == Source(0, "peer", 1)
    holdings[1][0] = set()  # node 1 does not hold node 0's iteration 7: node 2 serves it
    assert plan_recovery(ring, {0: "hardware"}, holdings, None).sources[0] == Source(0, "peer", 2)
    lost: dict[int, FailureKind] = {0: "hardware", 2: "hardware"}
    holdings = _full_holdings(ring, [7])
    assert plan_recovery(ring, lost, holdings, None).sources[0] == Source(0, "peer", 1)


def test_software_failed_node_whose_own_copy_is_incomplete_restores_from_a_peer() -> None:
    holdings = _full_holdings(GROUPS_OF_TWO, [10])
    holdings[1][1] = set()
    plan = plan_recovery(GROUPS_OF_TWO, {1: "software"}, holdings, None)
    assert plan.iteration == 10
    assert plan.sources[1] == Source(1, "peer", 0)


def test_what_a_lost_node_held_is_ignored() -> None:
    holdings = _full_holdings(GROUPS_OF_TWO, [10])
    holdings[0][0] = {10}
    holdings[1][0] = set()  # only the lost node 0 still claims its own shard
    plan = plan_recovery(GROUPS_OF_TWO, {0: "hardware"}, holdings, 4)
    assert plan.iteration == 4 and plan.rollback


def test_holders_outside_the_placement_are_not_consulted() -> None:
    holdings = _full_holdings(GROUPS_OF_TWO, [10])
    holdings[1][0] = set()
    holdings[2][0] = {10}  # node 2 is not a holder of node 0's shard in this placement
    plan = plan_recovery(GROUPS_OF_TWO, {0: "hardware"}, holdings, 4)
    assert plan.iteration == 4 and plan.rollback


def test_holdings_accept_any_iterable_and_missing_entries() -> None:
    def generators() -> dict[int, dict[int, Iterable[int]]]:
        return {
            node: {owner: iter([3, 4]) for owner in GROUPS_OF_TWO.group_of(node)}
            for node in range(4)
        }

    plan = plan_recovery(GROUPS_OF_TWO, {}, generators(), None)
    assert plan.iteration == 4 and plan.tiers()["local"] == 4
    holdings = generators()
    del holdings[3]  # node 3 reports nothing: its own shard comes from node 2
    plan = plan_recovery(GROUPS_OF_TWO, {3: "software"}, holdings, None)
    assert plan.iteration == 4
    assert plan.sources[3] == Source(3, "peer", 2)


def test_source_for_rank_maps_ranks_to_their_node() -> None:
    plan = plan_recovery(GROUPS_OF_TWO, {1: "hardware"}, _full_holdings(GROUPS_OF_TWO, [10]), 5)
    assert plan.source_for_rank(0, 8) == Source(0, "local", 0)
    assert plan.source_for_rank(13, 8) == Source(1, "peer", 0)
    assert plan.source_for_rank(31, 8) == Source(3, "local", 3)
    with pytest.raises(ValueError, match="rank"):
        plan.source_for_rank(32, 8)
    with pytest.raises(ValueError, match="rank"):
        plan.source_for_rank(-1, 8)
    with pytest.raises(ValueError, match="accelerators_per_node"):
        plan.source_for_rank(0, 0)


@pytest.mark.parametrize(
    ("failed", "holdings", "persistent", "named"),
    [
        ({4: "hardware"}, {}, None, "failed"),
        ({-1: "software"}, {}, None, "failed"),
        ({0: "network"}, {}, None, r"failed\[0\]"),
        ({}, {4: {0: [1]}}, None, "holdings"),
        ({}, {0: {9: [1]}}, None, r"holdings\[0\]"),
        ({}, {0: {0: [1, -2]}}, None, r"holdings\[0\]\[0\]"),
        ({}, {}, -1, "persistent_iteration"),
    ],
)
def test_bad_inputs_are_rejected_by_name(
    failed: Mapping[int, FailureKind],
    holdings: Mapping[int, Mapping[int, Iterable[int]]],
    persistent: int | None,
    named: str,
) -> None:
    with pytest.raises(ValueError, match=named):
        plan_recovery(GROUPS_OF_TWO, failed, holdings, persistent)


def test_sources_must_match_their_tier() -> None:
    with pytest.raises(ValueError, match="from_node"):
        Source(1, "local", 2)
    with pytest.raises(ValueError, match="from_node"):
        Source(1, "peer", 1)
    with pytest.raises(ValueError, match="from_node"):
        Source(1, "persistent", 0)
    with pytest.raises(ValueError, match="tier"):
        Source(1, "remote", None)  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------------


@st.composite
def _placements(draw: st.DrawFn) -> Placement:
    nodes = draw(st.integers(1, 16))
    replicas = draw(st.integers(1, min(nodes, 4)))
    strategies = ["ring", "mixed"] + (["group"] if nodes % replicas == 0 else [])
    return plan_placement(nodes, replicas, draw(st.sampled_from(strategies)))


@st.composite
def _situations(
    draw: st.DrawFn,
) -> tuple[Placement, dict[int, FailureKind], Holdings, int | None]:
    """A placement, some failures, what each holder holds (ragged), a persistent checkpoint."""
    placement = draw(_placements())
    nodes = range(placement.nodes)
    failed = draw(st.dictionaries(st.sampled_from(nodes), st.sampled_from(KINDS)))
    iterations = st.sets(st.integers(0, 5), max_size=4)
    holdings: Holdings = {node: {} for node in nodes}
    for owner, holders in enumerate(placement.holders):
        for holder in holders:
            holdings[holder][owner] = draw(iterations)
    persistent = draw(st.none() | st.integers(0, 5))
    return placement, failed, holdings, persistent


def _surviving_holders_of(
    placement: Placement, failed: Mapping[int, FailureKind], holdings: Holdings, iteration: int
) -> list[list[int]]:
    """Per owner, the placement's surviving holders of ``iteration``, in placement order."""
    return [
        [
            holder
            for holder in placement.holders[owner]
            if failed.get(holder) != "hardware"
            and iteration in holdings.get(holder, {}).get(owner, set())
        ]
        for owner in range(placement.nodes)
    ]


@settings(max_examples=300, deadline=None)
@given(_situations())
def test_every_plan_is_consistent_safe_and_newest(
    situation: tuple[Placement, dict[int, FailureKind], Holdings, int | None],
) -> None:
    placement, failed, holdings, persistent = situation
    plan = plan_recovery(placement, failed, holdings, persistent)

    # Brute force: the newest iteration every shard survives at, by trying each candidate.
    servable = [
        iteration
        for iteration in range(6)
        if all(_surviving_holders_of(placement, failed, holdings, iteration))
    ]
    newest = max(servable, default=None)
    expect_memory = newest is not None and (persistent is None or newest >= persistent)
    expected_iteration = newest if expect_memory else persistent
    assert plan.iteration == expected_iteration
    assert plan.rollback is not expect_memory
    assert plan.reason

    if plan.iteration is None:
        assert plan.sources == ()
        return
    assert [source.node for source in plan.sources] == list(range(placement.nodes))
    if not expect_memory:
        assert all(source.tier == "persistent" for source in plan.sources)
        return

    holders_of = _surviving_holders_of(placement, failed, holdings, plan.iteration)
    for source in plan.sources:
        node = source.node
        # Never a lost holder, never one that does not hold the iteration; local when possible,
        # else the first surviving holder in placement order.
        assert source.tier != "persistent"
        assert source.from_node in holders_of[node]
        assert failed.get(source.from_node) != "hardware"
        if node in holders_of[node]:
            assert source == Source(node, "local", node)
        else:
            assert source == Source(node, "peer", holders_of[node][0])


@st.composite
def _group_survivable(draw: st.DrawFn) -> tuple[Placement, dict[int, FailureKind]]:
    """Group placement and failures that leave every group at least one surviving member."""
    replicas = draw(st.integers(1, 4))
    placement = plan_placement(replicas * draw(st.integers(1, 16 // replicas)), replicas, "group")
    failed: dict[int, FailureKind] = {}
    for group in placement.groups:
        for node in draw(st.permutations(group))[: len(group) - 1]:
            kind = draw(st.sampled_from([*KINDS, None]))
            if kind is not None:
                failed[node] = kind
    return placement, failed


@settings(max_examples=200, deadline=None)
@given(_group_survivable(), st.integers(0, 100), st.none() | st.integers(0, 100))
def test_fewer_than_m_failures_per_group_never_roll_back(
    survivable: tuple[Placement, dict[int, FailureKind]],
    iteration: int,
    persistent: int | None,
) -> None:
    placement, failed = survivable
    plan = plan_recovery(placement, failed, _full_holdings(placement, [iteration]), None)
    assert plan.iteration == iteration and not plan.rollback
    for source in plan.sources:
        lost = failed.get(source.node) == "hardware"
        assert source.tier == ("peer" if lost else "local")
        assert source.from_node in placement.group_of(source.node)
    # An older persistent checkpoint does not change that.
    if persistent is not None and persistent <= iteration:
        full = _full_holdings(placement, [iteration])
        assert plan_recovery(placement, failed, full, persistent) == plan


@settings(max_examples=200, deadline=None)
@given(_situations(), st.data())
def test_losing_a_whole_group_forces_rollback(
    situation: tuple[Placement, dict[int, FailureKind], Holdings, int | None],
    data: st.DataObject,
) -> None:
    placement, failed, holdings, persistent = situation
    group = data.draw(st.sampled_from(placement.groups))
    if len(group) != placement.replicas:
        return  # a ring part: losing m consecutive nodes of it is the analogue, tested below
    failed = {**failed, **dict.fromkeys(group, "hardware")}
    plan = plan_recovery(placement, failed, holdings, persistent)
    assert plan.rollback
    assert plan.iteration == persistent
    assert all(source.tier == "persistent" for source in plan.sources)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 16), st.integers(1, 4), st.data())
def test_losing_m_consecutive_ring_nodes_forces_rollback(
    nodes: int, replicas: int, data: st.DataObject
) -> None:
    replicas = min(replicas, nodes)
    ring = plan_placement(nodes, replicas, "ring")
    first = data.draw(st.integers(0, nodes - 1))
    failed: dict[int, FailureKind] = {(first + j) % nodes: "hardware" for j in range(replicas)}
    plan = plan_recovery(ring, failed, _full_holdings(ring, [8, 9]), 2)
    assert plan.iteration == 2 and plan.rollback
    # One survivor among those m is enough to stay in memory.
    failed[first] = "software"
    plan = plan_recovery(ring, failed, _full_holdings(ring, [8, 9]), 2)
    assert plan.iteration == 9 and not plan.rollback
