"""Properties of ``shared.failure_kinds``: every kind's effect, the nodes it hits, the root."""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.failure_kinds import (
    FAILURE_KINDS,
    HARDWARE_KINDS,
    KIND_MEANINGS,
    SOFTWARE_KINDS,
    effect_of,
    group_nodes,
    initial_root,
    next_root,
    resolve_failure,
)
from shared.placement import Placement, plan_placement
from shared.scenario import FailureKindName


def test_every_schema_kind_has_one_meaning() -> None:
    assert get_args(FailureKindName) == FAILURE_KINDS
    assert all(KIND_MEANINGS[kind].kind == kind for kind in FAILURE_KINDS)


def test_only_a_trainer_crash_keeps_the_node() -> None:
    assert SOFTWARE_KINDS == ("software",)
    assert HARDWARE_KINDS == ("hardware", "network", "root_agent", "group")
    assert {effect_of(kind) for kind in HARDWARE_KINDS} == {"hardware"}
    assert KIND_MEANINGS["software"].action == "kill_trainer"
    assert KIND_MEANINGS["network"].action == "partition_node"
    assert {KIND_MEANINGS[k].action for k in ("hardware", "root_agent", "group")} == {"kill_node"}


def test_unknown_kinds_and_nodes_are_refused_with_the_allowed_values() -> None:
    placement = plan_placement(4, 2, "group")
    with pytest.raises(ValueError, match=r"unknown failure kind 'disk'.*'software'"):
        resolve_failure("disk", [0], placement=placement, root=0)
    with pytest.raises(ValueError, match=r"node 4 is not in \[0, 3\]"):
        resolve_failure("hardware", [4], placement=placement, root=0)
    with pytest.raises(ValueError, match="at least one node"):
        resolve_failure("group", [], placement=placement, root=0)
    with pytest.raises(ValueError, match=r"root: node 7"):
        resolve_failure("root_agent", [0], placement=placement, root=7)


@st.composite
def placements(draw: st.DrawFn) -> Placement:
    nodes = draw(st.integers(1, 12))
    replicas = draw(st.integers(1, nodes))
    strategies = ["ring", "mixed"] + (["group"] if nodes % replicas == 0 else [])
    return plan_placement(nodes, replicas, draw(st.sampled_from(strategies)))


@st.composite
def failures(draw: st.DrawFn) -> tuple[Placement, str, list[int], int | None]:
    placement = draw(placements())
    node = st.integers(0, placement.nodes - 1)
    named = draw(st.lists(node, min_size=1, max_size=placement.nodes, unique=True))
    root = draw(st.none() | node)
    return placement, draw(st.sampled_from(FAILURE_KINDS)), named, root


@given(failures())
def test_a_resolved_failure_hits_the_nodes_its_kind_says(
    case: tuple[Placement, str, list[int], int | None],
) -> None:
    placement, kind, named, root = case
    resolved = resolve_failure(kind, named, placement=placement, root=root)
    nodes = resolved.nodes
    assert list(nodes) == sorted(set(nodes)) and nodes
    assert all(0 <= node < placement.nodes for node in nodes)
    assert resolved.effect == ("software" if kind == "software" else "hardware")
    assert resolved.action == KIND_MEANINGS[kind].action
    if kind == "root_agent":
        assert nodes == ((named[0],) if root is None else (root,))
    elif kind == "group":
        assert set(named) <= set(nodes)
        for group in placement.groups:  # whole groups, nothing else
            assert set(group) <= set(nodes) or not set(group) & set(nodes)
        for node in named:  # every in-memory copy of a named node's checkpoint is gone
            assert set(placement.holders[node]) <= set(nodes)
    else:
        assert nodes == tuple(sorted(named))


@given(placements(), st.data())
def test_group_nodes_of_one_node_is_its_group(placement: Placement, data: st.DataObject) -> None:
    node = data.draw(st.integers(0, placement.nodes - 1))
    assert group_nodes([node], placement) == tuple(sorted(placement.group_of(node)))


@given(st.integers(1, 16), st.data())
def test_the_root_moves_only_when_its_node_is_lost(nodes: int, data: st.DataObject) -> None:
    root = data.draw(st.integers(0, nodes - 1))
    lost = data.draw(st.sets(st.integers(0, nodes - 1)))
    after = next_root(root, lost, nodes)
    assert 0 <= after < nodes
    survivors = sorted(set(range(nodes)) - lost)
    if root not in lost:
        assert after == root
    elif survivors:
        assert after == survivors[0]  # the lowest surviving node
    else:
        assert after == 0  # everyone lost: the replacement of the lowest node


@given(st.integers(1, 16), st.lists(st.sets(st.integers(0, 15), min_size=1), max_size=8))
def test_a_sequence_of_losses_keeps_the_root_on_a_node_that_lived_longest(
    nodes: int, losses: list[set[int]]
) -> None:
    root = initial_root(nodes)
    assert root == 0
    for lost in losses:
        lost = {node % nodes for node in lost}
        before = root
        root = next_root(root, lost, nodes)
        if before in lost and len(lost) < nodes:
            assert root not in lost and root == min(set(range(nodes)) - lost)


def test_next_root_refuses_nodes_outside_the_cluster() -> None:
    with pytest.raises(ValueError, match="root"):
        next_root(4, [], 4)
    with pytest.raises(ValueError, match="lost"):
        next_root(0, [9], 4)
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        initial_root(0)
