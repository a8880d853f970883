"""Capture: copy a rank's state into its in-progress slot, one memcpy per tensor.

``save()`` must not return before every tensor is copied, because the next optimizer step
changes the parameters in place. Capture is therefore only copies: the flat state
(``real.engine.state.flatten_state``) is laid out in the slot's data region and each tensor is
copied
straight into its place in the store's shared memory, with no intermediate buffer. Then the
signed layout manifest (no checksums yet) goes into the slot and the slot is marked complete
(``real.engine.shm``): from here a trainer crash loses nothing of this iteration. Checksums and
the sealed manifest are written afterwards, in the background, before the checkpoint can commit.

Accelerator tensors are copied on a side stream, which first waits for the training stream
(the copies must see the finished step). The slot's data region is page-locked once
(``cudaHostRegister``, as DCP's own stager pins its shared memory), so each device-to-host copy
lands straight in the slot: one pass over the bytes, at the copy engine's rate. Where CUDA
refuses to page-lock the slot, they go through pinned staging instead: a pinned host buffer of
``buffer_bytes`` split into ``sub_buffers`` pieces, the CPU moving finished pieces into the slot
while later ones are still on the wire (pipelined; two passes). The CPU path never touches
``torch.cuda``.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash

from real.engine.client import StoreClient
from real.engine.costs import Costs
from real.engine.manifest import Manifest, TensorEntry, block_count, layout, tensor_views
from real.engine.shm import Slot, in_progress_index, next_generation
from real.engine.state import flatten_state
from shared.errors import NodeStoreError

log = logging.getLogger(__name__)


@dataclass
class Captured:
    """A checkpoint copied into a slot but not yet sealed or committed."""

    iteration: int
    slot_index: int
    slot: Slot
    manifest: Manifest
    seconds: float
    keep: int | None = None  # the iteration every rank has committed: never overwritten
    layout_raw: bytes = b""  # the signed layout manifest (no checksums), as in the slot

    @property
    def nbytes(self) -> int:
        return self.manifest.data_bytes


class CudaStager:
    """A side stream for device-to-host capture, and pinned staging buffers where needed.

    ``copy_direct`` copies each tensor straight into its destination, which must be
    page-locked (:meth:`register`): its side stream waits for the training stream (the copies
    must see the finished optimizer step), queues one asynchronous copy per tensor and waits
    for one event after the last.

    ``copy``, for destinations CUDA would not page-lock, stages instead: per piece of at most
    ``buffer_bytes / sub_buffers``, an asynchronous device-to-host copy into the next pinned
    buffer on the side stream and an event after it; once every buffer is in flight, the oldest
    event is waited for and its buffer copied into the slot by the CPU while the later pieces
    are still on the wire (pipelined). The pinned buffers are allocated at its first call.

    Args:
        buffer_bytes, sub_buffers: the pinned staging (R and p of the paper).
        cuda: the ``torch.cuda`` module or a stand-in with ``Stream``, ``Event``,
            ``current_stream``, ``stream`` and ``cudart`` (the tests run this logic on CPU with
            one).
        pin_memory: pinned buffers (off for a stand-in on a machine without CUDA).
    """

    def __init__(
        self, buffer_bytes: int, sub_buffers: int, cuda: Any = None, pin_memory: bool = True
    ) -> None:
        self.cuda = cuda if cuda is not None else torch.cuda
        self.piece = max(buffer_bytes // sub_buffers, 1 << 20)
        self.stream = self.cuda.Stream()
        self.sub_buffers = sub_buffers
        self.pin_memory = pin_memory
        self._buffers: list[torch.Tensor] = []

    @property
    def buffers(self) -> list[torch.Tensor]:
        """The pinned staging buffers, allocated when first needed."""
        if not self._buffers:
            self._buffers = [
                torch.empty(self.piece, dtype=torch.uint8, pin_memory=self.pin_memory)
                for _ in range(self.sub_buffers)
            ]
        return self._buffers

    def register(self, region: torch.Tensor) -> int | None:
        """Page-lock ``region`` (a slot's data region, a uint8 tensor over its mapping) so that
        device-to-host copies land in it directly; its address to :meth:`unregister`, or None
        where CUDA refused (the caller stages instead)."""
        if region.numel() == 0:
            return None
        pointer = region.data_ptr()
        # Flags 0: cudaHostRegisterDefault. Register only what the caller unregisters before
        # it unmaps the region.
        cudart = self.cuda.cudart()
        error = cudart.cudaHostRegister(pointer, region.numel(), 0)
        if int(error) == 0:
            return pointer
        # A failed runtime call leaves its error as the thread's last one, which the next
        # kernel launch's check would report as its own: read it to clear it, where torch
        # exposes the call (not checked on a GPU yet).
        clear = getattr(cudart, "cudaGetLastError", None)
        if clear is not None:
            clear()
        return None

    def unregister(self, pointer: int) -> None:
        """Undo :meth:`register` (before the region is unmapped)."""
        self.cuda.cudart().cudaHostUnregister(pointer)

    def copy_direct(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy each device tensor into its page-locked uint8 destination view, one
        asynchronous copy each on the side stream; returns when all landed."""
        cuda = self.cuda
        self.stream.wait_stream(cuda.current_stream())
        with cuda.stream(self.stream):
            for source, target in pairs:
                flat = source.detach().contiguous().reshape(-1).view(torch.uint8)
                target.copy_(flat, non_blocking=True)
            landed = cuda.Event()
            landed.record(self.stream)
        landed.synchronize()

    def copy(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy each device tensor into its uint8 destination view; returns when all landed."""
        cuda = self.cuda
        self.stream.wait_stream(cuda.current_stream())
        pending: collections.deque[tuple[Any, torch.Tensor, torch.Tensor]] = collections.deque()
        turn = 0
        with cuda.stream(self.stream):
            for source, target in pairs:
                flat = source.detach().contiguous().reshape(-1).view(torch.uint8)
                for start in range(0, flat.numel(), self.piece):
                    size = min(self.piece, flat.numel() - start)
                    if len(pending) == len(self.buffers):
                        self._drain(pending)  # frees the buffer this turn reuses
                    buffer = self.buffers[turn % len(self.buffers)][:size]
                    buffer.copy_(flat[start : start + size], non_blocking=True)
                    event = cuda.Event()
                    event.record(self.stream)
                    pending.append((event, buffer, target[start : start + size]))
                    turn += 1
        while pending:
            self._drain(pending)

    @staticmethod
    def _drain(pending: collections.deque[tuple[Any, torch.Tensor, torch.Tensor]]) -> None:
        event, buffer, target = pending.popleft()
        event.synchronize()
        target.copy_(buffer)


class Capturer:
    """Copies one rank's state into that rank's slots in its node store.

    Args:
        client: connection to this node's store.
        owner: this rank (slots are keyed by global rank).
        buffer_bytes, sub_buffers: pinned staging for accelerator tensors (R and p).
        local_slots: ``checkpoint.local_slots``. 2: a capture never overwrites the newest
            iteration every rank has committed. 1: every capture goes to the one slot, and
            until every rank has captured, that iteration lives only in the peers' replicas
            (see ``docs/engine.md``, "Memory").
    """

    def __init__(
        self,
        client: StoreClient,
        owner: int,
        buffer_bytes: int = 128 << 20,
        sub_buffers: int = 4,
        local_slots: int = 2,
    ) -> None:
        if local_slots not in (1, 2):
            raise ValueError(f"local_slots must be 1 or 2, got {local_slots}")
        self.client = client
        self.owner = owner
        self.local_slots = local_slots
        self.slots: list[Slot | None] = [None, None]
        self._staging = (buffer_bytes, sub_buffers)
        self._stager: CudaStager | None = None
        # Slot file -> the address of its page-locked data region (None: CUDA refused).
        self._locked: dict[str, int | None] = {}
        self.hook: Callable[[str, int], None] | None = None  # tests: called mid-capture
        self._views: dict[tuple[str, Any], list[torch.Tensor | None]] = {}
        self._layout: tuple[tuple[Any, ...], list[TensorEntry], int, int] | None = None
        self.costs = Costs()  # the training thread's (real.engine.costs)
        self._allocated = 0.0  # seconds this capture spent allocating slots
        self._layout_version = 0
        # Which tensors the CPU copies directly; the others go through the CUDA stager (tests
        # route CPU tensors through a stager with a stand-in for torch.cuda).
        self.on_host: Callable[[torch.Tensor], bool] = lambda t: t.device.type == "cpu"
        self.remap()

    def remap(self) -> None:
        """Map the slot files the store already has for this rank (after a restart)."""
        paths = self.client.call("slots", owner=self.owner)["paths"]
        for index, path in enumerate(paths):
            current = self.slots[index]
            if path is None or (current is not None and str(current.path) == path):
                continue
            if current is not None:
                self._forget(current)
                current.close()
            self.slots[index] = self._open(Path(path))

    def _open(self, path: Path) -> Slot:
        slot = Slot.open(path)
        slot.manifest_key = self.client.manifest_key  # restores check manifests with it
        return slot

    def _slot_for(self, index: int, manifest_len: int, data_len: int) -> Slot:
        slot = self.slots[index]
        if slot is not None and slot.fits(manifest_len, data_len):
            return slot
        # Manifests grow with their block checksums: leave room for them.
        started = time.perf_counter()
        reply = self.client.call(
            "ensure",
            owner=self.owner,
            index=index,
            manifest_capacity=manifest_len * 2 + (data_len >> 14),
            data_capacity=data_len,
            replace=self.local_slots == 1,
        )
        if slot is not None:
            self._forget(slot)
            slot.close()
        fresh = self._open(Path(reply["path"]))
        self.slots[index] = fresh
        self._allocated += time.perf_counter() - started
        return fresh

    def capture(self, iteration: int, state: Any, keep: int | None = None) -> Captured:
        """Copy ``state`` into the in-progress slot; returns once every byte is copied.

        Args:
            iteration: the iteration the state belongs to.
            state: nested tensors and JSON values.
            keep: the newest iteration every rank has committed; its slot is not overwritten
                (default: the newest committed slot is not). With one local slot it is: the
                peers' replicas hold it.
        """
        started = time.perf_counter()
        tensors, values = flatten_state(state)
        tensors = {name: _local(t) for name, t in tensors.items()}
        manifest, manifest_len = self._manifest(iteration, tensors, values)
        index = 0 if self.local_slots == 1 else in_progress_index(self.slots, keep)
        slot = self._slot_for(index, manifest_len, manifest.data_bytes)
        slot.invalidate()  # from here on, this slot no longer counts as a checkpoint
        targets = self._targets(slot, manifest)
        copying = time.perf_counter()
        allocated, self._allocated = self._allocated, 0.0
        if allocated:
            self.costs.add("capture: allocate and map a slot (store round trip)", allocated)
        self.costs.add("capture: flatten, manifest, slot (fixed)", copying - started - allocated)
        device_pairs = []
        with torch.no_grad():
            for target, tensor in zip(targets, tensors.values(), strict=True):
                if target is None:
                    continue
                if self.on_host(tensor):
                    target.copy_(tensor)
                    if self.hook is not None:
                        self.hook("capture", iteration)
                else:
                    device_pairs.append((tensor, target.view(-1).view(torch.uint8)))
            if device_pairs:
                self._device_copy(slot, device_pairs)
        copied = time.perf_counter()
        self.costs.add("capture: copy into the slot", copied - copying, manifest.data_bytes)
        # Every byte is in: with the signed layout beside it, the slot is a checkpoint a
        # restore from this node's memory can use, before the sender seals and replicates it.
        raw = manifest.to_bytes()
        slot.write_manifest(raw, xxhash.xxh3_64_intdigest(raw), manifest.data_bytes)
        slot.mark_complete(iteration)
        self.costs.add(
            "capture: layout manifest, mark complete (fixed)", time.perf_counter() - copied
        )
        return Captured(iteration, index, slot, manifest, time.perf_counter() - started, keep, raw)

    def _manifest(
        self, iteration: int, tensors: dict[str, torch.Tensor], values: dict[str, Any]
    ) -> tuple[Manifest, int]:
        """This capture's manifest and a bound on its sealed size.

        The layout (offsets, dtypes, shapes) is planned once and reused while the state's
        tensors keep their names, dtypes and shapes; only the JSON values are new per save.
        The manifest carries the job's key, so its sealed bytes carry their MAC.
        """
        signature = tuple((name, t.dtype, tuple(t.shape)) for name, t in tensors.items())
        if self._layout is None or self._layout[0] != signature:
            planned = layout(iteration, self.owner, tensors, {}, self.client.manifest_key)
            blocks = block_count(planned.data_bytes, planned.block_bytes)
            # Its JSON without values, plus room for the block checksums and the MAC.
            room = len(planned.to_bytes()) + 20 * blocks + 4096
            self._layout = (signature, planned.tensors, planned.data_bytes, room)
            self._layout_version += 1
        _, entries, data_bytes, room = self._layout
        values_len = len(json.dumps(values))  # and fails early: values must be JSON
        manifest = Manifest(
            iteration, self.owner, entries, values, data_bytes, key=self.client.manifest_key
        )
        return manifest, room + values_len

    def _targets(self, slot: Slot, manifest: Manifest) -> list[torch.Tensor | None]:
        """Each tensor's destination view in the slot, typed and shaped like the tensor.

        Views cost a few torch calls each; a state of hundreds of tensors would spend more
        time making them than copying, so they are kept while the slot and the layout stay.
        """
        # The layout planned by ``_manifest`` for this capture, by its number.
        key = (str(slot.path), self._layout_version)
        cached = self._views.get(key)
        if cached is not None:
            return cached
        views = tensor_views(manifest.tensors, slot.data_tensor(manifest.data_bytes))
        self._views = {k: v for k, v in self._views.items() if k[0] != key[0]}
        self._views[key] = views
        return views

    def _forget(self, slot: Slot) -> None:
        """Drop what refers to ``slot``'s mapping before it is closed."""
        self._views = {k: v for k, v in self._views.items() if k[0] != str(slot.path)}
        pointer = self._locked.pop(str(slot.path), None)
        if pointer is not None and self._stager is not None:
            self._stager.unregister(pointer)

    def _device_copy(self, slot: Slot, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if self._stager is None:
            if not torch.cuda.is_available():
                raise ValueError(
                    f"state holds {pairs[0][0].device} tensors; only CPU and CUDA "
                    "tensors can be captured"
                )
            self._stager = CudaStager(*self._staging)
        key = str(slot.path)
        if key not in self._locked:
            started = time.perf_counter()
            self._locked[key] = self._stager.register(slot.data_tensor())
            self.costs.add(
                "capture: page-lock a slot for direct device copies (once per slot)",
                time.perf_counter() - started,
            )
            if self._locked[key] is None:
                log.warning(
                    "CUDA would not page-lock the checkpoint slot %s: device tensors are "
                    "captured into it through pinned staging (two passes over the bytes)",
                    slot.path,
                )
        if self._locked[key] is not None:
            self._stager.copy_direct(pairs)
        else:
            self._stager.copy(pairs)

    def commit(self, captured: Captured) -> None:
        """Make a sealed capture this rank's committed local checkpoint."""
        captured.slot.commit(captured.iteration, next_generation(self.slots))

    def close(self) -> None:
        self._views.clear()  # drop the views first: they keep the mappings alive
        for slot in self.slots:
            if slot is not None:
                self._forget(slot)  # unlocks its pages before they are unmapped
                slot.close()
        self.slots = [None, None]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2: each rank checkpoints its own shard)."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


__all__ = ["Captured", "Capturer", "CudaStager", "NodeStoreError"]
