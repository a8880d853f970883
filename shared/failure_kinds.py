"""What each failure kind of a scenario does, one meaning for the simulator and the harness.

A scenario's failure schedule names five kinds (``shared.scenario.FailureKindName``). Recovery
knows only two *effects* (``shared.failures.FailureKind``): ``software`` (the trainer processes
die, the node and its CPU memory survive) and ``hardware`` (the node is lost with its memory
and must be replaced). This module maps the one onto the other, and says which nodes a kind
hits, so that ``sim/`` and ``real/`` (the failure injector and the root agent) cannot disagree:

==============  ==========  ====================  ==========================================
kind            effect      nodes hit             what the harness does to each node hit
==============  ==========  ====================  ==========================================
``software``    software    the named nodes       SIGKILL of a trainer (``kill_trainer``)
``hardware``    hardware    the named nodes       every process and its memory (``kill_node``)
``network``     hardware    the named nodes       its link goes down (``partition_node``):
                                                  unreachable, so lost, and fenced later
``root_agent``  hardware    the node running the  ``kill_node``
                            root agent
``group``       hardware    every node of the     ``kill_node``
                            named nodes' groups
==============  ==========  ====================  ==========================================

**Which node a ``root_agent`` failure hits.** The node that runs the root agent *at that
moment*, never a node the scenario names: the kind exists to exercise the loss of the root,
and the harness cannot make a chosen node lead (after its first root, its election is a race
on the coordination store, with no hand-over). Both faces follow one rule, ``next_root``:

- at the start the root runs on the lowest node (slot 0): its agent campaigns at once, and
  every other agent holds back its first campaign until a root leads or ``lease_timeout_s``
  has passed (``real.coord.election``), so slot 0 leads unless its agent is not up by then
  (agents start one after the other and import at different speeds: without the hold, the
  first agent up won the create-if-absent race);
- the root stays where it is while its node lives (a trainer crash does not move it);
- when its node is lost, the lowest surviving node becomes the root. In the harness the
  survivors race for the leader key and any of them may win; the simulator, which needs one
  deterministic answer, takes the lowest. The harness reads the actual leader from the store
  instead of following the rule, so a race won by another survivor shows in its event log
  (``failure_injected`` names the node hit) and in the validation as a different node.

The scenario's ``nodes`` of a ``root_agent`` entry are used only when no root is elected at
the moment the failure strikes (between the old root's death and the next election).

**Groups.** A ``group`` failure loses every node of the placement groups of the nodes it
names (``Placement.group_of``: a group of a group placement; a ring, pure or the ring part of
a mixed placement, is one group), so that some checkpoint loses every in-memory copy.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from shared.placement import Placement
from shared.recovery import FailureKind
from shared.scenario import FailureKindName

HarnessAction = Literal["kill_trainer", "kill_node", "partition_node"]
"""What the harness's injector does to each node a failure hits."""

Targets = Literal["named", "root", "groups"]
"""Which nodes a kind hits: the named ones, the root agent's node, or the named nodes' groups."""


@dataclass(frozen=True, slots=True)
class KindMeaning:
    """The meaning of one scenario failure kind.

    Attributes:
        kind: the scenario's kind (``software``, ``hardware``, ``network``, ``root_agent``,
            ``group``).
        effect: what recovery sees: ``software`` (memory survives) or ``hardware`` (lost).
        targets: which nodes it hits (see ``Targets``).
        action: what the harness does to each node hit.
        description: one sentence for documentation and messages.
    """

    kind: FailureKindName
    effect: FailureKind
    targets: Targets
    action: HarnessAction
    description: str


KIND_MEANINGS: Mapping[str, KindMeaning] = MappingProxyType(
    {
        "software": KindMeaning(
            "software",
            "software",
            "named",
            "kill_trainer",
            "one trainer process of each named node dies; the node and its memory survive",
        ),
        "hardware": KindMeaning(
            "hardware",
            "hardware",
            "named",
            "kill_node",
            "each named node is lost with its memory",
        ),
        "network": KindMeaning(
            "network",
            "hardware",
            "named",
            "partition_node",
            "each named node is partitioned from the others: unreachable, so lost",
        ),
        "root_agent": KindMeaning(
            "root_agent",
            "hardware",
            "root",
            "kill_node",
            "the node running the root agent at that moment is lost",
        ),
        "group": KindMeaning(
            "group",
            "hardware",
            "groups",
            "kill_node",
            "every node of the named nodes' placement groups is lost",
        ),
    }
)
"""Every scenario failure kind and its meaning, in the schema's order."""

FAILURE_KINDS: tuple[str, ...] = tuple(KIND_MEANINGS)
"""The scenario's failure kinds."""

HARDWARE_KINDS: tuple[str, ...] = tuple(
    kind for kind, meaning in KIND_MEANINGS.items() if meaning.effect == "hardware"
)
"""The kinds that lose a node (what a lost lease or a failed probe can be the symptom of)."""

SOFTWARE_KINDS: tuple[str, ...] = tuple(
    kind for kind, meaning in KIND_MEANINGS.items() if meaning.effect == "software"
)
"""The kinds whose node survives (what a trainer's exit while its node lives is)."""


def meaning_of(kind: str) -> KindMeaning:
    """The meaning of a scenario failure kind.

    Raises:
        ValueError: for a kind the scenario schema does not have (the message lists them).
    """
    meaning = KIND_MEANINGS.get(kind)
    if meaning is None:
        raise ValueError(f"unknown failure kind {kind!r}; the kinds are {list(FAILURE_KINDS)}")
    return meaning


def effect_of(kind: str) -> FailureKind:
    """``software`` or ``hardware``: what recovery sees of a failure of ``kind``."""
    return meaning_of(kind).effect


def group_nodes(nodes: Collection[int], placement: Placement) -> tuple[int, ...]:
    """Every node of the placement groups of ``nodes``, ascending.

    Raises:
        ValueError: when a node is outside the placement.
    """
    return tuple(sorted({member for node in nodes for member in placement.group_of(node)}))


def initial_root(nodes: int) -> int:
    """The node that runs the root agent when the job starts: the lowest, slot 0.

    Raises:
        ValueError: when ``nodes`` < 1.
    """
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    return 0


def next_root(root: int, lost: Collection[int], nodes: int) -> int:
    """The node running the root agent after the nodes ``lost`` are lost at once.

    The root stays where it is when its node survives; otherwise the lowest surviving node
    takes over, and when every node is lost, the replacement of the lowest node.

    Args:
        root: the root's node before the loss, in [0, nodes).
        lost: the nodes lost (hardware effect) at that instant, each in [0, nodes).
        nodes: the cluster's node count, >= 1.

    Raises:
        ValueError: when ``root`` or a lost node is outside [0, nodes).
    """
    _check_nodes("root", [root], nodes)
    _check_nodes("lost", lost, nodes)
    if root not in lost:
        return root
    survivors = [node for node in range(nodes) if node not in lost]
    return survivors[0] if survivors else 0


@dataclass(frozen=True, slots=True)
class ResolvedFailure:
    """One scenario failure, resolved to the nodes it hits.

    Attributes:
        kind: the scenario's kind.
        nodes: the nodes hit, ascending and distinct.
        effect: ``software`` or ``hardware``, for every node hit.
        action: what the harness does to each node hit.
    """

    kind: str
    nodes: tuple[int, ...]
    effect: FailureKind
    action: HarnessAction


def resolve_failure(
    kind: str,
    named: Sequence[int],
    *,
    placement: Placement,
    root: int | None,
) -> ResolvedFailure:
    """The nodes a failure of ``kind`` naming ``named`` hits, and how.

    Args:
        kind: the scenario's kind.
        named: the nodes the scenario entry names (at least one), each in the placement.
        placement: the job's placement (for ``group``).
        root: the node running the root agent now; None when no root is elected at this
            moment (then a ``root_agent`` failure hits the first named node).

    Raises:
        ValueError: for an unknown kind, no named node, or a node outside the placement.
    """
    meaning = meaning_of(kind)
    if not named:
        raise ValueError(f"a {kind} failure must name at least one node, got {list(named)}")
    _check_nodes("named", named, placement.nodes)
    if meaning.targets == "groups":
        nodes = group_nodes(named, placement)
    elif meaning.targets == "root":
        if root is not None:
            _check_nodes("root", [root], placement.nodes)
        nodes = (named[0] if root is None else root,)
    else:
        nodes = tuple(sorted(set(named)))
    return ResolvedFailure(kind, nodes, meaning.effect, meaning.action)


def _check_nodes(name: str, values: Collection[int], nodes: int) -> None:
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    for value in values:
        if type(value) is not int or not 0 <= value < nodes:
            raise ValueError(f"{name}: node {value!r} is not in [0, {nodes - 1}]")
