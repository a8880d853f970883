"""The checkpoint API a training loop calls, whatever the strategy behind it.

A training loop restores once at start and saves after every optimizer step::

    checkpointer = make_checkpointer(...)          # Gemini in-memory engine or DCP baseline
    restored = checkpointer.restore(into=trainer.state)   # None: start fresh
    start = 1 if restored is None else restored.iteration + 1
    if restored is not None:
        trainer.load_state(restored.state)         # restored in place: nothing left to copy
    for iteration in range(start, iterations + 1):
        trainer.step()
        checkpointer.save(iteration, trainer.state())   # returns once the state is captured
    checkpointer.close()

``state`` is a nested mapping whose leaves are tensors or JSON values (numbers, strings,
lists, dicts). ``save`` must have copied every tensor before it returns, so the next optimizer
step may modify parameters; whatever is sent or written afterwards happens in the background.
Every implementation lives in ``real/`` and implements ``Checkpointer``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from shared.recovery import Tier


@dataclass(frozen=True)
class Restored:
    """What ``Checkpointer.restore`` found.

    Attributes:
        iteration: the iteration the state belongs to; training resumes at iteration + 1.
        tier: where it came from: this node's memory, a peer's memory, or persistent storage.
        state: the nested state: fresh CPU tensors, or, where the restore was asked to go
            *into* a live state, those live tensors themselves (on their own device).
        source_node: the node that served it (this node for local, None for persistent).
        seconds: time spent retrieving and verifying it.
    """

    iteration: int
    tier: Tier
    state: Mapping[str, Any]
    source_node: int | None
    seconds: float


LiveState = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
"""The live state (as given to ``save``), or a callable returning it when it is needed."""


class Checkpointer(Protocol):
    """What every checkpoint strategy offers a training loop."""

    def restore(self, into: LiveState | None = None) -> Restored | None:
        """Find the newest consistent checkpoint for this rank and load it, or None.

        ``into``: the live state to load into, in place (one copy, no fresh tensors); wrap a
        model in DDP *before* (its construction broadcasts rank 0's parameters). None: fresh
        tensors.
        """
        ...

    def save(self, iteration: int, state: Mapping[str, Any]) -> None:
        """Checkpoint ``state`` after ``iteration``; returns once the tensors are copied."""
        ...

    def close(self, abandon: bool = False) -> None:
        """Finish background work (bounded wait) and release every resource; with
        ``abandon``, drop background work at once (a failure stopped the job)."""
        ...
