"""The persistent tier's storage: a folder of checkpoints behind fsspec (a path or any
URL), its index of complete checkpoints, and the optional bandwidth throttle."""

from __future__ import annotations

import functools
import json
import os
import posixpath
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import fsspec

from real.persistent.throttle import (
    Throttle,
    ThrottledFileSystem,
    process_throttle,
    storage_rate_from_env,
)
from real.runtime.env import GEMINI_STORAGE_OPTIONS

if TYPE_CHECKING:
    # DCP (torch.distributed.checkpoint, and torch with it) is imported where a checkpoint is
    # written, read or signed, not here: reading the index is all a root agent needs to plan a
    # recovery, and an agent that imported DCP paid seconds of CPU at start.
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

INDEX_NAME = "index.json"


FORMAT = "gemini-ckpt-persistent/1"


STORAGE_OPTIONS_ENV = GEMINI_STORAGE_OPTIONS


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
        from real.persistent.metadata import (
            METADATA_MAC_FORMAT,
            METADATA_MAC_SUFFIX,
            METADATA_NAME,
            metadata_mac,
        )

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
        from real.persistent.metadata import METADATA_MAC_SUFFIX, METADATA_NAME, check_metadata

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
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        writer = FsspecWriter(self.checkpoint_url(iteration), **self.storage_options)
        if self.throttle is not None:
            _throttle_dcp(writer, self.throttle)
        return writer

    def reader(self, iteration: int, key: bytes | None = None) -> FsspecReader:
        """DCP's reader of ``iteration``, which unpickles ``.metadata`` only once its keyed
        sidecar verifies (key: :func:`real.persistent.metadata.metadata_key`)."""
        from real.persistent.metadata import VerifiedFsspecReader, metadata_key

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


@functools.lru_cache(maxsize=4)
def index_reader(url: str) -> PersistentStorage:
    """One reader of the tier at ``url`` (options from the environment) for the whole process.

    The root agent reads the index at every recovery, each time from a new thread, and fsspec
    keeps a filesystem instance per thread: an object store's client would be built anew each
    time (its session, credentials and endpoint data: 0.2 s for s3fs in v07's recovery). An
    fsspec filesystem's synchronous calls may come from any thread."""
    return PersistentStorage(url)


def world_size_refusal(url: str, entry: Mapping[str, Any], world: int) -> str | None:
    """Why a job of ``world`` ranks may not restore the checkpoint of the index's ``entry``
    (written by a job of another world size: each rank's values, its data position and RNG,
    are its own, so some would be lost or read twice), or None."""
    written_by = entry.get("world_size")
    if written_by is None or int(written_by) == world:
        return None
    return (
        f"{url}/{iteration_folder(int(entry['iteration']))} was written by a job of "
        f"{written_by} ranks; this job has {world}: restore it with {written_by} ranks, or "
        "give this job a storage URL (cluster.storage.url) or run folder of its own"
    )


def latest_persistent_iteration(
    url: str, storage_options: Mapping[str, Any] | None = None
) -> int | None:
    """The newest complete iteration in the tier at ``url``, or None. Without
    ``storage_options`` (the environment's), through the process's ``index_reader``."""
    tier = index_reader(url) if storage_options is None else PersistentStorage(url, storage_options)
    complete = tier.read_index()["complete"]
    return max((int(entry["iteration"]) for entry in complete), default=None)
