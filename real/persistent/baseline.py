"""The persistent-storage baseline ("NFS"): what users do today.

``PersistentCheckpointer`` implements ``real.engine.api.Checkpointer`` with synchronous DCP saves to
the storage URL every K iterations (training waits for the write) and restores from the
newest complete checkpoint there (tier ``persistent``). It is the comparison point for the
Gemini engine in the same harness, selected by ``checkpoint.strategy: persistent``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from real.engine.api import LiveState, Restored
from real.engine.eventlog import EventLog
from real.persistent.dcp import DEFAULT_KEEP, load_persistent
from real.persistent.persister import save_persistent_logged
from real.persistent.storage import latest_persistent_iteration
from real.runtime.procgroup import gloo_group
from real.trainer.inject import hold_point
from real.trainer.inprocess import check_abort

logger = logging.getLogger(__name__)


class PersistentCheckpointer:
    """Synchronous DCP checkpoints to persistent storage every ``every_iterations``.

    Construct it on every rank at the same point (it may create a gloo process group).

    Args:
        url: the storage location (path or fsspec URL).
        every_iterations: K: iterations divisible by K are saved.
        template: returns this rank's current state (``Trainer.state``): restore reads into
            fresh tensors shaped like it (shards as shards); None: every tensor whole, as
            stored.
        storage_options: fsspec options.
        event_log: where persist_begin / persist_done events go.
        keep: complete checkpoints to keep.
    """

    def __init__(
        self,
        url: str,
        every_iterations: int,
        template: Callable[[], Mapping[str, Any]] | None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        event_log: EventLog | None = None,
        keep: int | None = DEFAULT_KEEP,
    ) -> None:
        if every_iterations < 1:
            raise ValueError(
                f"checkpoint.baseline_every_iterations must be 1 or more, got {every_iterations}"
            )
        self.url = url
        self.every_iterations = every_iterations
        self.template = template
        self.storage_options = None if storage_options is None else dict(storage_options)
        self.event_log = event_log or EventLog(None, time.time())
        self.keep = keep
        self._group = gloo_group()

    def restore(self, into: LiveState | None = None) -> Restored | None:
        """Load the newest complete checkpoint (every rank the same iteration), or None.

        ``into``: a state (or a callable returning one) whose shape DCP reads into, into fresh
        tensors (default: the template's; with neither, every tensor whole, as stored).
        """
        start, cpu = time.perf_counter(), time.process_time()
        iteration = self._agreed_latest()
        if iteration is None:
            return None
        target: Mapping[str, Any] | None
        if into is not None:
            target = into() if callable(into) else into
        else:
            target = None if self.template is None else self.template()
        state = load_persistent(
            self.url,
            iteration,
            target,
            process_group=self._group,
            storage_options=self.storage_options,
        )
        seconds = time.perf_counter() - start
        logger.info(
            "restored iteration %d from %s in %.3f s (%.3f s of this process's CPU)",
            iteration,
            self.url,
            seconds,
            time.process_time() - cpu,
        )
        return Restored(
            iteration=iteration, tier="persistent", state=state, source_node=None, seconds=seconds
        )

    def _agreed_latest(self) -> int | None:
        # Rank 0 reads the index and tells the others, so that every rank restores the same
        # iteration even if the index changed between their reads.
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_rank() == 0:
            latest = latest_persistent_iteration(self.url, self.storage_options)
        else:
            latest = None
        if distributed:
            value = torch.tensor([-1 if latest is None else latest], dtype=torch.int64)
            dist.broadcast(value, src=0, group=self._group)
            latest = None if int(value.item()) < 0 else int(value.item())
        return latest

    def save(self, iteration: int, state: Mapping[str, Any]) -> None:
        """Write ``state`` when K divides ``iteration``; training waits until it is complete.

        Raises:
            AttemptAborted: the node agent stopped this attempt (in-process recovery).
        """
        check_abort()
        if iteration % self.every_iterations == 0:
            save_persistent_logged(
                self.event_log,
                self.url,
                iteration,
                state,
                blocking=True,
                process_group=self._group,
                storage_options=self.storage_options,
                keep=self.keep,
            )
        # The harness's failure at this iteration's end strikes here, as in the in-memory
        # engine's save: every rank has ended the iteration, none has begun the next.
        hold_point(dist.get_rank() if dist.is_initialized() else 0, iteration)

    def close(self, abandon: bool = False) -> None:
        """Nothing runs in the background."""
