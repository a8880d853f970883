"""Recovery planning: which iteration every node restores after a failure, and from where.

Gemini keeps each node's checkpoint shard in CPU memory on ``m`` holders: the node itself and
``m - 1`` peers chosen by the placement (`shared.placement`). After a failure the root agent
decides, once and for everyone, what to restore:

- A **software failure** (a trainer crash) leaves the node's CPU memory intact: the node agent
  owns the checkpoint buffers, so the restarted trainer restores from **local** memory.
- A **hardware failure** loses the node and everything in its memory. A standby replaces it,
  takes its rank and starts empty, so the replacement restores the lost node's shard from a
  **peer** that holds a replica.
- When some node's shard of every candidate iteration is gone from all surviving memory (a
  whole placement group lost, or holders whose committed iterations do not line up), every node
  **rolls back** to the newest checkpoint in **persistent** storage, or, when there is none,
  training restarts from scratch.

Consistency comes first: all nodes restore the *same* iteration, never a mix. The plan picks
the newest iteration ``I`` for which every node's shard at ``I`` survives on at least one holder;
each node then restores from its own memory when it can (no network transfer), else from the
first surviving holder in placement order (deterministic, so every agent computing the plan
agrees). A persistent checkpoint newer than every iteration in memory wins over memory.

Only holders named by the placement are consulted for a node's shard. The function is pure:
the inputs are the placement, the failures, what each holder reports complete in memory, and
the newest complete persistent checkpoint.

What counts as complete is the caller's rule, the same in both faces. A committed checkpoint
always does (captured, and every replica stored). With ``checkpoint.commit: on_arrival`` so does
a copy whose every byte is in place though not committed: the owner's own capture once
``save()`` returned, a replica once the peer verified it. After a trainer crash every node's
memory survives, so the newest iteration every rank has *captured* is restored from local
memory, losing no finished iteration; a lost node's shard still needs a replica on a peer, so a
hardware failure restores the newest iteration whose replicas arrived. Every node still
restores the same iteration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

__all__ = [
    "FailureKind",
    "PlacementView",
    "RecoveryPlan",
    "Source",
    "Tier",
    "complete_counts",
    "plan_recovery",
]

FailureKind = Literal["software", "hardware"]
"""How a node failed. ``"software"``: its CPU memory survives. ``"hardware"``: the node is lost,
with its memory; a standby takes its rank and starts empty."""

Tier = Literal["local", "peer", "persistent"]
"""Where a node's shard is restored from: its own memory, a peer's memory, persistent storage."""

_FAILURE_KINDS: tuple[str, ...] = get_args(FailureKind)
_TIERS: tuple[str, ...] = get_args(Tier)


class PlacementView(Protocol):
    """What recovery planning reads of a placement; `shared.placement.Placement` provides it."""

    @property
    def nodes(self) -> int:
        """Number of nodes N."""
        ...

    @property
    def holders(self) -> Sequence[Sequence[int]]:
        """``holders[i]``: the nodes holding node i's checkpoint, node i first."""
        ...


@dataclass(frozen=True)
class Source:
    """Where one node (rank slot) restores its shard from.

    Attributes:
        node: The node restoring (after a hardware failure, its replacement in the same slot).
        tier: ``"local"``, ``"peer"`` or ``"persistent"``.
        from_node: The holder serving the shard: ``node`` itself for local, the peer's id for
            peer, None for persistent.
    """

    node: int
    tier: Tier
    from_node: int | None

    def __post_init__(self) -> None:
        if self.tier not in _TIERS:
            raise ValueError(f"tier must be one of {_TIERS}, got {self.tier!r}")
        consistent = {
            "local": self.from_node == self.node,
            "peer": self.from_node is not None and self.from_node != self.node,
            "persistent": self.from_node is None,
        }[self.tier]
        if not consistent:
            raise ValueError(
                f"from_node {self.from_node!r} does not fit tier {self.tier!r} for node "
                f"{self.node}: local needs from_node == node, peer another node, persistent None"
            )


@dataclass(frozen=True)
class RecoveryPlan:
    """What every node restores after a failure.

    Attributes:
        iteration: The one iteration every node restores; None when there is nothing to restore
            and training starts from scratch.
        sources: One `Source` per node, ``sources[i].node == i``; empty when ``iteration`` is
            None.
        rollback: True when the in-memory checkpoints are not used: every node restores from
            persistent storage, or (``iteration`` None) training restarts from scratch.
        reason: One human sentence explaining the choice.
    """

    iteration: int | None
    sources: tuple[Source, ...]
    rollback: bool
    reason: str

    def source_for_rank(self, rank: int, accelerators_per_node: int) -> Source:
        """Return the source of the node hosting ``rank`` (ranks are numbered node by node).

        Args:
            rank: Global rank, in ``[0, nodes * accelerators_per_node)``.
            accelerators_per_node: Ranks per node (>= 1).

        Returns:
            The source of node ``rank // accelerators_per_node``.

        Raises:
            ValueError: If an argument is out of range, or the plan restores nothing
                (``iteration`` None: start from scratch).
        """
        if accelerators_per_node < 1:
            raise ValueError(f"accelerators_per_node must be >= 1, got {accelerators_per_node!r}")
        if self.iteration is None:
            raise ValueError("the plan restores nothing (iteration None): start from scratch")
        ranks = len(self.sources) * accelerators_per_node
        if not 0 <= rank < ranks:
            raise ValueError(f"rank must be in [0, {ranks}), got {rank!r}")
        return self.sources[rank // accelerators_per_node]

    def tiers(self) -> dict[str, int]:
        """Return how many nodes restore from each tier, with every tier present as a key."""
        counts = dict.fromkeys(_TIERS, 0)
        for source in self.sources:
            counts[source.tier] += 1
        return counts


def complete_counts(commit: str) -> bool:
    """Whether copies complete but not committed count as held (module docstring), for the
    checkpoint commit rule ``commit`` (``scenario.checkpoint.commit``): with ``on_arrival``
    they do; with ``next_iteration_end`` (the paper's accounting) only committed ones count.
    Both faces ask this: the harness's stores and root agent, and the simulator's memory."""
    return commit == "on_arrival"


def plan_recovery(
    placement: PlacementView,
    failed: Mapping[int, FailureKind],
    holdings: Mapping[int, Mapping[int, Iterable[int]]],
    persistent_iteration: int | None,
) -> RecoveryPlan:
    """Plan which iteration every node restores after a failure, and each node's source.

    Args:
        placement: Who holds whose checkpoint (``.nodes`` and ``.holders`` are read).
        failed: Failure kind per failed node id. Nodes absent did not fail.
        holdings: ``holdings[holder][owner]``: iterations of ``owner``'s shard that ``holder``
            has complete in CPU memory (module docstring); ``holder == owner`` is the node's own
            copy.
            Missing entries mean nothing held. What nodes lost to a hardware failure held is
            ignored.
        persistent_iteration: Newest complete checkpoint in persistent storage, or None.

    Returns:
        The plan: the newest iteration every node's shard survives in memory, each node
        restoring locally when it can and otherwise from the first surviving holder in
        ``placement.holders`` order; or, when memory cannot serve every shard, or a newer
        persistent checkpoint exists, a rollback to ``persistent_iteration`` for all (to
        nothing when it is None).

    Raises:
        ValueError: If a node id is outside ``[0, placement.nodes)``, a failure kind is not
            ``"software"`` or ``"hardware"``, or an iteration is negative.
    """
    nodes = _check_placement(placement)
    lost = _check_failures(failed, nodes)
    held = _check_holdings(holdings, nodes)
    if persistent_iteration is not None and persistent_iteration < 0:
        raise ValueError(
            f"persistent_iteration must be None or an iteration >= 0, got {persistent_iteration!r}"
        )

    # Per owner, per surviving holder named by the placement, the iterations held.
    surviving: list[list[tuple[int, frozenset[int]]]] = []
    for owner in range(nodes):
        holders = [owner, *(h for h in placement.holders[owner] if h != owner)]
        surviving.append([(h, held.get((h, owner), frozenset())) for h in holders if h not in lost])
    available = [frozenset().union(*(its for _, its in copies)) for copies in surviving]
    common = frozenset.intersection(*available)
    memory_iteration = max(common) if common else None

    if memory_iteration is not None and (
        persistent_iteration is None or memory_iteration >= persistent_iteration
    ):
        sources = tuple(
            _memory_source(owner, surviving[owner], memory_iteration) for owner in range(nodes)
        )
        local = sum(1 for source in sources if source.tier == "local")
        return RecoveryPlan(
            iteration=memory_iteration,
            sources=sources,
            rollback=False,
            reason=(
                f"Iteration {memory_iteration} survives in CPU memory for every node's shard: "
                f"{local} of {nodes} nodes restore locally, {nodes - local} from a peer."
            ),
        )

    if memory_iteration is not None:
        why = (
            f"persistent iteration {persistent_iteration} is newer than iteration "
            f"{memory_iteration}, the newest in CPU memory for every node's shard"
        )
    else:
        why = _why_memory_cannot_serve(available)
    if persistent_iteration is None:
        return RecoveryPlan(
            iteration=None,
            sources=(),
            rollback=True,
            reason=f"{_capitalise(why)} and there is no persistent checkpoint, "
            "so training restarts from scratch.",
        )
    return RecoveryPlan(
        iteration=persistent_iteration,
        sources=tuple(Source(node, "persistent", None) for node in range(nodes)),
        rollback=True,
        reason=f"{_capitalise(why)}, so every node restores persistent iteration "
        f"{persistent_iteration}.",
    )


def _memory_source(
    owner: int, copies: Sequence[tuple[int, frozenset[int]]], iteration: int
) -> Source:
    """Return the first copy of ``owner``'s shard holding ``iteration`` (its own first)."""
    for holder, iterations in copies:
        if iteration in iterations:
            return Source(owner, "local" if holder == owner else "peer", holder)
    raise AssertionError(f"iteration {iteration} of node {owner} was found held, then not")


def _why_memory_cannot_serve(available: Sequence[frozenset[int]]) -> str:
    """Explain, as a clause, why no iteration is in memory for every node's shard."""
    newest = max(frozenset().union(*available), default=None)
    if newest is None:
        return "no node's shard survives in CPU memory"
    missing = [node for node, iterations in enumerate(available) if newest not in iterations]
    shown = ", ".join(str(node) for node in missing[:8]) + (", ..." if len(missing) > 8 else "")
    noun = "node" if len(missing) == 1 else "nodes"
    return (
        f"no iteration survives in CPU memory for every node's shard "
        f"(the newest, iteration {newest}, is gone for {noun} {shown})"
    )


def _capitalise(clause: str) -> str:
    return clause[:1].upper() + clause[1:]


def _check_placement(placement: PlacementView) -> int:
    """Return the node count after checking the holders name only nodes in range."""
    nodes = placement.nodes
    if nodes < 1:
        raise ValueError(f"placement.nodes must be >= 1, got {nodes!r}")
    if len(placement.holders) != nodes:
        raise ValueError(
            f"placement.holders must have one entry per node ({nodes}), "
            f"got {len(placement.holders)}"
        )
    for owner, holders in enumerate(placement.holders):
        for holder in holders:
            if not 0 <= holder < nodes:
                raise ValueError(
                    f"placement.holders[{owner}] must name nodes in [0, {nodes}), got {holder!r}"
                )
    return nodes


def _check_failures(failed: Mapping[int, FailureKind], nodes: int) -> frozenset[int]:
    """Return the nodes lost to hardware failures after checking ids and kinds."""
    for node, kind in failed.items():
        if not 0 <= node < nodes:
            raise ValueError(f"failed must name nodes in [0, {nodes}), got node {node!r}")
        if kind not in _FAILURE_KINDS:
            raise ValueError(f"failed[{node}] must be one of {_FAILURE_KINDS}, got {kind!r}")
    return frozenset(node for node, kind in failed.items() if kind == "hardware")


def _check_holdings(
    holdings: Mapping[int, Mapping[int, Iterable[int]]], nodes: int
) -> dict[tuple[int, int], frozenset[int]]:
    """Return ``{(holder, owner): iterations}`` after checking ids and iterations."""
    held: dict[tuple[int, int], frozenset[int]] = {}
    for holder, by_owner in holdings.items():
        if not 0 <= holder < nodes:
            raise ValueError(f"holdings must name holders in [0, {nodes}), got {holder!r}")
        for owner, iterations in by_owner.items():
            if not 0 <= owner < nodes:
                raise ValueError(
                    f"holdings[{holder}] must name owners in [0, {nodes}), got {owner!r}"
                )
            frozen = frozenset(iterations)
            if any(iteration < 0 for iteration in frozen):
                raise ValueError(
                    f"holdings[{holder}][{owner}] must hold iterations >= 0, got {sorted(frozen)}"
                )
            held[holder, owner] = frozen
    return held
