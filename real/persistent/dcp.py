"""Save and load a training state in torch.distributed.checkpoint (DCP) layout.

``save_persistent`` is synchronous and collective over the ranks; ``load_persistent``
reads one rank's state back. The layout and what is trusted: ``real.persistent``.
"""

from __future__ import annotations

import logging
import posixpath
import time
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from real.engine.state import SEPARATOR, flatten_state, unflatten_state
from real.persistent.metadata import (
    metadata_key,
)
from real.persistent.storage import (
    FORMAT,
    INDEX_NAME,
    PersistentStorage,
    iteration_folder,
    world_size_refusal,
)
from shared.errors import CheckpointMismatchError

logger = logging.getLogger(__name__)

SHARED_KEYS = ("model", "optim")
DEFAULT_KEEP = 2


def _dcp_key(path: str, rank: int) -> str:
    top = path.split(SEPARATOR, 1)[0]
    dotted = path.replace(SEPARATOR, ".")
    return dotted if top in SHARED_KEYS else f"ranks.{rank}.{dotted}"


def _to_dcp(tensors: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for path, tensor in tensors.items():
        key = _dcp_key(path, rank)
        if key in flat:
            raise ValueError(f"state paths collide in DCP as {key!r}; rename a key")
        flat[key] = tensor
    return flat


def _group_kwargs(process_group: dist.ProcessGroup | None) -> dict[str, Any]:
    if dist.is_available() and dist.is_initialized():
        return {"process_group": process_group}
    return {"no_dist": True}


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_persistent(
    url: str,
    iteration: int,
    state: Mapping[str, Any],
    *,
    process_group: dist.ProcessGroup | None = None,
    storage_options: Mapping[str, Any] | None = None,
    keep: int | None = DEFAULT_KEEP,
    key: str | bytes | None = None,
) -> int:
    """Write ``state`` of ``iteration`` to the tier; collective over ``process_group``.

    Every rank calls it with its own state; it returns when the checkpoint is complete and
    listed in the index. The tensors are read during the call (they may be live: the caller
    must not step the model until it returns).

    Args:
        keep: complete checkpoints to keep (older ones are deleted); None keeps all.
        key: the key of the ``.metadata`` sidecar (default: :func:`metadata_key`'s).

    Returns:
        The bytes of tensors this rank handed to DCP.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be 1 or more (or None for all), got {keep}")
    storage = PersistentStorage(url, storage_options)
    key, source = metadata_key(key)  # before writing anything: no key, no checkpoint
    rank, _ = _rank_and_world()
    group = _group_kwargs(process_group)
    folder = iteration_folder(iteration)
    if rank == 0:
        index = storage.read_index()
        if any(int(e["iteration"]) == iteration for e in index["complete"]):
            # Re-saving an iteration (after a rollback): unlist it before overwriting it.
            index["complete"] = [e for e in index["complete"] if int(e["iteration"]) != iteration]
            storage.write_json(INDEX_NAME, index)
    tensors, values = flatten_state(state)
    try:
        dcp_save(
            _to_dcp(tensors, rank),
            storage_writer=storage.writer(iteration),
            # A tensor every rank holds under the same name (a DDP model's, a plain
            # optimizer's) is written once, and DCP's default spreads those writes over the
            # ranks. The copies need not be equal: a DDP model's BatchNorm statistics are each
            # rank's own until DDP broadcasts rank 0's at the next forward, so only rank 0's
            # are the run's. Rank 0 writes them (found by a user's model with BatchNorm:
            # restored from this tier on 2 ranks, it ended with other statistics than a run
            # without the failure, 2026-12-06).
            planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True),
            **group,
        )
    except CheckpointException as error:  # a BaseException: make it an ordinary error
        raise RuntimeError(
            f"rank {rank}: writing iteration {iteration} to {url} failed: {error}"
        ) from error
    if rank == 0:  # DCP's coordinator wrote .metadata before save returned
        storage.sign_metadata(iteration, key, source)
    storage.write_json(
        posixpath.join(folder, f"rank_{rank}.json"),
        {
            "iteration": iteration,
            "rank": rank,
            "values": values,
            "tensors": {path: _dcp_key(path, rank) for path in tensors},
        },
    )
    if "no_dist" not in group:
        dist.barrier(group=process_group)  # every rank's files are written
    if rank == 0:
        _advertise(storage, iteration, keep)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _advertise(storage: PersistentStorage, iteration: int, keep: int | None) -> None:
    _, world_size = _rank_and_world()
    index = storage.read_index()
    complete = [e for e in index["complete"] if int(e["iteration"]) != iteration]
    complete.append(
        {
            "iteration": iteration,
            "folder": iteration_folder(iteration),
            "world_size": world_size,
            "time": time.time(),
        }
    )
    complete.sort(key=lambda e: int(e["iteration"]))
    dropped = complete[:-keep] if keep is not None else []
    complete = complete[len(dropped) :]
    storage.write_json(INDEX_NAME, {"format": FORMAT, "complete": complete})
    old = [entry["folder"] for entry in dropped]
    known = {entry["folder"] for entry in complete}.union(old)
    # A save a failure interrupted (its folder never listed, no .metadata or some ranks'
    # files missing) is abandoned once a later iteration is complete: the job's one writer
    # saves iterations in order, so nothing still writes it. Newer unlisted folders stay.
    newest = iteration_folder(iteration)
    abandoned = [n for n in _iteration_folders(storage) if n not in known and n < newest]
    for folder in [*old, *abandoned]:  # unlisted first, deleted after: no dangling entry
        try:
            storage.remove(folder)
        except OSError as error:
            logger.warning("could not delete old checkpoint %s: %s", folder, error)


def _iteration_folders(storage: PersistentStorage) -> list[str]:
    """The names of the iteration folders in the tier (listed or not)."""
    try:
        entries = storage.fs.ls(storage.root, detail=False)
    except OSError:
        return []
    names = [posixpath.basename(str(entry).rstrip("/")) for entry in entries]
    return [n for n in names if n.startswith("iter_") and n[len("iter_") :].isdigit()]


def load_persistent(
    url: str,
    iteration: int,
    template_state: Mapping[str, Any] | None = None,
    *,
    rank: int | None = None,
    process_group: dist.ProcessGroup | None = None,
    storage_options: Mapping[str, Any] | None = None,
    key: str | bytes | None = None,
) -> dict[str, Any]:
    """Read this rank's state of iteration ``iteration``.

    Args:
        url: the tier.
        iteration: a complete iteration (listed in the index).
        template_state: this rank's state of the same structure (``Trainer.state()``): its
            tensors give shapes, dtypes and shardings (DTensors load as this rank's shards) and
            are not modified; stored tensors it lacks are read whole, as stored; the load is
            collective when a process group is initialised.
            None: no template, no collective: every tensor is read whole, as stored (under
            FSDP2 the global tensors; ``Trainer.load_state`` takes those too).
        rank: whose per-rank values to read (default: this process's rank).
        process_group: group for DCP's collectives (with a template).
        storage_options: fsspec options.
        key: the key of the ``.metadata`` sidecar (default: :func:`metadata_key`'s).

    Raises:
        FileNotFoundError: the index does not list ``iteration``.
        MetadataVerificationError: DCP's ``.metadata`` has no sidecar, or it does not verify
            (nothing was unpickled).
        ValueError: the checkpoint lacks a tensor of the template or this rank's values, or
            no key is set.
        CheckpointMismatchError: a job's restore (a process group, or no ``rank`` given)
            of a checkpoint another world size wrote.
    """
    storage = PersistentStorage(url, storage_options)
    secret = metadata_key(key)[0]
    listed = {int(e["iteration"]): e for e in storage.read_index()["complete"]}
    if iteration not in listed:
        raise FileNotFoundError(
            f"{url} holds no complete checkpoint of iteration {iteration} (complete: "
            f"{sorted(listed) or 'none'})"
        )
    joined = dist.is_available() and dist.is_initialized()
    if joined or rank is None:  # a job's restore, not a reader's of one rank's values
        refusal = world_size_refusal(url, listed[iteration], _rank_and_world()[1])
        if refusal is not None:  # every rank refuses alike
            raise CheckpointMismatchError(refusal)
    # Refuse here, with a plain error, what the reader would refuse inside DCP (which wraps
    # it); the reader still checks the very bytes it unpickles.
    storage.verify_metadata(iteration, secret)
    rank = _rank_and_world()[0] if rank is None else rank
    try:
        sidecar = storage.read_json(
            posixpath.join(iteration_folder(iteration), f"rank_{rank}.json")
        )
    except FileNotFoundError as error:
        raise ValueError(
            f"{url}/{iteration_folder(iteration)} has no values for rank {rank}; it was "
            "written by a job with fewer ranks"
        ) from error
    if template_state is not None:
        tensors, _ = flatten_state(template_state)
        stored = sidecar["tensors"]
        # Only what the checkpoint holds (a state saved before the optimizer's first step has
        # none of its tensors, and a survivor's template has them); a stored tensor the
        # template lacks is read whole, as stored.
        fresh = {path: torch.empty_like(t) for path, t in tensors.items() if path in stored}
        missing = {p: k for p, k in stored.items() if p not in fresh}
        if missing:
            fresh.update(_allocate_as_stored(storage, iteration, missing, secret))
        group = _group_kwargs(process_group)
    else:
        fresh = _allocate_as_stored(storage, iteration, sidecar["tensors"], secret)
        group = {"no_dist": True}
    try:
        with warnings.catch_warnings():
            # Without a template every rank reads whole tensors alone, on purpose: DCP's
            # warning that it assumes one process (the job's group is up) says nothing true.
            warnings.filterwarnings(
                "ignore", message="torch.distributed is disabled", category=UserWarning
            )
            dcp_load(
                _to_dcp(fresh, rank), storage_reader=storage.reader(iteration, secret), **group
            )
    except (Exception, CheckpointException) as error:
        raise ValueError(
            f"cannot load iteration {iteration} from {url} into this rank's state: {error}"
        ) from error
    return unflatten_state(fresh, sidecar["values"])


def _allocate_as_stored(
    storage: PersistentStorage, iteration: int, paths: Mapping[str, str], secret: bytes
) -> dict[str, torch.Tensor]:
    """Empty tensors for ``{state path: DCP key}``, shaped as the checkpoint stores them."""
    stored = storage.reader(iteration, secret).read_metadata().state_dict_metadata
    fresh = {}
    for path, key in paths.items():
        entry = stored.get(key)
        if not isinstance(entry, TensorStorageMetadata):
            raise ValueError(f"iteration {iteration} in {storage.url} lacks the tensor {key!r}")
        fresh[path] = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
    return fresh
