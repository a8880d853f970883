"""Where each node's in-memory checkpoint is replicated.

Every iteration, each of the ``nodes`` (N) nodes keeps its checkpoint in its own CPU memory and
sends copies to ``replicas - 1`` peers, so that ``replicas`` (m) nodes hold it in all. A
*placement* says, for every node, which nodes hold its checkpoint. After a failure, a lost node's
state is fetched from any surviving holder; only when every holder of some checkpoint is lost does
the job fall back to persistent storage (see :mod:`shared.probability`).

Strategies (docs/design.md section 3):

* ``group``: m must divide N. The nodes form N/m groups of consecutive ranks ({0..m-1},
  {m..2m-1}, ...); each node sends to the other m-1 members of its group. A checkpoint is lost
  only when a whole group is lost.
* ``ring``: node i sends to i+1, ..., i+m-1 (mod N). A checkpoint is lost when m consecutive
  nodes of the ring are lost.
* ``mixed``: floor(N/m)-1 groups of m, and a ring of the last N-m(floor(N/m)-1) nodes (between
  m and 2m-1 of them). N=5, m=2: group {0,1}, ring {2,3,4}.
* ``auto``: ``group`` when m divides N, else ``mixed``.
* ``explicit``: the caller lists every node's holders (e.g. from a scenario file).

In group, ring and mixed placements every checkpoint has exactly m holders, and every node sends
and receives exactly m-1 copies.

*Failure domains* (racks, switches) fail together. Given ``domains[i]``, the name of node i's
domain, :func:`plan_placement` keeps the shape of the strategy but chooses which nodes form each
group or ring so that no two holders of one checkpoint share a domain. The construction sorts the
nodes by domain (largest domain first) and deals them, in that order, across the rows of a grid:
row b takes every q-th node starting at b. A domain then puts at most one node in each row, and
the rows, read one after another, become the groups (q = N/m rows) or the ring (q = floor(N/m)
rows). This separates the domains whenever that is possible at all: for groups, when no domain
has more than N/m nodes; for a ring, when none has more than floor(N/m); for mixed, when the ring
part can take one node from each of its r largest domains and no domain then keeps more nodes
than there are groups. When it is impossible, the placement is still valid; ``domain_conflicts``
lists the nodes whose holders share a domain and ``note`` says why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

Strategy = Literal["group", "ring", "mixed", "auto", "explicit"]
"""Placement strategy names accepted by :func:`plan_placement`."""

_STRATEGIES: tuple[str, ...] = get_args(Strategy)


@dataclass(frozen=True, slots=True)
class Placement:
    """Which nodes hold each node's in-memory checkpoint.

    Attributes:
        nodes: N, the number of nodes (ranks 0..N-1).
        replicas: m, copies of each node's checkpoint, the node's own copy included.
        strategy: the strategy used: "group", "ring", "mixed" or "explicit" ("auto" resolves to
            "group" or "mixed"; a failure-domain aware placement keeps the base name).
        holders: holders[i] lists the m distinct nodes holding node i's checkpoint, node i first.
        groups: the placement groups, a partition of the nodes. A ring (pure, or the ring part of
            mixed) is one entry, in ring order. For explicit placements: the connected components
            of the holder relation, each sorted.
        domain_conflicts: nodes whose holders share a failure domain, sorted (empty when domains
            were not given or are all separated).
        note: human-readable remarks, e.g. why failure domains could not be separated.
    """

    nodes: int
    replicas: int
    strategy: str
    holders: tuple[tuple[int, ...], ...]
    groups: tuple[tuple[int, ...], ...]
    domain_conflicts: tuple[int, ...] = ()
    note: str = ""
    _group_index: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n, m = self.nodes, self.replicas
        if n < 1:
            raise ValueError(f"nodes must be at least 1, got {n}")
        if not 1 <= m <= n:
            raise ValueError(f"replicas must be between 1 and nodes ({n}), got {m}")
        holders = tuple(tuple(int(x) for x in h) for h in self.holders)
        groups = tuple(tuple(int(x) for x in g) for g in self.groups)
        if len(holders) != n:
            raise ValueError(f"holders must list one entry per node ({n}), got {len(holders)}")
        for node, entry in enumerate(holders):
            _check_holders(node, entry, n, m)
        index = [-1] * n
        for position, group in enumerate(groups):
            for member in group:
                if not 0 <= member < n or index[member] != -1:
                    raise ValueError(
                        f"groups must partition the nodes 0..{n - 1}; node {member} is out of "
                        "range or in two groups"
                    )
                index[member] = position
        if -1 in index:
            raise ValueError(f"groups must cover every node; node {index.index(-1)} is missing")
        object.__setattr__(self, "holders", holders)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "domain_conflicts", tuple(sorted(self.domain_conflicts)))
        object.__setattr__(self, "_group_index", tuple(index))

    def peers_of(self, node: int) -> tuple[int, ...]:
        """Nodes that ``node`` sends its checkpoint to (its holders other than itself)."""
        return self.holders[self._node(node)][1:]

    def replicas_held_by(self, node: int) -> tuple[int, ...]:
        """Owners, other than ``node``, whose checkpoints ``node`` holds, sorted."""
        node = self._node(node)
        return tuple(o for o, h in enumerate(self.holders) if o != node and node in h[1:])

    def group_of(self, node: int) -> tuple[int, ...]:
        """The entry of :attr:`groups` that contains ``node``."""
        return self.groups[self._group_index[self._node(node)]]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; holders are keyed by the node number as a string."""
        return {
            "nodes": self.nodes,
            "replicas": self.replicas,
            "strategy": self.strategy,
            "holders": {str(i): list(h) for i, h in enumerate(self.holders)},
            "groups": [list(g) for g in self.groups],
            "domain_conflicts": list(self.domain_conflicts),
            "note": self.note,
        }

    def _node(self, node: int) -> int:
        if not 0 <= node < self.nodes:
            raise ValueError(f"node must be between 0 and {self.nodes - 1}, got {node}")
        return node


def plan_placement(
    nodes: int,
    replicas: int,
    strategy: Strategy = "auto",
    *,
    domains: Sequence[str] | None = None,
    explicit: Sequence[Sequence[int]] | None = None,
) -> Placement:
    """Decide which nodes hold each node's checkpoint.

    Args:
        nodes: N, number of nodes, at least 1.
        replicas: m, copies of each checkpoint including the node's own, 1..N.
        strategy: "group" (needs m | N), "ring", "mixed", "auto" (group if m | N, else mixed)
            or "explicit".
        domains: optional failure domain (rack, switch) name of each node, length N. Groups and
            rings are then formed so that holders of a checkpoint are in distinct domains where
            possible; see the module docstring.
        explicit: with strategy "explicit", explicit[i] lists node i's holders. Node i may be
            listed first (then m entries) or left out, in which case it is prepended (then m-1
            entries); anywhere else in the list it is an error.

    Returns:
        The placement; ``domain_conflicts`` and ``note`` report domains that could not be
        separated.

    Raises:
        ValueError: for N < 1, m outside 1..N, an unknown strategy, group with m not dividing N,
            domains of the wrong length, or explicit holders that are missing or malformed.
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be an integer of at least 1, got {nodes!r}")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= nodes:
        raise ValueError(f"replicas must be between 1 and nodes ({nodes}), got {replicas!r}")
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(_STRATEGIES)}; got {strategy!r}")
    if domains is not None:
        domains = [str(d) for d in domains]
        if len(domains) != nodes:
            raise ValueError(
                f"domains must name one failure domain per node ({nodes}), got {len(domains)}"
            )
    if (strategy == "explicit") != (explicit is not None):
        raise ValueError(
            "explicit holders are required with strategy 'explicit' and allowed only with it"
        )
    if explicit is not None:
        return _explicit_placement(nodes, replicas, explicit, domains)
    if strategy == "auto":
        strategy = "group" if nodes % replicas == 0 else "mixed"
    if strategy == "group" and nodes % replicas:
        raise ValueError(
            f"group placement needs replicas ({replicas}) to divide nodes ({nodes}); "
            "use strategy 'mixed' or 'auto'"
        )
    parts = _layout(list(range(nodes)), replicas, strategy)
    plain = _build(nodes, replicas, strategy, parts, domains, note="")
    if domains is None or not plain.domain_conflicts:
        return plain
    reason = _infeasibility(nodes, replicas, strategy, domains)
    aware = _build(
        nodes, replicas, strategy, _domain_parts(replicas, strategy, domains), domains, note=""
    )
    best = aware if len(aware.domain_conflicts) <= len(plain.domain_conflicts) else plain
    if best.domain_conflicts:
        note = (
            f"failure domains could not be separated for {len(best.domain_conflicts)} of "
            f"{nodes} checkpoints: {reason or 'no separating arrangement was found'}"
        )
    else:
        note = "nodes regrouped so that every checkpoint's holders are in distinct domains"
    return _build(nodes, replicas, strategy, best.groups, domains, note=note)


def _check_holders(node: int, entry: tuple[int, ...], nodes: int, replicas: int) -> None:
    if len(entry) != replicas:
        raise ValueError(
            f"node {node}: must have exactly replicas ({replicas}) holders including itself, "
            f"got {list(entry)}"
        )
    if entry[0] != node:
        raise ValueError(f"node {node}: its own copy must be listed first, got {list(entry)}")
    if len(set(entry)) != len(entry):
        raise ValueError(f"node {node}: holders must be distinct, got {list(entry)}")
    if any(not 0 <= h < nodes for h in entry):
        raise ValueError(f"node {node}: holders must be between 0 and {nodes - 1}, got {entry}")


def _layout(order: list[int], replicas: int, strategy: str) -> list[tuple[int, ...]]:
    """Cut a node order into the parts (groups and ring) of ``strategy``."""
    m = replicas
    if strategy == "group":
        return [tuple(sorted(order[i : i + m])) for i in range(0, len(order), m)]
    if strategy == "ring":
        return [tuple(order)]
    full_groups = len(order) // m - 1
    groups = [tuple(sorted(order[i * m : (i + 1) * m])) for i in range(full_groups)]
    return [*groups, tuple(order[full_groups * m :])]


def _build(
    nodes: int,
    replicas: int,
    strategy: str,
    parts: Sequence[tuple[int, ...]],
    domains: Sequence[str] | None,
    note: str,
) -> Placement:
    """Holders from parts: in a part of length L, a node's holders are it and its m-1 successors.

    A part of length m is a group (everyone holds everyone); a longer part is a ring.
    """
    holders: list[tuple[int, ...]] = [()] * nodes
    for part in parts:
        length = len(part)
        for p, node in enumerate(part):
            holders[node] = tuple(part[(p + j) % length] for j in range(replicas))
    groups = sorted(parts, key=lambda g: (len(g) != replicas, min(g)))
    return Placement(
        nodes=nodes,
        replicas=replicas,
        strategy=strategy,
        holders=tuple(holders),
        groups=tuple(groups),
        domain_conflicts=_conflicts(holders, domains),
        note=note,
    )


def _conflicts(holders: Sequence[Sequence[int]], domains: Sequence[str] | None) -> tuple[int, ...]:
    if domains is None:
        return ()
    return tuple(node for node, h in enumerate(holders) if len({domains[x] for x in h}) != len(h))


def _by_domain(nodes: Sequence[int], domains: Sequence[str]) -> list[int]:
    """Nodes sorted so that each domain is contiguous, largest domain first (ties: first seen)."""
    counts = Counter(domains[n] for n in nodes)
    first_seen: dict[str, int] = {}
    for n in nodes:
        first_seen.setdefault(domains[n], n)
    return sorted(nodes, key=lambda n: (-counts[domains[n]], first_seen[domains[n]], n))


def _deal(ordered: list[int], rows: int) -> list[list[int]]:
    """Deal nodes across ``rows`` rows: row b takes ordered[b], ordered[b + rows], ..."""
    return [ordered[b::rows] for b in range(rows)]


def _domain_parts(replicas: int, strategy: str, domains: Sequence[str]) -> list[tuple[int, ...]]:
    """Groups and ring formed so that holders are in distinct domains whenever possible.

    A domain occupies a contiguous run of at most ``rows`` nodes in the sorted order, hence at
    most one node per dealt row. Read row after row as a ring, a window of m nodes also never
    meets a domain twice when the largest domains come first (they never wrap between columns).
    """
    m = replicas
    everyone = _by_domain(range(len(domains)), domains)
    if strategy == "group":
        return [tuple(sorted(row)) for row in _deal(everyone, len(domains) // m)]
    if strategy == "ring":
        return [tuple(x for row in _deal(everyone, len(domains) // m) for x in row)]
    full_groups = len(domains) // m - 1
    ring_size = len(domains) - full_groups * m
    # The ring part is shorter than 2m, so any two of its nodes share some window of m: it needs
    # ring_size distinct domains. Take one node from each of the largest domains, which leaves
    # the smallest possible largest domain for the groups.
    pools: dict[str, list[int]] = {}
    for n in everyone:
        pools.setdefault(domains[n], []).append(n)
    ring: list[int] = []
    while len(ring) < ring_size:
        # One round: one node from each domain, fullest first (sorted() is stable, so ties keep
        # the largest-first order of ``everyone``).
        for name in sorted((d for d in pools if pools[d]), key=lambda d: -len(pools[d])):
            if len(ring) < ring_size:
                ring.append(pools[name].pop(0))
    taken = set(ring)
    remaining = [n for n in everyone if n not in taken]
    groups = [tuple(sorted(row)) for row in _deal(_by_domain(remaining, domains), full_groups)]
    return [*groups, tuple(ring)] if full_groups else [tuple(ring)]


def _infeasibility(nodes: int, replicas: int, strategy: str, domains: Sequence[str]) -> str:
    """Why no arrangement of ``strategy`` separates the domains ("" if one exists)."""
    m = replicas
    counts = Counter(domains)
    biggest, size = counts.most_common(1)[0]
    if len(counts) < m:
        return f"only {len(counts)} failure domains for {m} replicas"
    if strategy == "group" and size > nodes // m:
        return (
            f"domain {biggest!r} has {size} nodes, but {nodes // m} groups can separate at most "
            f"{nodes // m} nodes of one domain"
        )
    if strategy == "ring" and size > nodes // m:
        return (
            f"domain {biggest!r} has {size} nodes, but a ring of {nodes} with {m} replicas can "
            f"separate at most {nodes // m} nodes of one domain"
        )
    if strategy == "mixed":
        full_groups = nodes // m - 1
        ring_size = nodes - full_groups * m
        if len(counts) < ring_size:
            return (
                f"the ring part of mixed placement has {ring_size} nodes and needs as many "
                f"distinct domains, but there are only {len(counts)}"
            )
        left = sorted(counts.values(), reverse=True)
        left = [c - 1 for c in left[:ring_size]] + left[ring_size:]
        if max(left) > full_groups:
            return (
                f"after the ring part takes one node from each of its {ring_size} largest "
                f"domains, a domain keeps {max(left)} nodes for {full_groups} groups"
            )
    return ""


def _explicit_placement(
    nodes: int,
    replicas: int,
    explicit: Sequence[Sequence[int]],
    domains: Sequence[str] | None,
) -> Placement:
    if len(explicit) != nodes:
        raise ValueError(
            f"explicit must list the holders of every node ({nodes} entries), got {len(explicit)}"
        )
    holders: list[tuple[int, ...]] = []
    problems: list[str] = []  # every bad row at once, not the first alone
    for node, entry in enumerate(explicit):
        listed = [int(x) for x in entry]
        if node not in listed:
            listed.insert(0, node)
        elif listed[0] != node:
            problems.append(
                f"explicit[{node}]: node {node} must be listed first or left out (it is then "
                f"prepended), got {list(entry)}"
            )
            continue
        try:
            _check_holders(node, tuple(listed), nodes, replicas)
        except ValueError as e:
            problems.append(f"explicit[{node}]: {e}")
        holders.append(tuple(listed))
    if problems:
        raise ValueError("; ".join(problems))
    # Groups of an explicit placement: connected components of "holds a copy of".
    parent = list(range(nodes))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for node, h in enumerate(holders):
        for peer in h[1:]:
            parent[root(peer)] = root(node)
    components: dict[int, list[int]] = {}
    for node in range(nodes):
        components.setdefault(root(node), []).append(node)
    conflicts = _conflicts(holders, domains)
    note = (
        f"explicit holders share a failure domain for {len(conflicts)} of {nodes} checkpoints"
        if conflicts
        else ""
    )
    return Placement(
        nodes=nodes,
        replicas=replicas,
        strategy="explicit",
        holders=tuple(holders),
        groups=tuple(sorted(tuple(c) for c in components.values())),
        domain_conflicts=conflicts,
        note=note,
    )
