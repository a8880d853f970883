"""Background persistence of committed in-memory checkpoints every K iterations.

With ``checkpoint.persist_every_iterations: K``, every K-th committed checkpoint is read back
from this rank's slot (verified, fresh tensors) and handed to ``real.persistent``'s
``BackgroundPersister``, which writes it in torch.distributed.checkpoint layout through fsspec
in its own thread. Training never waits: the copy happens on the engine's sender thread after the
commit, the write on the persister's thread.

The slot holds raw local tensors. Under FSDP2 the live state held DTensor shards; their layout
(device mesh, placements, global shape and stride) is remembered at capture time and the shards
are wrapped into DTensors again, so the persistent checkpoint stores sharded tensors, as a DCP
save of the live state would.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from real.engine.capture import Captured, Capturer
from real.engine.eventlog import EventLog
from real.engine.restore import read_local
from real.engine.state import flatten_state, unflatten_state
from shared.errors import ReadCancelled

log = logging.getLogger(__name__)


class PersistentTier:
    """Hands every ``every``-th committed checkpoint to a background persister.

    Construct on every rank at the same point (the persister may create a process group).
    """

    def __init__(
        self, url: str, every: int, capturer: Capturer, rank: int, events: EventLog
    ) -> None:
        from real.persistent.persister import BackgroundPersister

        self.every, self.capturer, self.rank = every, capturer, rank
        self.persister = BackgroundPersister(url, event_log=events)
        self._layouts: dict[int, dict[str, tuple[Any, Any, Any, Any]]] = {}
        self._cancelled = False

    def captured(self, iteration: int, state: Mapping[str, Any]) -> None:
        """Remember the DTensor layouts of a state that will be persisted."""
        if iteration % self.every:
            return
        tensors, _ = flatten_state(state)
        layouts = {}
        for name, tensor in tensors.items():
            mesh = getattr(tensor, "device_mesh", None)
            if mesh is not None:  # a DTensor shard
                placements = getattr(tensor, "placements")  # noqa: B009
                layouts[name] = (mesh, placements, tensor.shape, tensor.stride())
        self._layouts[iteration] = layouts

    def committed(self, captured: Captured) -> None:
        """Called on the sender thread right after ``captured`` committed."""
        layouts = self._layouts.pop(captured.iteration, None)
        if layouts is None or self._cancelled:
            return
        try:
            # The slot was sealed by this process moments ago: its manifest, checksum and MAC
            # are checked, its blocks not hashed again (a second pass over the bytes on the
            # sender thread; docs/engine.md, "The persistent tier").
            state = read_local(
                self.capturer.slots,
                self.rank,
                captured.iteration,
                verify_data=False,
                cancelled=lambda: self._cancelled,
            )
        except ReadCancelled:
            log.info(
                "rank %d: iteration %d not persisted: the job stopped",
                self.rank,
                captured.iteration,
            )
            return
        except ValueError as error:
            log.error(
                "rank %d: iteration %d not persisted: its slot failed verification: %s",
                self.rank,
                captured.iteration,
                error,
            )
            return
        if layouts:
            from torch.distributed.tensor import DTensor

            tensors, values = flatten_state(state)
            for name, (mesh, placements, shape, stride) in layouts.items():
                tensors[name] = DTensor.from_local(
                    tensors[name], mesh, placements, run_check=False, shape=shape, stride=stride
                )
            state = unflatten_state(tensors, values)
        self.persister.submit(captured.iteration, state)

    def cancel(self) -> None:
        """A failure stopped the job: a read-back in flight on the sender thread stops before
        its next tensor, and none starts. The survivor's stop waits for that thread (it reads
        the slots the engine then unmaps): a whole read-back, 10-140 ms on our loaded 2 cores
        for 11.4 MB, was most of a crash's stop when it struck a persisted iteration."""
        self._cancelled = True

    def close(self, abandon: bool = False) -> None:
        if abandon:
            self.persister.abandon()
        else:
            self.persister.close()
