"""How a restore's template is taken: within ``initialising_optimizers``, the adapters' state
of an optimizer that has taken no step yet keeps the per-parameter tensors torch's
``get_state_dict`` creates for it (``real.trainer.training_state.training_state``). Apart
from the adapters so that the ``Checkpointer`` does not import DCP's state-dict helpers to use
it."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_INITIALISING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gemini_initialising_optimizers", default=False
)


@contextlib.contextmanager
def initialising_optimizers() -> Iterator[None]:
    """Within: ``training_state`` lets torch initialise an optimizer without state. For a
    state taken as a restore's template or target (``Checkpointer`` asks for it only when a
    restore needs it): its optimizer tensors (this rank's shards under FSDP2) tell the
    persistent tier what to read and give a restore in place somewhere to write, and the
    restore's load then replaces that state, so the counted step never trains."""
    token = _INITIALISING.set(True)
    try:
        yield
    finally:
        _INITIALISING.reset(token)


def initialised(state: Callable[[], Mapping[str, Any]]) -> Callable[[], Mapping[str, Any]]:
    """``state`` called within ``initialising_optimizers``."""

    def call() -> Mapping[str, Any]:
        with initialising_optimizers():
            return state()

    return call


def initialising() -> bool:
    """Whether the caller runs within ``initialising_optimizers``."""
    return _INITIALISING.get()
