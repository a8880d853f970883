"""The persistent tier: training state in torch.distributed.checkpoint (DCP) layout via fsspec.

A checkpoint of iteration N lives in ``<url>/iter_<N, 10 digits>/``:

- the DCP files (``.metadata``, ``__<rank>_0.distcp``) holding every tensor of the state, so
  plain ``torch.distributed.checkpoint.load`` reads it (``{"model": model.state_dict()}``
  loads the weights; FSDP2's DTensor shards are stored as one global tensor and reshard on
  load). Tensors under the *shared* top-level keys (``model``, ``optim``) are stored under
  their dotted path (``model.blocks.0.fc.weight``): DTensors as shards, plain tensors once
  (DCP keeps one copy of a tensor every rank holds, as under DDP). Every other tensor is the
  rank's own (generator states, say) and lives under ``ranks.<rank>.<path>``;
- ``rank_<r>.json``, each rank's JSON values (optimizer hyper-parameters, data position,
  schedule, iteration) and the DCP key of each of its tensors, written aside and renamed,
  never pickle.

DCP's ``.metadata`` is a pickle, and unpickling runs code of the file's choosing, so it is
loaded only after a keyed sidecar vouches for it: rank 0 writes ``.metadata.hmac`` beside it
(JSON: ``{"format", "algorithm": "HMAC-SHA256", "key": <which variable>, "mac"}``, the MAC of
``"gemini-dcp-metadata/1\0" + <the .metadata bytes>``), and every load here reads the bytes,
checks the MAC (``hmac.compare_digest``) and only then unpickles those same bytes
(:class:`VerifiedFsspecReader`); a missing or wrong sidecar is refused with
:class:`MetadataVerificationError`. The key (:func:`metadata_key`): ``GEMINI_PERSISTENT_KEY``
when set (a secret that outlives one job, so a later job can load this one's checkpoints), else
the job's token ``GEMINI_TOKEN``, else this user's key file
(``~/.config/gemini-ckpt/persistent.key``, made on first use, mode 0600). What is trusted:
whoever knows the key. The tensor files are read by DCP with ``torch.load(weights_only=True)``,
which builds tensors only, and everything else is JSON.

``<url>/index.json`` lists the complete checkpoints. Rank 0 rewrites it (atomically: aside and
renamed locally, one PUT on object stores) only after every rank has finished writing, so a
crash at any moment never advertises a partial checkpoint; readers trust only the index.
Older checkpoints beyond ``keep`` are deleted after the index stops listing them.

``url`` is a local path or any fsspec URL (``s3://bucket/prefix``, ``file://``, ...);
``storage_options`` go to fsspec; when none are given they are read as JSON from the
``GEMINI_STORAGE_OPTIONS`` environment variable, so processes started by an agent inherit them
(for an S3 endpoint such as ``rclone serve s3``: ``{"key": ..., "secret": ...,
"client_kwargs": {"endpoint_url": ...}}``, and set ``AWS_RESPONSE_CHECKSUM_VALIDATION=
when_required``; DESIGN 6).

``save_persistent`` is synchronous and collective over the ranks; ``BackgroundPersister``
runs it in a thread so training never waits for storage.

**Emulated storage bandwidth**: ``real.throttle`` (``cluster.storage.emulate_bandwidth``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pickle
import posixpath
import secrets
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import torch
import torch.distributed as dist
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from real.eventlog import EventLog
from real.state import SEPARATOR, flatten_state, unflatten_state
from real.throttle import Throttle, ThrottledFileSystem, process_throttle, storage_rate_from_env

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
FORMAT = "gemini-ckpt-persistent/1"
SHARED_KEYS = ("model", "optim")
DEFAULT_KEEP = 2
STORAGE_OPTIONS_ENV = "GEMINI_STORAGE_OPTIONS"
KEY_ENV, TOKEN_ENV = "GEMINI_PERSISTENT_KEY", "GEMINI_TOKEN"
METADATA_NAME = ".metadata"
METADATA_MAC_SUFFIX = ".hmac"
METADATA_MAC_FORMAT = "gemini-dcp-metadata-hmac/1"
_METADATA_LABEL = b"gemini-dcp-metadata/1\0"


class MetadataVerificationError(ValueError):
    """A persistent checkpoint's DCP metadata has no valid keyed sidecar: it is not unpickled."""


def user_key_path() -> Path:
    """This user's default sidecar key: ``$XDG_CONFIG_HOME/gemini-ckpt/persistent.key``."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "gemini-ckpt" / "persistent.key"


def _user_key() -> bytes:
    """This user's key file, created (32 random bytes, hex, mode 0600) on first use."""
    path = user_key_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        aside = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        try:
            os.link(aside, path)  # atomic, and never replaces a key another process made
        except FileExistsError:
            pass
        finally:
            aside.unlink()
    if path.stat().st_mode & 0o077:
        raise ValueError(
            f"{path} is readable or writable by others: chmod 600 it, or set {KEY_ENV}"
        )
    return path.read_text().strip().encode()


def metadata_key(key: str | bytes | None = None) -> tuple[bytes, str]:
    """The key of the ``.metadata`` sidecars and where it came from.

    In order: ``key``; ``GEMINI_PERSISTENT_KEY`` (a secret shared by every job that reads the
    checkpoints: a later job, with a new token, can then load them); the job's token
    ``GEMINI_TOKEN``; this user's key file (:func:`user_key_path`, created on first use: a
    checkpoint is then trusted by whoever can read that file, on a cluster typically a shared
    home directory).

    Raises:
        ValueError: the user's key file is open to other users.
    """
    if key is not None:
        return (key.encode() if isinstance(key, str) else key), "explicit"
    for name in (KEY_ENV, TOKEN_ENV):
        value = os.environ.get(name, "")
        if value:
            return value.encode(), name
    return _user_key(), str(user_key_path())


def metadata_mac(metadata: bytes, key: bytes) -> str:
    """HMAC-SHA256 of DCP ``.metadata`` bytes, hex."""
    return hmac.new(key, _METADATA_LABEL + metadata, hashlib.sha256).hexdigest()


def check_metadata(metadata: bytes, sidecar: bytes | None, key: bytes, where: str) -> None:
    """Raise MetadataVerificationError unless ``sidecar`` holds the MAC of ``metadata``."""
    if sidecar is None:
        raise MetadataVerificationError(
            f"{where}: no {METADATA_NAME}{METADATA_MAC_SUFFIX}: refusing to unpickle a DCP "
            "metadata file nobody vouched for (written by another tool, or incomplete)"
        )
    try:
        document = json.loads(sidecar)
        mac = document["mac"] if document.get("format") == METADATA_MAC_FORMAT else None
    except (ValueError, TypeError, KeyError, AttributeError):
        mac = None
    if not isinstance(mac, str) or not hmac.compare_digest(
        mac.encode(), metadata_mac(metadata, key).encode()
    ):
        raise MetadataVerificationError(
            f"{where}: {METADATA_NAME} does not match its keyed sidecar: it was changed, or "
            f"written with another key (set {KEY_ENV} to the writer's); refusing to unpickle it"
        )


class VerifiedFsspecReader(FsspecReader):
    """DCP's fsspec reader, whose ``read_metadata`` unpickles only verified bytes.

    Args:
        path: the checkpoint folder's URL.
        key: the sidecar key (see :func:`metadata_key`).
        **kwargs: fsspec options.
    """

    def __init__(self, path: str, key: bytes, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._key = key

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as handle:
            raw = handle.read()
        try:
            with self.fs.create_stream(f"{path}{METADATA_MAC_SUFFIX}", "rb") as handle:
                sidecar: bytes | None = handle.read()
        except FileNotFoundError:
            sidecar = None
        check_metadata(raw, sidecar, self._key, str(self.path))
        metadata: Metadata = pickle.loads(raw)  # the bytes just verified, as DCP would
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        assert metadata.storage_meta is not None
        metadata.storage_meta.load_id = self.load_id
        return metadata


def iteration_folder(iteration: int) -> str:
    """Folder name of iteration ``iteration``'s checkpoint."""
    return f"iter_{iteration:010d}"


class PersistentStorage:
    """A persistent tier location: an fsspec filesystem and a root path in it.

    Args:
        url: local path or fsspec URL.
        storage_options: fsspec options (credentials, endpoint); default: the JSON object in
            ``GEMINI_STORAGE_OPTIONS``, else none.
        rate_bytes_per_s: emulated bandwidth of this process (every byte of the files read or
            written is paced by the process-wide throttle of that rate); default:
            ``GEMINI_STORAGE_RATE``, else unlimited.
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        rate_bytes_per_s: float | None = None,
    ) -> None:
        if not url:
            raise ValueError("the persistent tier needs a URL or path (cluster.storage.url)")
        self.url = url.rstrip("/")
        self.storage_options = dict(
            storage_options if storage_options is not None else storage_options_from_env()
        )
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.local = "file" in _protocols(self.fs)
        rate = rate_bytes_per_s if rate_bytes_per_s is not None else storage_rate_from_env()
        self.throttle = process_throttle(rate) if rate is not None else None
        if self.throttle is not None:
            self.fs = ThrottledFileSystem(self.fs, self.throttle)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def checkpoint_url(self, iteration: int) -> str:
        return f"{self.url}/{iteration_folder(iteration)}"

    def read_index(self) -> dict[str, Any]:
        """The index (``{"format", "complete": [{"iteration", "folder", ...}]}``)."""
        path = self.path(INDEX_NAME)
        try:
            with self.fs.open(path, "rb") as handle:
                index = json.loads(handle.read().decode("utf-8"))
        except FileNotFoundError:
            return {"format": FORMAT, "complete": []}
        if index.get("format") != FORMAT:
            raise ValueError(f"{self.url}/{INDEX_NAME} is not a {FORMAT} index")
        return dict(index)

    def write_json(self, relative_path: str, value: Any) -> None:
        """Write JSON atomically: aside and renamed on local disks, one PUT on object stores."""
        data = json.dumps(value, indent=1).encode("utf-8")
        path = self.path(relative_path)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            temporary = f"{path}.tmp{os.getpid()}"
            began = self.throttle.clock() if self.throttle is not None else 0.0
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
            if self.throttle is not None:
                self.throttle.account(len(data), began)
        else:
            self.fs.pipe_file(path, data)

    def sign_metadata(self, iteration: int, key: bytes, source: str) -> None:
        """Write ``.metadata.hmac`` for ``iteration``'s ``.metadata`` (rank 0, after DCP)."""
        path = self.path(iteration_folder(iteration), METADATA_NAME)
        with self.fs.open(path, "rb") as handle:
            raw = handle.read()
        document = {
            "format": METADATA_MAC_FORMAT,
            "algorithm": "HMAC-SHA256",
            "key": source,
            "mac": metadata_mac(raw, key),
        }
        self.write_json(
            posixpath.join(iteration_folder(iteration), METADATA_NAME + METADATA_MAC_SUFFIX),
            document,
        )

    def verify_metadata(self, iteration: int, key: bytes) -> None:
        """Raise MetadataVerificationError unless ``iteration``'s ``.metadata`` matches its
        keyed sidecar (nothing is unpickled)."""
        path = self.path(iteration_folder(iteration), METADATA_NAME)
        with self.fs.open(path, "rb") as handle:
            raw = handle.read()
        try:
            with self.fs.open(path + METADATA_MAC_SUFFIX, "rb") as handle:
                sidecar: bytes | None = handle.read()
        except FileNotFoundError:
            sidecar = None
        check_metadata(raw, sidecar, key, self.checkpoint_url(iteration))

    def read_json(self, relative_path: str) -> Any:
        with self.fs.open(self.path(relative_path), "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))

    def remove(self, relative_path: str) -> None:
        path = self.path(relative_path)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def writer(self, iteration: int) -> FsspecWriter:
        writer = FsspecWriter(self.checkpoint_url(iteration), **self.storage_options)
        if self.throttle is not None:
            _throttle_dcp(writer, self.throttle)
        return writer

    def reader(self, iteration: int, key: bytes | None = None) -> FsspecReader:
        """DCP's reader of ``iteration``, which unpickles ``.metadata`` only once its keyed
        sidecar verifies (key: :func:`metadata_key`)."""
        reader = VerifiedFsspecReader(
            self.checkpoint_url(iteration),
            key if key is not None else metadata_key()[0],
            **self.storage_options,
        )
        if self.throttle is not None:
            _throttle_dcp(reader, self.throttle)
        return reader


def _throttle_dcp(storage: FsspecWriter | FsspecReader, throttle: Throttle) -> None:
    """Route DCP's streams (``storage.fs.create_stream`` opens ``storage.fs.fs``) through
    ``throttle``."""
    dcp_fs: Any = storage.fs
    dcp_fs.fs = ThrottledFileSystem(dcp_fs.fs, throttle)


def storage_options_from_env() -> dict[str, Any]:
    """fsspec options from ``GEMINI_STORAGE_OPTIONS`` (a JSON object), or none.

    Raises:
        ValueError: the variable is not a JSON object.
    """
    text = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{STORAGE_OPTIONS_ENV} is not valid JSON: {error}") from error
    if not isinstance(options, dict):
        raise ValueError(f"{STORAGE_OPTIONS_ENV} must hold a JSON object of fsspec options")
    return options


def _protocols(fs: Any) -> set[str]:
    protocol = fs.protocol
    return set(protocol) if isinstance(protocol, tuple | list) else {protocol}


def latest_persistent_iteration(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> int | None:
    """The newest complete iteration in the tier at ``url``, or None."""
    complete = PersistentStorage(url, storage_options).read_index()["complete"]
    return max((int(entry["iteration"]) for entry in complete), default=None)


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


def gloo_group(*, dedicated: bool = False) -> dist.ProcessGroup | None:
    """A process group for DCP's CPU-side collectives (a collective call on every rank).

    Args:
        dedicated: always a new group. A background thread needs one of its own: collectives
            of two threads on one group would interleave differently on different ranks.

    Returns:
        None (the default group) when that is gloo and ``dedicated`` is false; a new gloo group
        otherwise (NCCL cannot carry DCP's object collectives without a device); None outside
        a distributed job.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if dist.get_backend() == "gloo" and not dedicated:
        return None
    from real.procgroup import new_gloo_group

    return new_gloo_group()


def save_persistent_logged(
    event_log: EventLog,
    url: str,
    iteration: int,
    state: Mapping[str, Any],
    *,
    blocking: bool,
    process_group: dist.ProcessGroup | None,
    storage_options: Mapping[str, Any] | None,
    keep: int | None,
    key: str | bytes | None = None,
) -> int:
    """:func:`save_persistent` between ``persist_begin`` and ``persist_done`` events (with the
    seconds and bytes; ``blocking``: training waits for it); returns the bytes written."""
    event_log.emit("persist_begin", iteration=iteration, url=url, blocking=blocking)
    start = time.perf_counter()
    size = save_persistent(
        url,
        iteration,
        state,
        process_group=process_group,
        storage_options=storage_options,
        keep=keep,
        key=key,
    )
    event_log.emit(
        "persist_done",
        iteration=iteration,
        url=url,
        seconds=time.perf_counter() - start,
        bytes=size,
        blocking=blocking,
    )
    return size


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
        dcp_save(_to_dcp(tensors, rank), storage_writer=storage.writer(iteration), **group)
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
    for entry in dropped:  # unlisted first, deleted after: a reader never follows a dangling entry
        try:
            storage.remove(entry["folder"])
        except OSError as error:
            logger.warning("could not delete old checkpoint %s: %s", entry["folder"], error)


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
            are not modified; the load is collective when a process group is initialised.
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
    """
    storage = PersistentStorage(url, storage_options)
    secret = metadata_key(key)[0]
    listed = {int(e["iteration"]) for e in storage.read_index()["complete"]}
    if iteration not in listed:
        raise FileNotFoundError(
            f"{url} holds no complete checkpoint of iteration {iteration} (complete: "
            f"{sorted(listed) or 'none'})"
        )
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
        fresh = {path: torch.empty_like(t) for path, t in tensors.items()}
        group = _group_kwargs(process_group)
    else:
        fresh = _allocate_as_stored(storage, iteration, sidecar["tensors"], secret)
        group = {"no_dist": True}
    try:
        dcp_load(_to_dcp(fresh, rank), storage_reader=storage.reader(iteration, secret), **group)
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


class BackgroundPersister:
    """Writes states to the persistent tier in a background thread.

    ``submit`` hands over a state (already copied: the persister keeps a reference and reads
    it later) and returns at once. One save is in flight at a time; a newer submission
    supersedes the ones still queued. With several ranks the ranks agree, before each save, on
    the iteration to write (the oldest of the ranks' newest submissions; every rank still
    holds it), so all ranks write the same checkpoint even when their threads run at
    different paces.

    Construct it on every rank at the same point (it may create a gloo process group).

    Args:
        url: the tier's location.
        storage_options: fsspec options.
        event_log: where persist_begin / persist_done events go.
        keep: complete checkpoints to keep.
        process_group: group for DCP's collectives, used by no other thread (default: a new
            gloo group).
        key: the key of the ``.metadata`` sidecars (default: :func:`metadata_key`'s).
    """

    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        event_log: EventLog | None = None,
        keep: int | None = DEFAULT_KEEP,
        process_group: dist.ProcessGroup | None = None,
        key: str | bytes | None = None,
    ) -> None:
        PersistentStorage(url, storage_options)  # fail now on a bad URL, not in the thread
        self._key = metadata_key(key)[0] if key is not None else None
        self.url = url
        self.storage_options = None if storage_options is None else dict(storage_options)
        self.event_log = event_log or EventLog(None, time.time())
        self.keep = keep
        self.rank, self.world_size = _rank_and_world()
        self._group = process_group if process_group is not None else gloo_group(dedicated=True)
        self._distributed = dist.is_available() and dist.is_initialized()
        self._pending: dict[int, Mapping[str, Any]] = {}
        self._condition = threading.Condition()
        self._stopping = False
        self._busy = False
        self.last_persisted: int | None = None
        self.errors: list[str] = []
        self._thread = threading.Thread(
            target=self._run, name=f"persister-rank{self.rank}", daemon=True
        )
        self._thread.start()

    def submit(self, iteration: int, state: Mapping[str, Any]) -> None:
        """Queue ``state`` of ``iteration`` for writing; returns at once."""
        with self._condition:
            if self._stopping:
                raise RuntimeError("submit() after close() of the background persister")
            self._pending[iteration] = state
            self._condition.notify_all()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted state is written or superseded; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._condition:
            while self._pending or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def close(self, timeout_s: float = 300.0) -> None:
        """Write what is queued (bounded wait), then stop the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning(
                "rank %d: background persister still writing after %.0f s; abandoning it",
                self.rank,
                timeout_s,
            )

    def abandon(self, timeout_s: float = 5.0) -> None:
        """Drop what is queued and stop (a failure stopped the job); a write in flight is left
        to fail with its group."""
        with self._condition:
            self._stopping = True
            self._pending.clear()
            self._condition.notify_all()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._stopping:
                    self._condition.wait()
                if not self._pending:
                    return
                newest = max(self._pending)
                self._busy = True
            try:
                target = self._agree(newest)
                with self._condition:
                    state = self._pending.pop(target)
                    for older in [i for i in self._pending if i < target]:
                        del self._pending[older]
                self._persist(target, state)
            except Exception as error:  # record and go on: the next checkpoint may succeed
                logger.exception("rank %d: background persist failed", self.rank)
                self.errors.append(f"{type(error).__name__}: {error}")
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def _agree(self, newest: int) -> int:
        if not self._distributed:
            return newest
        value = torch.tensor([newest], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self._group)
        return int(value.item())

    def _persist(self, iteration: int, state: Mapping[str, Any]) -> None:
        save_persistent_logged(
            self.event_log,
            self.url,
            iteration,
            state,
            blocking=False,
            process_group=self._group,
            storage_options=self.storage_options,
            keep=self.keep,
            key=self._key,
        )
        self.last_persisted = iteration
