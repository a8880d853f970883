"""Restore: one iteration for every rank, each shard from the best tier that verifies.

The decision (which iteration, which source per node) is ``shared.recovery.plan_recovery``'s.
Its inputs come from the stores: each rank asks every node store which iterations it holds,
per owner rank (``holdings``): committed ones, and with ``checkpoint.commit: on_arrival`` also
those complete but not committed (an owner's finished capture, a verified replica: see
``real.engine.shm``); a node holds iteration ``i`` of node ``o`` when it holds ``i`` for every
local rank of ``o``. Stores that do not answer count as lost (hardware).
Every rank computes the plan from the same answers; to be sure, the plans are compared through
an ``all_gather`` of int64 tensors (never pickle) and rank 0's wins a disagreement.

Then each rank fetches its own shard: from its node's slot (``local``: mapped, no network), from
a named peer's store (``peer``: over TCP), or from persistent storage (``persistent``:
``real.persistent.dcp.load_persistent``). Every shard is verified before use: the manifest's
checksum, its MAC with the job's manifest key (provenance: a manifest the job did not write, or
one changed without the key, is refused before its data is looked at), its structure, and every
data block against the checksums the MAC covers. A shard that fails is invalidated in its store,
logged with node/rank/iteration/reason, and the next holder of the same iteration is tried. If a
rank runs out of holders, all ranks plan again (the invalidated copy no longer counts), which
may roll everyone back to an older iteration or to persistent storage: never a mix of
iterations.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import xxhash

from real.engine.client import StoreClient
from real.engine.costs import Costs
from real.engine.manifest import Manifest, tensors_from, verify
from real.engine.shm import Slot, held_slot, to_unsigned
from real.engine.state import flatten_state, unflatten_state
from shared.errors import ReadCancelled, VerificationError
from shared.placement import Placement
from shared.recovery import RecoveryPlan, Source, Tier, plan_recovery

log = logging.getLogger(__name__)
TIER_CODES: dict[Tier, int] = {"local": 0, "peer": 1, "persistent": 2}


@dataclass(frozen=True)
class Survey:
    """What the stores hold: per holder node, per owner rank, the iterations held (committed,
    or also complete: see `survey`)."""

    by_rank: dict[int, dict[int, set[int]]]
    lost: set[int]

    def node_holdings(self, nodes: int, per_node: int) -> dict[int, dict[int, set[int]]]:
        """``holdings[holder][owner node]``: iterations held for every rank of the owner."""
        out: dict[int, dict[int, set[int]]] = {}
        for holder, ranks in self.by_rank.items():
            for owner in range(nodes):
                sets = [ranks.get(owner * per_node + r, set()) for r in range(per_node)]
                common = set.intersection(*sets) if sets else set()
                if common:
                    out.setdefault(holder, {})[owner] = common
        return out


def survey(
    clients: Callable[[int], StoreClient | None], nodes: int, complete: bool = False
) -> Survey:
    """Ask every node's store what it holds (``complete``: also what is complete but not
    committed); unreachable stores count as lost."""
    by_rank: dict[int, dict[int, set[int]]] = {}
    lost = set()
    for node in range(nodes):
        client = clients(node)
        try:
            if client is None:
                raise ConnectionError("no connection")
            held = client.holdings(complete=complete)
            by_rank[node] = {owner: set(its) for owner, its in held.items()}
        except (OSError, RuntimeError) as error:
            log.warning(
                "node %d store unreachable during restore (counted as lost): %s", node, error
            )
            lost.add(node)
    return Survey(by_rank, lost)


def decide(
    placement: Placement, found: Survey, per_node: int, persistent_iteration: int | None
) -> RecoveryPlan:
    holdings = found.node_holdings(placement.nodes, per_node)
    failed: dict[int, Any] = dict.fromkeys(found.lost, "hardware")
    return plan_recovery(placement, failed, holdings, persistent_iteration)


def agree(plan: RecoveryPlan, nodes: int, group: Any = None) -> RecoveryPlan:
    """Make sure every rank uses the same plan (rank 0's when they differ).

    ``group``: a gloo process group (CPU tensors); None: no process group, nothing to agree.
    """
    import torch.distributed as dist

    if group is None or dist.get_world_size(group) == 1:
        return plan
    mine = encode(plan, nodes)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine, group=group)
    if all(torch.equal(g, gathered[0]) for g in gathered):
        return plan
    log.warning(
        "ranks computed different recovery plans (stores changed while asked); using rank 0's"
    )
    return decode(gathered[0], nodes, reason="rank 0's plan")


def encode(plan: RecoveryPlan, nodes: int) -> torch.Tensor:
    values = [-1 if plan.iteration is None else plan.iteration, int(plan.rollback)]
    for node in range(nodes):
        source = plan.sources[node] if plan.sources else None
        values += (
            [-1, -1]
            if source is None
            else [TIER_CODES[source.tier], -1 if source.from_node is None else source.from_node]
        )
    return torch.tensor(values, dtype=torch.int64)


def decode(encoded: torch.Tensor, nodes: int, reason: str) -> RecoveryPlan:
    values = encoded.tolist()
    tiers: dict[int, Tier] = {code: tier for tier, code in TIER_CODES.items()}
    iteration = None if values[0] < 0 else values[0]
    sources = (
        tuple(
            Source(
                n, tiers[values[2 + 2 * n]], None if values[3 + 2 * n] < 0 else values[3 + 2 * n]
            )
            for n in range(nodes)
        )
        if iteration is not None
        else ()
    )
    return RecoveryPlan(iteration, sources, bool(values[1]), reason)


def plan_from_json(document: Mapping[str, Any]) -> RecoveryPlan:
    """An explicit plan from the root agent: ``{"iteration": i, "sources": [{"node": ..,
    "tier": .., "from_node": ..}, ...]}``."""
    iteration = document.get("iteration")
    sources = tuple(
        Source(int(s["node"]), s["tier"], s.get("from_node")) for s in document.get("sources", [])
    )
    return RecoveryPlan(
        None if iteration is None else int(iteration),
        sources,
        bool(document.get("rollback", False)),
        "explicit plan",
    )


def all_reduce_int(value: int, op: str, group: Any) -> int:
    """``value`` reduced (``"min"`` or ``"max"``) over ``group``'s ranks; itself without one.

    Every rank sends its value straight to every other (``all_to_all_single``) and reduces
    what it receives, rather than ``all_reduce``: gloo reduces a small tensor around a ring,
    2(n - 1) hops one after another, each waiting for the next rank to be scheduled, while
    here a rank waits only for every other to have sent. ``benchmarks/agreement.py``, the
    last of n ranks arriving 50 ms late and the others training once agreed (2026-12-05, 2
    cores, medians of 20): the last rank agreed 25.7 ms after that arrival around the ring and
    17.1 ms with this at n = 8, 9.9 and 8.8 ms at n = 4. n - 1 tiny messages per rank: on
    thousands of ranks the ring's 2(n - 1) latencies in a row cost more than they do.
    """
    import torch.distributed as dist

    if group is None:
        return value
    world = dist.get_world_size(group)
    received = torch.empty(world, dtype=torch.int64)
    dist.all_to_all_single(received, torch.full((world,), value, dtype=torch.int64), group=group)
    return int((received.min() if op == "min" else received.max()).item())


def read_local(
    slots: list[Slot | None],
    rank: int,
    iteration: int,
    key: bytes | None = None,
    *,
    into: Mapping[str, Any] | None = None,
    verify_data: bool = True,
    costs: Costs | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """This rank's shard from its own node's slot.

    Args:
        key: the job's manifest key (default: the one the capturer gave the slots it mapped).
        into: the live state (the model's and optimizer's tensors): each tensor of the shard
            is copied straight from the slot into the live tensor of the same name, dtype and
            shape (one copy, no fresh tensor); the rest become fresh tensors. None: fresh
            tensors for everything (a caller with no state yet).
        verify_data: hash every block against the manifest before the copy. False trusts the
            data of a slot written by this job: its manifest, checksum and MAC are still checked
            (anyone able to change the slot file runs as the job's user and can read its token,
            so the block hashes would add no protection against a writer, only against memory
            corruption the hardware's ECC already catches). Only False can restore a slot that
            is complete but not yet sealed (captured, its checksums not computed yet).
        cancelled: asked before each tensor's copy; true stops the read there.

    Raises:
        VerificationError: no committed or complete slot holds ``iteration``, no key is known,
            or the manifest (MAC, structure) or a block does not verify (or cannot: not sealed).
        ReadCancelled: ``cancelled()`` became true.
    """
    slot = held_slot(slots, iteration)
    if slot is None:
        raise VerificationError(f"no committed slot holds iteration {iteration}")
    key = key if key is not None else slot.manifest_key
    if key is None:
        raise VerificationError(
            f"no manifest key to verify {slot.path.name} with: map slots through a Capturer "
            "(it knows the job's token) or pass key="
        )
    costs = costs or Costs()
    with costs.timed("restore: manifest checksum, MAC, layout (fixed)"):
        state = slot.state()
        raw = slot.manifest_bytes()
        manifest = check_manifest(
            raw, to_unsigned(state.manifest_checksum), rank, iteration, key, sealed=False
        )
    if verify_data and not manifest.blocks:
        raise VerificationError(
            f"no committed copy of iteration {iteration} to verify: it is captured but its "
            "checksums are not computed yet"
        )
    if not manifest.blocks and state.committed:
        raise VerificationError("manifest block checksums do not cover the data")
    if verify_data:
        with costs.timed("restore: verify every block (hash)", manifest.data_bytes):
            verify(manifest, slot.data(manifest.data_bytes))
    data = slot.data_tensor(manifest.data_bytes)
    return unflatten_state(load_tensors(manifest, data, into, costs, cancelled), manifest.values)


def load_tensors(
    manifest: Manifest,
    data: torch.Tensor,
    into: Mapping[str, Any] | None,
    costs: Costs | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """The shard's tensors, copied from ``data`` (uint8, the slot's data region) into the live
    tensors of ``into`` where name, dtype and shape match, else into fresh tensors; raises
    ``ReadCancelled`` before a tensor once ``cancelled()`` is true."""
    started = time.perf_counter()
    live = live_tensors(into)
    views = tensors_from(manifest, data, copy=False)
    out: dict[str, torch.Tensor] = {}
    copied = cloned = 0
    copy_s = clone_s = 0.0
    with torch.no_grad():
        for entry in manifest.tensors:
            if cancelled is not None and cancelled():
                raise ReadCancelled(f"read of {manifest.iteration} stopped at {entry.name}")
            view = views[entry.name]
            target = live.get(entry.name)
            began = time.perf_counter()
            if target is not None and fits(target, view.dtype, entry.shape):
                _local(target).copy_(view)
                out[entry.name] = target
                copied += entry.nbytes
                copy_s += time.perf_counter() - began
            else:
                out[entry.name] = view.clone()
                cloned += entry.nbytes
                clone_s += time.perf_counter() - began
    if costs is not None:
        if copied:
            costs.add("restore: copy into the live tensors", copy_s, copied)
        if cloned:
            costs.add("restore: clone into fresh tensors", clone_s, cloned)
        costs.add("restore: views, names (fixed)", time.perf_counter() - started - copy_s - clone_s)
    return out


def live_tensors(state: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """The tensors of a live state by flat name (``real.engine.state.flatten_state``)."""
    return {} if state is None else flatten_state(state)[0]


def fits(tensor: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
    """Whether a checkpointed tensor of ``dtype`` and ``shape`` can be restored into ``tensor``
    (not a meta tensor: a copy into one does nothing, and the restore would hand back no data)."""
    local = _local(tensor)
    return (
        local.dtype == dtype and tuple(local.shape) == tuple(shape) and local.device.type != "meta"
    )


def _local(tensor: torch.Tensor) -> torch.Tensor:
    to_local = getattr(tensor, "to_local", None)  # a DTensor: its shard, as captured
    return to_local() if callable(to_local) else tensor


def read_peer(
    client: StoreClient,
    rank: int,
    iteration: int,
    *,
    into: Mapping[str, Any] | None = None,
    costs: Costs | None = None,
) -> dict[str, Any]:
    """This rank's shard from a peer's store over TCP, verified with the job's manifest key
    (the client's: the store proved it knows the same token when the client connected).

    The data streams from the socket straight into the live tensors of ``into`` (contiguous CPU
    tensors of the same name, dtype and shape; the others get fresh CPU tensors, copied into
    the live ones once verified) and each block is hashed right after it arrived, while in
    cache. A block that fails raises VerificationError *after* the live tensors were written:
    the caller must restore them from another source (the checkpointer does).
    """
    live = live_tensors(into)
    return client.get_into(
        rank,
        iteration,
        lambda raw, want: check_manifest(raw, want, rank, iteration, client.manifest_key),
        live,
        costs,
    )


def check_manifest(
    raw: bytes, want: int, rank: int, iteration: int, key: bytes, *, sealed: bool = True
) -> Manifest:
    """The parsed manifest, once its checksum, its MAC under ``key`` (the job's manifest key,
    :func:`real.engine.manifest.manifest_key`), its structure and its rank and iteration are
    right; VerificationError naming the first thing that is not. ``sealed=False`` also accepts
    a layout manifest without block checksums (a capture not sealed yet)."""
    if xxhash.xxh3_64_intdigest(raw) != want:
        raise VerificationError("manifest checksum mismatch")
    manifest = Manifest.from_bytes(raw, key=key, sealed=sealed)
    if (manifest.rank, manifest.iteration) != (rank, iteration):
        raise VerificationError(
            f"manifest is rank {manifest.rank} iteration "
            f"{manifest.iteration}, expected rank {rank} iteration "
            f"{iteration}"
        )
    return manifest


def load_persistent_state(url: str, iteration: int, template: Any) -> Mapping[str, Any]:
    from real.persistent.dcp import load_persistent  # the persistent tier is optional here

    return load_persistent(url, iteration, template)
