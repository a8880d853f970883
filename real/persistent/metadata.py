"""DCP's ``.metadata`` is a pickle: its keyed sidecar ``.metadata.hmac``, written beside
it and checked before it is unpickled (the format: ``real.persistent``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import secrets
from pathlib import Path
from typing import Any

from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from real.runtime.env import GEMINI_PERSISTENT_KEY, GEMINI_TOKEN
from shared.errors import MetadataVerificationError

KEY_ENV, TOKEN_ENV = GEMINI_PERSISTENT_KEY, GEMINI_TOKEN


METADATA_NAME = ".metadata"


METADATA_MAC_SUFFIX = ".hmac"


METADATA_MAC_FORMAT = "gemini-dcp-metadata-hmac/1"


_METADATA_LABEL = b"gemini-dcp-metadata/1\0"


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
