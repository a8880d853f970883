"""The store's side of one connection: the operations a client may ask for.

A replica arrives as ``put_begin`` (the layout manifest: tensors, values, no checksums yet),
any number of ``put_chunk`` frames (each a byte range of the data) and ``put_end`` (the sealed
manifest: block and shard checksums). Each chunk is received straight into the replica slot in
pieces that end at block boundaries, and each piece is hashed (xxh3_64, streaming per 1 MiB
block) right after the kernel wrote it, from cache: every byte is received and hashed in one
pass. The sender hashed the same bytes the same way right after sending them, so neither side
makes a checksum pass of its own. Both manifests must carry the job's MAC
(:mod:`real.engine.manifest`) and describe the same shard: a store keeps only replicas its job
wrote. The replica is *prepared* when every byte arrived and every block and the shard checksum
match the sealed manifest; the store then writes that manifest into the slot and acks. It
becomes *committed* only on the owner's ``commit``, sent after the owner's own copy
committed, so a replica never runs ahead of a checkpoint that the owner could not finish.
Requests that break the rules (a chunk outside the data, a chunk without a transfer) raise
ProtocolError and end the connection.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, Protocol

import xxhash

from real.engine import protocol
from real.engine.costs import Costs
from real.engine.manifest import BlockHasher, Manifest, block_count, checksum
from real.engine.shm import Slot, next_generation, node_memory_bytes, to_unsigned
from shared.errors import ProtocolError, VerificationError

log = logging.getLogger(__name__)
# A sealed manifest's growth over its layout, per block: a quoted hex checksum and a comma.
SEALED_BYTES_PER_BLOCK = 20


class ReceiverStore(Protocol):
    """What a receiver uses of the node store it serves (``real.engine.store.NodeStore``), so
    that the two modules do not import each other."""

    def held_slot(self, owner: int, iteration: int) -> Slot | None: ...

    @property
    def costs(self) -> Costs: ...

    def ensure(
        self,
        owner: int,
        index: int,
        manifest_capacity: int,
        data_capacity: int,
        replace: bool = False,
    ) -> Slot: ...

    def holdings(self, complete: bool = False) -> dict[int, list[int]]: ...

    @property
    def lock(self) -> Any: ...

    @property
    def manifest_key(self) -> Any: ...

    def memory_bytes(self) -> int: ...

    @property
    def node(self) -> int: ...

    def pair(self, owner: int) -> list[Slot | None]: ...

    def replica_slot(
        self, owner: int, manifest_len: int, data_len: int, keep: int | None = None
    ) -> Slot: ...

    scratch: bytearray

    @property
    def slots(self) -> dict[int, list[Slot | None]]: ...


class Receiver:
    """Serves one authenticated connection of ``store``."""

    def __init__(self, store: ReceiverStore, conn: socket.socket) -> None:
        self.store = store
        self.conn = conn
        # The replica being received on this connection.
        self.owner = -1
        self.manifest: Manifest | None = None
        self.slot: Slot | None = None
        self.received = 0
        self.hasher: BlockHasher | None = None
        self.layout_raw = b""
        self.prepared: dict[tuple[int, int], Slot] = {}

    def reply(self, **fields: Any) -> None:
        protocol.send_frame(self.conn, {"op": "reply", **fields})

    def handle(self, header: dict[str, Any]) -> None:
        op = header["op"]
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise ProtocolError(f"unknown op {op!r}")
        handler(header)

    def _int(self, header: dict[str, Any], key: str) -> int:
        value = header.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProtocolError(f"{header['op']}: {key} must be an integer >= 0")
        return value

    def _no_payload(self, header: dict[str, Any]) -> None:
        if header.get("payload_bytes", 0):
            raise ProtocolError(f"{header['op']} takes no payload")

    # -- local trainers ---------------------------------------------------------------------

    def op_ping(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        self.reply(node=self.store.node)

    def op_ensure(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        index, owner = self._int(header, "index"), self._int(header, "owner")
        sizes = self._int(header, "manifest_capacity"), self._int(header, "data_capacity")
        if index > 1:
            raise ProtocolError("ensure: index must be 0 or 1")
        replace = header.get("replace", False)
        if not isinstance(replace, bool):
            raise ProtocolError("ensure: replace must be a boolean")
        try:
            slot = self.store.ensure(owner, index, *sizes, replace=replace)
        except (ValueError, OSError) as error:
            self.reply(ok=False, reason=str(error))
            return
        self.reply(ok=True, path=str(slot.path))

    def op_slots(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        pair = self.store.pair(self._int(header, "owner"))
        self.reply(paths=[None if s is None else str(s.path) for s in pair])

    def op_holdings(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        self.reply(
            holdings={str(k): v for k, v in self.store.holdings().items()},
            complete={str(k): v for k, v in self.store.holdings(complete=True).items()},
        )

    def op_stats(self, header: dict[str, Any]) -> None:

        self._no_payload(header)
        used, total = self.store.memory_bytes(), node_memory_bytes()
        self.reply(
            memory_bytes=used,
            node_memory_bytes=total,
            fraction=used / total,
            cpu_s=time.process_time(),
            costs=self.store.costs.snapshot(),
            slots=sum(s is not None for p in self.store.slots.values() for s in p),
        )

    def op_invalidate(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        owner, iteration = self._int(header, "owner"), self._int(header, "iteration")
        slot = self.store.held_slot(owner, iteration)
        if slot is not None:
            slot.invalidate()
            log.warning(
                "node %d store: rank %d iteration %d invalidated by a reader: %s",
                self.store.node,
                owner,
                iteration,
                header.get("reason", "?"),
            )
        self.reply(ok=slot is not None)

    def op_sink(self, header: dict[str, Any]) -> None:
        """Benchmarks: receive a payload into plain memory, the raw-TCP baseline."""
        size = self._int(header, "payload_bytes")
        if size > 1 << 31:
            raise ProtocolError("sink: at most 2 GiB")
        if len(self.store.scratch) < size:
            self.store.scratch = bytearray(size)  # zero-filled: pages already touched
        protocol.recv_into_exact(self.conn, memoryview(self.store.scratch)[:size])
        self.reply(ok=True)

    # -- replicas from peers ----------------------------------------------------------------

    def op_put_begin(self, header: dict[str, Any]) -> None:
        owner = self._int(header, "owner")
        size = self._int(header, "payload_bytes")
        raw = bytes(protocol.recv_exact(self.conn, size)) if size else b""
        try:
            # The layout, signed by the job (checked before a byte of memory is given out);
            # the block checksums come with the sealed manifest at put_end.
            manifest = Manifest.from_bytes(raw, key=self.store.manifest_key, sealed=False)
        except VerificationError as error:
            self.reply(ok=False, reason=str(error))
            return
        self.prepared.pop((owner, manifest.iteration), None)
        keep = header.get("keep")
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool)):
            raise ProtocolError("put_begin: keep must be an integer or null")
        blocks = block_count(manifest.data_bytes, manifest.block_bytes)
        room = len(raw) + SEALED_BYTES_PER_BLOCK * blocks + 64  # the sealed manifest's size
        self.slot = self.store.replica_slot(owner, room, manifest.data_bytes, keep)
        self.owner, self.manifest, self.received = owner, manifest, 0
        self.layout_raw = raw
        self.hasher = BlockHasher(manifest.data_bytes, manifest.block_bytes)
        self.reply(ok=True)

    def op_put_chunk(self, header: dict[str, Any]) -> None:
        offset, size = self._int(header, "offset"), self._int(header, "payload_bytes")
        manifest, hasher = self.manifest, self.hasher
        if self.slot is None or manifest is None or hasher is None:
            raise ProtocolError("put_chunk without put_begin")
        if header.get("codec") is not None:
            self._put_chunk_encoded(header, offset, size)
            return
        if offset + size > manifest.data_bytes:
            raise ProtocolError(
                f"chunk {offset}+{size} lies outside the {manifest.data_bytes}-byte shard"
            )
        # Straight into the replica slot, in pieces that end at block boundaries, each hashed
        # right after the kernel wrote it (from cache): one pass over the bytes. (A chunk codec
        # would decode its payload into ``target`` here and hash the decoded bytes the same way.)
        target = self.slot.data()[offset : offset + size]
        block = manifest.block_bytes
        done, hashing, started = 0, 0.0, time.perf_counter()
        while done < size:
            end = min(size, ((offset + done) // block + 1) * block - offset)
            piece = target[done:end]
            protocol.recv_into_exact(self.conn, piece)
            began = time.perf_counter()
            hasher.update(offset + done, piece)
            hashing += time.perf_counter() - began
            done = end
        self.received += size
        costs = self.store.costs
        costs.add(
            "store: receive into the replica slot (socket)",
            time.perf_counter() - started - hashing,
            size,
        )
        costs.add("store: hash while receiving", hashing, size)

    def _put_chunk_encoded(self, header: dict[str, Any], offset: int, size: int) -> None:
        """A compressed chunk (``real.engine.compress``): decoded into the slot's range
        ``[offset, offset + raw_bytes)``, then hashed like any received chunk."""
        from real.engine import compress

        assert self.slot is not None and self.manifest is not None and self.hasher is not None
        if header["codec"] != compress.CODEC:
            raise ProtocolError(f"put_chunk: unknown codec {header['codec']!r}")
        raw_bytes = self._int(header, "raw_bytes")
        if offset + raw_bytes > self.manifest.data_bytes:
            raise ProtocolError(
                f"chunk {offset}+{raw_bytes} lies outside the {self.manifest.data_bytes}-byte shard"
            )
        if size > raw_bytes + raw_bytes // 128 + 1024:  # above zstd's worst-case expansion
            raise ProtocolError(f"put_chunk: {size} compressed bytes for {raw_bytes} raw bytes")
        started = time.perf_counter()
        payload = protocol.recv_exact(self.conn, size)
        target = self.slot.data()[offset : offset + raw_bytes]
        try:
            compress.decode_into(payload, offset, target)
        except compress.CodecError as error:
            raise ProtocolError(f"put_chunk: {error}") from error
        decoded = time.perf_counter()
        block = self.manifest.block_bytes
        done = 0
        while done < raw_bytes:
            end = min(raw_bytes, ((offset + done) // block + 1) * block - offset)
            self.hasher.update(offset + done, target[done:end])
            done = end
        self.received += raw_bytes
        costs = self.store.costs
        costs.add("store: receive and decode a compressed chunk", decoded - started, raw_bytes)
        costs.add("store: hash while receiving", time.perf_counter() - decoded, raw_bytes)

    def op_put_end(self, header: dict[str, Any]) -> None:
        manifest, slot, hasher = self.manifest, self.slot, self.hasher
        if slot is None or manifest is None or hasher is None:
            raise ProtocolError("put_end without put_begin")
        size = int(header.get("payload_bytes", 0))  # checked by protocol.recv_header
        started = time.perf_counter()
        raw = bytes(protocol.recv_exact(self.conn, size)) if size else b""
        self.slot = self.manifest = self.hasher = None
        reason = ""
        try:
            sealed = Manifest.from_bytes(raw, key=self.store.manifest_key) if raw else manifest
            if not sealed.same_layout(manifest):
                raise VerificationError("the sealed manifest describes another shard")
            if len(sealed.blocks) != block_count(sealed.data_bytes, sealed.block_bytes):
                raise VerificationError("manifest block checksums do not cover the data")
        except VerificationError as error:
            reason = str(error)
            sealed = manifest
        if reason:
            pass  # the manifest is refused: nothing more to check
        elif self.received != manifest.data_bytes:
            reason = f"received {self.received} of {manifest.data_bytes} bytes"
        else:
            bad = hasher.mismatches(sealed, slot.data(manifest.data_bytes))
            if bad:
                reason = f"checksum mismatch in {', '.join(bad[:3])}"
            elif checksum("".join(sealed.blocks).encode()) != sealed.shard_checksum:
                reason = "shard checksum does not match the block checksums"
        if reason:
            log.warning(
                "node %d store: replica of rank %d iteration %d rejected: %s",
                self.store.node,
                self.owner,
                manifest.iteration,
                reason,
            )
            self.reply(ok=False, reason=reason)
            return
        final = raw or self.layout_raw
        try:
            slot.write_manifest(final, xxhash.xxh3_64_intdigest(final), manifest.data_bytes)
        except ValueError as error:
            self.reply(ok=False, reason=str(error))
            return
        slot.mark_complete(manifest.iteration)  # prepared: every block verified
        self.prepared[(self.owner, manifest.iteration)] = slot
        self.store.costs.add(
            "store: put_end (sealed manifest, verdict)", time.perf_counter() - started
        )
        self.reply(ok=True)

    def op_commit(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        key = (self._int(header, "owner"), self._int(header, "iteration"))
        slot = self.prepared.pop(key, None)
        if slot is None:
            self.reply(ok=False, reason=f"no prepared replica of rank {key[0]} iteration {key[1]}")
            return
        with self.store.lock:
            slot.commit(key[1], next_generation(self.store.pair(key[0])))
        self.reply(ok=True)

    def op_get(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        owner, iteration = self._int(header, "owner"), self._int(header, "iteration")
        slot = self.store.held_slot(owner, iteration)
        if slot is None:
            self.reply(
                ok=False,
                reason=f"node {self.store.node} holds no committed "
                f"iteration {iteration} of rank {owner}",
            )
            return
        state = slot.state()
        manifest = slot.manifest_bytes()
        protocol.send_frame(
            self.conn,
            {
                "op": "reply",
                "ok": True,
                "committed": state.committed,
                "manifest_bytes": len(manifest),
                "manifest_checksum": to_unsigned(state.manifest_checksum),
                "data_bytes": state.data_len,
                "payload_bytes": len(manifest) + state.data_len,
            },
        )
        self.conn.sendall(manifest)
        self.conn.sendall(slot.data(state.data_len))
