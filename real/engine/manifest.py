"""The manifest of one checkpoint shard, and the checksums that verify it.

A shard is the flat state of one rank (``real.engine.state.flatten_state``): tensors laid out back
to
back in a data region (each at a 64-byte aligned offset) and JSON values. The manifest, itself
JSON, says what is where::

    {"format": "gemini-shard/1", "iteration": 12, "rank": 3, "data_bytes": 4194368,
     "block_bytes": 1048576, "blocks": ["9f1c...", ...], "shard_checksum": "77ab...",
     "tensors": [{"name": "model/w", "dtype": "float32", "shape": [64, 64],
                  "offset": 0, "nbytes": 16384}, ...],
     "values": {"data/position": 1200, ...}}

Checksums are xxh3_64 (~28 GiB/s per core here): one per block of ``block_bytes`` of the data
region (the unit that a replica and a restore verify), and a shard checksum over the block
checksums. The slot header keeps the checksum of the manifest bytes themselves. No pickle.

xxh3 detects corruption, not forgery: anyone can compute it. Provenance comes from a keyed MAC,
the last field of the manifest::

    {... "values": {...},"mac":"<HMAC-SHA256(K_m, "gemini-shard/1\0" + body), hex>"}

where ``body`` is the manifest's JSON without the ``mac`` field (byte for byte what precedes
it, plus the closing brace) and ``K_m = HMAC-SHA256(job token, "gemini-manifest-key")`` (a key
of its own, so a manifest MAC never doubles as a connection proof). The body holds the block
checksums, so the MAC binds every data byte at the cost of hashing a few kilobytes: a store, a
disk or a network that does not know the job token cannot produce a shard that verifies, and
a restore (:func:`real.engine.restore.check_manifest`) refuses a manifest whose MAC is missing
or wrong before it looks at the data.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import xxhash

from shared.errors import VerificationError

if TYPE_CHECKING:
    import torch

FORMAT = "gemini-shard/1"
_MAC_LABEL = FORMAT.encode() + b"\0"
_MAC_HEAD = b',"mac":"'
_MAC_TAIL = b'"}'
_MAC_HEX = 64
TENSOR_ALIGN = 64
BLOCK_BYTES = 1 << 20
# The dtypes a manifest may name (checked without importing torch: the store never does).
DTYPES = frozenset(
    {
        "bool",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
        "complex128",
        "float8_e4m3fn",
        "float8_e5m2",
    }
)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass
class Manifest:
    """What a shard holds and how to verify it; serialised as JSON."""

    iteration: int
    rank: int
    tensors: list[TensorEntry]
    values: dict[str, Any]
    data_bytes: int
    block_bytes: int = BLOCK_BYTES
    blocks: list[str] = field(default_factory=list)
    shard_checksum: str = ""
    key: bytes | None = field(default=None, repr=False, compare=False)
    """The manifest key (:func:`manifest_key`); with it, ``to_bytes`` appends the MAC."""

    def to_bytes(self) -> bytes:
        """The manifest's JSON; with a ``key``, the MAC as its last field."""
        body = self._body()
        return body if self.key is None else sign(body, self.key)

    def _body(self) -> bytes:
        """The JSON object of every field but the MAC, in a fixed order (``tensors`` and
        ``values`` last). The ``tensors`` array is most of it and the same for every capture
        of one layout, so its encoding is kept (``_encoded_tensors``)."""
        head = {
            "format": FORMAT,
            "iteration": self.iteration,
            "rank": self.rank,
            "data_bytes": self.data_bytes,
            "block_bytes": self.block_bytes,
            "blocks": self.blocks,
            "shard_checksum": self.shard_checksum,
        }
        return b"".join(
            (
                json.dumps(head, separators=(",", ":")).encode()[:-1],
                b',"tensors":',
                _encoded_tensors(self.tensors),
                b',"values":',
                json.dumps(self.values, separators=(",", ":")).encode(),
                b"}",
            )
        )

    @classmethod
    def from_bytes(cls, raw: bytes, key: bytes | None = None, *, sealed: bool = True) -> Manifest:
        """Parse and check a manifest; raise VerificationError naming what is wrong.

        Args:
            raw: the manifest's bytes.
            key: the job's manifest key: the MAC must be present and right (provenance).
                None checks the structure only; every restore and every store passes a key.
            sealed: the block checksums must cover the data. False accepts a *layout*
                manifest (no checksums yet): what ``put_begin`` carries, so the first byte of
                a replica goes out before the data is hashed (the sealed manifest follows at
                ``put_end``).
        """
        if key is not None:
            authenticate(raw, key)
        split = _split_tensors(raw)
        try:
            doc = json.loads(raw if split is None else split[1])
            if doc.get("format") != FORMAT:
                raise VerificationError(f"manifest format {doc.get('format')!r}, want {FORMAT}")
            data_bytes = int(doc["data_bytes"])
            tensors = (
                _entries(doc["tensors"], data_bytes)
                if split is None
                else list(_repeated_entries(split[0], data_bytes))
            )
            manifest = cls(
                iteration=int(doc["iteration"]),
                rank=int(doc["rank"]),
                tensors=tensors,
                values=dict(doc["values"]),
                data_bytes=data_bytes,
                block_bytes=int(doc["block_bytes"]),
                blocks=[str(b) for b in doc["blocks"]],
                shard_checksum=str(doc["shard_checksum"]),
                key=key,
            )
        except VerificationError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise VerificationError(f"malformed manifest: {error}") from error
        if manifest.block_bytes <= 0:
            raise VerificationError("manifest block size must be positive")
        if (sealed or manifest.blocks) and len(manifest.blocks) != block_count(
            manifest.data_bytes, manifest.block_bytes
        ):
            raise VerificationError("manifest block checksums do not cover the data")
        return manifest

    def same_layout(self, other: Manifest) -> bool:
        """Whether ``other`` describes the same shard (all but the checksums)."""
        return (
            self.iteration == other.iteration
            and self.rank == other.rank
            and self.data_bytes == other.data_bytes
            and self.block_bytes == other.block_bytes
            and self.tensors == other.tensors
            and self.values == other.values
        )


def manifest_key(token: str) -> bytes:
    """The key of a job's manifest MACs, derived from its secret token."""
    return hmac.new(token.encode(), b"gemini-manifest-key", hashlib.sha256).digest()


_ENCODED: collections.OrderedDict[int, tuple[list[TensorEntry], tuple[Any, ...], bytes]] = (
    collections.OrderedDict()
)
_ENCODED_LOCK = threading.Lock()


def _ends(tensors: list[TensorEntry]) -> tuple[Any, ...]:
    return (len(tensors), tensors[0], tensors[-1]) if tensors else (0,)


def _encoded_tensors(tensors: list[TensorEntry]) -> bytes:
    """``tensors`` as a JSON array, kept for the few lists encoded last, by identity: a
    capturer reuses its layout's list (of frozen entries) for every capture while the layout
    holds. A list is not to change once encoded; one that grew or shrank is encoded anew."""
    with _ENCODED_LOCK:
        cached = _ENCODED.get(id(tensors))
        if cached is not None and cached[0] is tensors and cached[1] == _ends(tensors):
            _ENCODED.move_to_end(id(tensors))
            return cached[2]
    encoded = json.dumps(
        [
            {
                "name": t.name,
                "dtype": t.dtype,
                "shape": list(t.shape),
                "offset": t.offset,
                "nbytes": t.nbytes,
            }
            for t in tensors
        ],
        separators=(",", ":"),
    ).encode()
    with _ENCODED_LOCK:
        # The list itself is held, so no other list can take its id while it is cached.
        _ENCODED[id(tensors)] = (tensors, _ends(tensors), encoded)
        while len(_ENCODED) > 4:
            _ENCODED.popitem(last=False)
    return encoded


_TENSORS_HEAD = b',"tensors":['
_TENSORS_TAIL = b'],"values":'


def _split_tensors(raw: bytes) -> tuple[bytes, bytes] | None:
    """A manifest's ``tensors`` array and the rest of its document, as ``to_bytes`` writes
    them (``tensors`` right before ``values``); None for any other layout of the JSON.

    The array ends at the first ``],"values":`` after it starts: inside it, only names are
    free text, and a quote in a JSON string is always escaped."""
    start = raw.find(_TENSORS_HEAD)
    if start < 0:
        return None
    end = raw.find(_TENSORS_TAIL, start)
    if end < 0:
        return None
    return raw[start + len(_TENSORS_HEAD) - 1 : end + 1], raw[:start] + raw[end + 1 :]


def _entries(items: Any, data_bytes: int) -> list[TensorEntry]:
    """The tensor entries of a parsed ``tensors`` array, each checked to lie inside
    ``data_bytes`` with a known dtype."""
    tensors = [
        TensorEntry(
            str(t["name"]),
            str(t["dtype"]),
            tuple(int(d) for d in t["shape"]),
            int(t["offset"]),
            int(t["nbytes"]),
        )
        for t in items
    ]
    for t in tensors:
        if t.offset < 0 or t.offset + t.nbytes > data_bytes:
            raise VerificationError(f"manifest tensor {t.name!r} lies outside the data")
        if t.dtype not in DTYPES:
            raise VerificationError(f"manifest names an unknown dtype {t.dtype!r}")
    return tensors


@functools.lru_cache(maxsize=8)
def _repeated_entries(array: bytes, data_bytes: int) -> tuple[TensorEntry, ...]:
    """``_entries`` of a ``tensors`` array's bytes, kept for the last few: a store parses each
    replica's manifest twice per save (the layout at ``put_begin``, the sealed one at
    ``put_end``), and the array, most of a manifest's bytes (210 entries for a 4-layer GPT
    with AdamW: 0.8 ms to build), repeats from save to save while the state's layout holds."""
    return tuple(_entries(json.loads(array), data_bytes))


def _mac(body: bytes, key: bytes) -> bytes:
    return hmac.new(key, _MAC_LABEL + body, hashlib.sha256).hexdigest().encode()


def sign(body: bytes, key: bytes) -> bytes:
    """``body`` (a manifest's JSON object without a MAC) with its MAC as the last field."""
    if not body.endswith(b"}"):
        raise ValueError("a manifest body is a JSON object")
    return body[:-1] + _MAC_HEAD + _mac(body, key) + _MAC_TAIL


def authenticate(raw: bytes, key: bytes) -> None:
    """Raise VerificationError unless ``raw`` ends with the right MAC for ``key``."""
    size = len(_MAC_HEAD) + _MAC_HEX + len(_MAC_TAIL)
    if (
        len(raw) <= size
        or not raw.endswith(_MAC_TAIL)
        or raw[-size:][: len(_MAC_HEAD)] != _MAC_HEAD
    ):
        raise VerificationError(
            "manifest carries no MAC: it was not written by a checkpointer of this job"
        )
    body = raw[:-size] + b"}"
    if not hmac.compare_digest(raw[-size + len(_MAC_HEAD) : -len(_MAC_TAIL)], _mac(body, key)):
        raise VerificationError(
            "manifest MAC mismatch: the manifest was changed, or written with another job's token"
        )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_of(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise VerificationError(f"manifest names an unknown dtype {name!r}")
    return dtype


def layout(
    iteration: int,
    rank: int,
    tensors: dict[str, torch.Tensor],
    values: dict[str, Any],
    key: bytes | None = None,
) -> Manifest:
    """Plan the data region for ``tensors``: offsets only, checksums come after the copy.

    ``key``: the job's manifest key (:func:`manifest_key`), so that the sealed manifest's
    bytes carry their MAC.
    """
    entries, offset = [], 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        entries.append(
            TensorEntry(name, dtype_name(tensor.dtype), tuple(tensor.shape), offset, nbytes)
        )
        offset = -(-(offset + nbytes) // TENSOR_ALIGN) * TENSOR_ALIGN
    json.dumps(values)  # fail early, naming nothing pickled: values must be JSON
    return Manifest(iteration, rank, entries, values, data_bytes=offset, key=key)


def block_count(data_bytes: int, block_bytes: int) -> int:
    return -(-data_bytes // block_bytes)


def checksum(data: memoryview | bytes) -> str:
    return xxhash.xxh3_64_hexdigest(data)


def block_checksums(data: memoryview, block_bytes: int = BLOCK_BYTES) -> list[str]:
    """xxh3_64 of every block of ``data``."""
    return [
        checksum(data[start : start + block_bytes]) for start in range(0, len(data), block_bytes)
    ]


def seal(manifest: Manifest, data: memoryview) -> None:
    """Fill in the block and shard checksums of the data just written."""
    manifest.blocks = block_checksums(data[: manifest.data_bytes], manifest.block_bytes)
    manifest.shard_checksum = checksum("".join(manifest.blocks).encode())


class BlockHasher:
    """The block checksums of a shard, computed from its pieces as they pass by.

    A sender hashes each piece right after the kernel copied it into the socket, a receiver
    right after the kernel wrote it into place: the bytes are hashed while they are in cache,
    in the same pass that moves them, instead of in a pass of their own. Pieces of one block
    must come in order to be hashed on the fly (xxh3's streaming state); a block whose pieces
    come out of order, or twice, is hashed from the data at :meth:`finish`, so the result is
    always right.

    Args:
        data_bytes, block_bytes: the shard's size and block size (the manifest's).
    """

    def __init__(self, data_bytes: int, block_bytes: int = BLOCK_BYTES) -> None:
        self.data_bytes, self.block_bytes = data_bytes, block_bytes
        self.digests: list[str | None] = [None] * block_count(data_bytes, block_bytes)
        self._open: dict[int, tuple[Any, int]] = {}  # block -> (xxh3 state, next offset)
        self._late: set[int] = set()

    def update(self, offset: int, piece: memoryview | bytes) -> None:
        """Account for the bytes ``[offset, offset + len(piece))`` of the data region."""
        block, size, end = self.block_bytes, self.data_bytes, offset + len(piece)
        position = offset
        while position < end:
            index = position // block
            start, stop = index * block, min(index * block + block, size)
            high = min(end, stop)
            part = piece[position - offset : high - offset]
            state = self._open.get(index)
            if index in self._late or self.digests[index] is not None:
                self._late.add(index)  # a block seen twice: hash it whole at the end
            elif state is None and position == start:
                if high == stop:  # the whole block in one piece
                    self.digests[index] = xxhash.xxh3_64_hexdigest(part)
                else:
                    hasher = xxhash.xxh3_64()
                    hasher.update(part)
                    self._open[index] = (hasher, high)
            elif state is not None and state[1] == position:
                state[0].update(part)
                if high == stop:
                    self.digests[index] = state[0].hexdigest()
                    del self._open[index]
                else:
                    self._open[index] = (state[0], high)
            else:  # out of order: hash it whole at the end
                self._open.pop(index, None)
                self._late.add(index)
            position = high

    def finish(self, data: memoryview | None = None) -> list[str]:
        """Every block's checksum; blocks not hashed on the fly are hashed from ``data``.

        Raises:
            ValueError: a block was not hashed on the fly and no ``data`` was given.
        """
        out = []
        for index, digest in enumerate(self.digests):
            if digest is None or index in self._late:
                if data is None:
                    raise ValueError(f"block {index} was not hashed on the fly")
                start = index * self.block_bytes
                digest = checksum(data[start : min(start + self.block_bytes, self.data_bytes)])
            out.append(digest)
        return out

    def mismatches(self, manifest: Manifest, data: memoryview | None = None) -> list[str]:
        """The blocks (``block I (bytes A..B)``) whose checksums differ from ``manifest``'s."""
        bad = []
        for index, (got, want) in enumerate(zip(self.finish(data), manifest.blocks, strict=True)):
            if got != want:
                start = index * self.block_bytes
                end = min(start + self.block_bytes, self.data_bytes)
                bad.append(f"block {index} (bytes {start}..{end})")
        return bad


def seal_with(manifest: Manifest, digests: list[str]) -> None:
    """Fill in the block checksums computed elsewhere (a :class:`BlockHasher`) and the shard's."""
    manifest.blocks = list(digests)
    manifest.shard_checksum = checksum("".join(manifest.blocks).encode())


def verify(manifest: Manifest, data: memoryview) -> None:
    """Raise VerificationError unless ``data`` matches every block checksum of ``manifest``."""
    if len(data) < manifest.data_bytes:
        raise VerificationError(f"data has {len(data)} bytes, manifest says {manifest.data_bytes}")
    if checksum("".join(manifest.blocks).encode()) != manifest.shard_checksum:
        raise VerificationError("shard checksum does not match the block checksums")
    for index, (start, want) in enumerate(
        zip(range(0, manifest.data_bytes, manifest.block_bytes), manifest.blocks, strict=True)
    ):
        end = min(start + manifest.block_bytes, manifest.data_bytes)
        if checksum(data[start:end]) != want:
            raise VerificationError(f"block {index} (bytes {start}..{end}) checksum mismatch")


def tensor_views(entries: list[TensorEntry], data: torch.Tensor) -> list[torch.Tensor | None]:
    """Each entry's tensor as a view of ``data`` (uint8, a shard's data region), typed and
    shaped as the entry says; None for an entry of no bytes.

    One ``as_strided`` per tensor over one typed view of the region per dtype, where a slice
    and two views made three torch calls per tensor: a restore makes these for every tensor
    of the state right after a failure (the capture once per slot and layout). The views and
    names of a 64 MiB restore of 32 tensors, 0.32-0.50 ms with three calls, read 0.27-0.38 ms
    with one (``benchmarks/engine_costs.py``; docs/engine.md). ``as_strided`` checks that
    each view lies inside the region's storage.

    Raises:
        VerificationError: an entry's offset is not a multiple of its element size (no
            capture writes one: tensors start at 64-byte boundaries).
    """
    typed: dict[str, torch.Tensor] = {}
    out: list[torch.Tensor | None] = []
    for t in entries:
        if not t.nbytes:
            out.append(None)
            continue
        base = typed.get(t.dtype)
        if base is None:
            dtype = dtype_of(t.dtype)
            base = typed[t.dtype] = data[: data.numel() - data.numel() % dtype.itemsize].view(dtype)
        if t.offset % base.itemsize:
            raise VerificationError(f"manifest tensor {t.name!r} is not aligned to its dtype")
        strides, step = [], 1
        for size in reversed(t.shape):
            strides.append(step)
            step *= size
        strides.reverse()
        start = base.storage_offset() + t.offset // base.itemsize
        out.append(base.as_strided(t.shape, strides, start))
    return out


def tensors_from(manifest: Manifest, data: torch.Tensor, *, copy: bool) -> dict[str, torch.Tensor]:
    """The tensors of a verified shard, as views of ``data`` (uint8) or as fresh copies."""
    import torch

    out = {}
    for t, view in zip(manifest.tensors, tensor_views(manifest.tensors, data), strict=True):
        tensor = view if view is not None else torch.empty(t.shape, dtype=dtype_of(t.dtype))
        out[t.name] = tensor.clone() if copy else tensor
    return out
