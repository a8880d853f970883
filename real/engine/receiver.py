"""The store's side of one connection: the operations a client may ask for.

A replica arrives as ``put_begin`` (the manifest), any number of ``put_chunk`` frames (each a
byte range of the data, received straight into the slot) and ``put_end``. Chunks are checked
against the manifest's block checksums (xxh3_64 per 1 MiB block): as soon as the chunks covering
a block have arrived, the block is hashed and compared, so verification overlaps the transfer
and every byte is hashed once. The manifest itself must carry the job's MAC
(:mod:`real.engine.manifest`): a store keeps only replicas its job wrote. The replica is
*prepared* when every byte arrived and every block and the shard checksum match; the store then
acks. It becomes *committed* only on the owner's ``commit``, sent after the owner's own copy
committed, so a replica never runs ahead of a checkpoint that the owner could not finish.
Requests that break the rules (a chunk outside the data, a chunk without a transfer) raise
ProtocolError and end the connection.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import xxhash

from real.engine import protocol
from real.engine.manifest import Manifest, VerificationError, checksum
from real.engine.shm import Slot, next_generation, to_unsigned

if TYPE_CHECKING:
    from real.engine.store import NodeStore

log = logging.getLogger(__name__)


class Receiver:
    """Serves one authenticated connection of ``store``."""

    def __init__(self, store: NodeStore, conn: socket.socket) -> None:
        self.store = store
        self.conn = conn
        # The replica being received on this connection.
        self.owner = -1
        self.manifest: Manifest | None = None
        self.slot: Slot | None = None
        self.received = 0
        self.block_bytes_in: list[int] = []
        self.block_checked: list[bool] = []
        self.bad_blocks: list[str] = []
        self.prepared: dict[tuple[int, int], Slot] = {}

    def reply(self, **fields: Any) -> None:
        protocol.send_frame(self.conn, {"op": "reply", **fields})

    def handle(self, header: dict[str, Any]) -> None:
        op = header["op"]
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise protocol.ProtocolError(f"unknown op {op!r}")
        handler(header)

    def _int(self, header: dict[str, Any], key: str) -> int:
        value = header.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise protocol.ProtocolError(f"{header['op']}: {key} must be an integer >= 0")
        return value

    def _no_payload(self, header: dict[str, Any]) -> None:
        if header.get("payload_bytes", 0):
            raise protocol.ProtocolError(f"{header['op']} takes no payload")

    # -- local trainers ---------------------------------------------------------------------

    def op_ping(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        self.reply(node=self.store.node)

    def op_ensure(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        index, owner = self._int(header, "index"), self._int(header, "owner")
        sizes = self._int(header, "manifest_capacity"), self._int(header, "data_capacity")
        if index > 1:
            raise protocol.ProtocolError("ensure: index must be 0 or 1")
        try:
            slot = self.store.ensure(owner, index, *sizes)
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
        self.reply(holdings={str(k): v for k, v in self.store.holdings().items()})

    def op_stats(self, header: dict[str, Any]) -> None:
        from real.engine.store import node_memory_bytes

        self._no_payload(header)
        used, total = self.store.memory_bytes(), node_memory_bytes()
        self.reply(
            memory_bytes=used,
            node_memory_bytes=total,
            fraction=used / total,
            cpu_s=time.process_time(),
            slots=sum(s is not None for p in self.store.slots.values() for s in p),
        )

    def op_invalidate(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        owner, iteration = self._int(header, "owner"), self._int(header, "iteration")
        slot = self.store.committed_slot(owner, iteration)
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
            raise protocol.ProtocolError("sink: at most 2 GiB")
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
            manifest = Manifest.from_bytes(raw, key=self.store.manifest_key)
        except VerificationError as error:
            self.reply(ok=False, reason=str(error))
            return
        self.prepared.pop((owner, manifest.iteration), None)
        keep = header.get("keep")
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool)):
            raise protocol.ProtocolError("put_begin: keep must be an integer or null")
        self.slot = self.store.replica_slot(owner, len(raw), manifest.data_bytes, keep)
        self.slot.write_manifest(raw, xxhash.xxh3_64_intdigest(raw), manifest.data_bytes)
        self.owner, self.manifest, self.received = owner, manifest, 0
        self.block_bytes_in = [0] * len(manifest.blocks)
        self.block_checked = [False] * len(manifest.blocks)
        self.bad_blocks = []
        self.reply(ok=True)

    def op_put_chunk(self, header: dict[str, Any]) -> None:
        offset, size = self._int(header, "offset"), self._int(header, "payload_bytes")
        manifest = self.manifest
        if self.slot is None or manifest is None:
            raise protocol.ProtocolError("put_chunk without put_begin")
        if offset + size > manifest.data_bytes:
            raise protocol.ProtocolError(
                f"chunk {offset}+{size} lies outside the {manifest.data_bytes}-byte shard"
            )
        protocol.recv_into_exact(self.conn, self.slot.data()[offset : offset + size])
        self.received += size
        # Verify every block this chunk completes now, while later chunks queue in the socket.
        block = manifest.block_bytes
        for index in range(offset // block, -(-(offset + size) // block)):
            low, high = max(offset, index * block), min(offset + size, (index + 1) * block)
            self.block_bytes_in[index] += high - low
            if self.block_bytes_in[index] >= self._block_range(index)[1] - index * block:
                self._check_block(index)

    def _block_range(self, index: int) -> tuple[int, int]:
        assert self.manifest is not None
        start = index * self.manifest.block_bytes
        return start, min(start + self.manifest.block_bytes, self.manifest.data_bytes)

    def _check_block(self, index: int) -> None:
        assert self.slot is not None and self.manifest is not None
        start, end = self._block_range(index)
        self.block_checked[index] = True
        if checksum(self.slot.data()[start:end]) != self.manifest.blocks[index]:
            self.bad_blocks.append(f"block {index} (bytes {start}..{end})")

    def op_put_end(self, header: dict[str, Any]) -> None:
        self._no_payload(header)
        manifest, slot = self.manifest, self.slot
        if slot is None or manifest is None:
            raise protocol.ProtocolError("put_end without put_begin")
        reason = ""
        if self.received != manifest.data_bytes:
            reason = f"received {self.received} of {manifest.data_bytes} bytes"
        else:
            for index, checked in enumerate(self.block_checked):
                if not checked:  # chunks overlapped or came out of order: check it now
                    self._check_block(index)
            if self.bad_blocks:
                reason = f"checksum mismatch in {', '.join(self.bad_blocks[:3])}"
            elif checksum("".join(manifest.blocks).encode()) != manifest.shard_checksum:
                reason = "shard checksum does not match the block checksums"
        self.slot = self.manifest = None
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
        self.prepared[(self.owner, manifest.iteration)] = slot
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
        slot = self.store.committed_slot(owner, iteration)
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
                "manifest_bytes": len(manifest),
                "manifest_checksum": to_unsigned(state.manifest_checksum),
                "data_bytes": state.data_len,
                "payload_bytes": len(manifest) + state.data_len,
            },
        )
        self.conn.sendall(manifest)
        self.conn.sendall(slot.data(state.data_len))
