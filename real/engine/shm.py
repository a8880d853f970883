"""Checkpoint slots: shared-memory files in ``/dev/shm`` with a small header.

A *slot* holds one checkpoint of one rank: a 4 KiB header, a JSON manifest region and a data
region of raw tensor bytes. Every rank has two slots on its own node (the last committed
checkpoint and the one in progress) and two on each peer node holding its replicas. The node
store creates, owns and deletes the slot files; trainers only map them, so a trainer that
crashes loses nothing.

The slot files are plain files in ``/dev/shm`` opened with ``os.open`` and ``mmap`` rather than
``multiprocessing.shared_memory``: a ``SharedMemory`` segment is registered with the creating
(or, before Python 3.13, the attaching) process's resource tracker, which deletes it when that
process dies. Plain files have exactly one owner, the store.

Commit protocol (header fields are little-endian int64 at fixed offsets):

1. ``invalidate()``: set ``generation`` to 0, so the slot no longer counts as committed;
2. write the data, the manifest and its checksum;
3. ``commit(generation)``: write ``iteration`` and then ``generation`` last, one aligned 8-byte
   store. The committed slot of a rank is the one with the highest non-zero generation.

A crash at any step leaves the other slot, the previous committed checkpoint, untouched.

Between steps 2 and 3 a slot can also be marked *complete* (``mark_complete``, its own header
word, cleared by ``invalidate``): every data byte and a signed manifest are in place, though the
checkpoint is not committed. The capture marks its slot complete as ``save()`` returns (the
manifest then holds the layout, not yet the block checksums), the sender re-marks it once
sealed, and a store marks a replica complete once it has verified every block (prepared). With
``checkpoint.commit: on_arrival`` recovery may restore a complete iteration
(``shared.recovery``): after a trainer crash every node's memory survives, and the iteration
every rank has captured is consistent whether or not its replicas have arrived.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SHM_DIR = Path("/dev/shm")
HEADER_BYTES = 4096
ALIGN = 4096
MAGIC = 0x47454D494E49_0001  # "GEMINI" + layout version 1

# Header field offsets (int64 each).
_MAGIC, _GENERATION, _ITERATION, _MANIFEST_LEN = 0, 8, 16, 24
_MANIFEST_CHECKSUM, _DATA_LEN, _MANIFEST_CAPACITY, _DATA_CAPACITY = 32, 40, 48, 56
# The complete iteration plus one (0: none), so that a header written before this word existed
# (zero-filled) reads as "nothing complete".
_COMPLETE = 64


def align_up(value: int, to: int = ALIGN) -> int:
    """``value`` rounded up to a multiple of ``to``."""
    return -(-value // to) * to


@dataclass(frozen=True)
class SlotState:
    """A snapshot of a slot's header."""

    generation: int
    iteration: int
    manifest_len: int
    manifest_checksum: int
    data_len: int
    manifest_capacity: int
    data_capacity: int
    complete_iteration: int | None = None

    @property
    def committed(self) -> bool:
        return self.generation > 0

    @property
    def held(self) -> int | None:
        """The iteration the slot holds whole: committed, else complete; None while written."""
        return self.iteration if self.committed else self.complete_iteration


class Slot:
    """One mapped slot file. Created by the store (``create``), mapped by trainers (``open``).

    Args:
        path: the file in ``/dev/shm``.
        mapping: the shared mapping of the whole file.
    """

    def __init__(self, path: Path, mapping: mmap.mmap) -> None:
        self.path = path
        self._map = mapping
        self._view = memoryview(mapping)
        self._words = self._view[:HEADER_BYTES].cast("q")
        # The job's manifest key, set by whoever maps the slot for a job (the capturer), so
        # that a restore from it can check the manifest's MAC (real.engine.manifest).
        self.manifest_key: bytes | None = None
        if self._words[_MAGIC // 8] != MAGIC:
            raise ValueError(f"{path} is not a checkpoint slot (bad magic); remove it")

    @classmethod
    def create(cls, path: Path, manifest_capacity: int, data_capacity: int) -> Slot:
        """Create and pre-fault a new slot file (fails if it exists)."""
        manifest_capacity = align_up(max(manifest_capacity, 1))
        data_capacity = align_up(max(data_capacity, 1))
        size = HEADER_BYTES + manifest_capacity + data_capacity
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            # MAP_POPULATE pre-faults every page, so the first capture does not pay for it.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mapping = mmap.mmap(fd, size, flags=flags)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        struct.pack_into("<8q", mapping, 0, MAGIC, 0, -1, 0, 0, 0, manifest_capacity, data_capacity)
        return cls(path, mapping)

    @classmethod
    def open(cls, path: Path) -> Slot:
        """Map an existing slot file created by a store."""
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            # Populate this process's page tables too: the first capture must not fault.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mapping = mmap.mmap(fd, size, flags=flags)
        finally:
            os.close(fd)
        return cls(path, mapping)

    @property
    def size(self) -> int:
        return len(self._map)

    def state(self) -> SlotState:
        w = self._words
        return SlotState(
            generation=w[_GENERATION // 8],
            iteration=w[_ITERATION // 8],
            manifest_len=w[_MANIFEST_LEN // 8],
            manifest_checksum=w[_MANIFEST_CHECKSUM // 8],
            data_len=w[_DATA_LEN // 8],
            manifest_capacity=w[_MANIFEST_CAPACITY // 8],
            data_capacity=w[_DATA_CAPACITY // 8],
            complete_iteration=w[_COMPLETE // 8] - 1 if w[_COMPLETE // 8] > 0 else None,
        )

    def fits(self, manifest_len: int, data_len: int) -> bool:
        state = self.state()
        return manifest_len <= state.manifest_capacity and data_len <= state.data_capacity

    def invalidate(self) -> None:
        """Step 1 of a write: the slot stops counting as committed, or as complete."""
        self._words[_GENERATION // 8] = 0
        self._words[_COMPLETE // 8] = 0

    def mark_complete(self, iteration: int | None) -> None:
        """Mark every data byte and the manifest of ``iteration`` in place (None: unmark, before
        the manifest is rewritten); the slot is not committed by this."""
        self._words[_COMPLETE // 8] = 0 if iteration is None else iteration + 1

    def write_manifest(self, manifest: bytes, checksum: int, data_len: int) -> None:
        state = self.state()
        if len(manifest) > state.manifest_capacity or data_len > state.data_capacity:
            raise ValueError(f"{self.path}: checkpoint does not fit the slot; reallocate it")
        self._view[HEADER_BYTES : HEADER_BYTES + len(manifest)] = manifest
        w = self._words
        w[_MANIFEST_LEN // 8] = len(manifest)
        w[_MANIFEST_CHECKSUM // 8] = to_signed(checksum)
        w[_DATA_LEN // 8] = data_len

    def commit(self, iteration: int, generation: int) -> None:
        """Last step of a write: the generation, written last, makes the slot committed."""
        self._words[_ITERATION // 8] = iteration
        self._words[_GENERATION // 8] = generation

    def manifest_bytes(self) -> bytes:
        length = self.state().manifest_len
        return bytes(self._view[HEADER_BYTES : HEADER_BYTES + length])

    def data(self, length: int | None = None) -> memoryview:
        """The data region (or its first ``length`` bytes), writable."""
        state = self.state()
        start = HEADER_BYTES + state.manifest_capacity
        end = start + (state.data_capacity if length is None else length)
        return self._view[start:end]

    def data_tensor(self, length: int | None = None) -> torch.Tensor:
        """The data region as a writable uint8 tensor sharing the mapping."""
        import torch

        view = self.data(length)
        if len(view) == 0:
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(view, dtype=torch.uint8)

    def close(self) -> None:
        """Unmap; views still exported (tensors alive) keep the mapping until collected."""
        try:
            self._words.release()
            self._view.release()
            self._map.close()
        except BufferError:
            pass  # a tensor still views the mapping; it is unmapped when that tensor dies


def to_signed(value: int) -> int:
    """An unsigned 64-bit value as the int64 stored in a header word."""
    return value - (1 << 64) if value >= 1 << 63 else value


def to_unsigned(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def newest_committed(slots: list[Slot | None]) -> int | None:
    """Index of the slot with the highest non-zero generation, or None."""
    best, best_generation = None, 0
    for index, slot in enumerate(slots):
        if slot is not None and slot.state().generation > best_generation:
            best, best_generation = index, slot.state().generation
    return best


def best_slot(slots: list[Slot | None], iteration: int) -> Slot | None:
    """The committed slot holding ``iteration`` with the highest generation, or None."""
    matches = [
        s
        for s in slots
        if s is not None and s.state().committed and s.state().iteration == iteration
    ]
    return max(matches, key=lambda s: s.state().generation, default=None)


def held_slot(slots: list[Slot | None], iteration: int) -> Slot | None:
    """The slot holding ``iteration`` whole: the committed one (`best_slot`), else one marked
    complete, or None."""
    committed = best_slot(slots, iteration)
    if committed is not None:
        return committed
    return next(
        (s for s in slots if s is not None and s.state().complete_iteration == iteration), None
    )


def in_progress_index(slots: list[Slot | None], keep: int | None = None) -> int:
    """The slot a new checkpoint is written to.

    Never the one holding iteration ``keep`` (the newest iteration every rank has committed,
    which recovery may need); without ``keep``, never the newest committed one.
    """
    kept = held_slot(slots, keep) if keep is not None else None
    if kept is not None:
        return 1 if slots[0] is kept else 0
    newest = newest_committed(slots)
    return 1 if newest == 0 else 0


def next_generation(slots: list[Slot | None]) -> int:
    return 1 + max((s.state().generation for s in slots if s is not None), default=0)


def node_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
