"""gemini-ckpt: fast failure recovery for distributed training with in-memory checkpoints.

The public API::

    from gemini_ckpt import Checkpointer

    checkpointer = Checkpointer(replicas=2)     # rank, world and node from torchrun's environment

See ``real.trainer.checkpointer`` (and docs/training.md) for the contract and for in-process
recovery
under the gemini-ckpt agents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from real.engine.api import Restored
    from real.trainer.checkpointer import Checkpointer

__all__ = ["Checkpointer", "Restored"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the command-line tool imports this package too, and needs none of it.
    if name == "Checkpointer":
        from real.trainer.checkpointer import Checkpointer

        return Checkpointer
    if name == "Restored":
        from real.engine.api import Restored

        return Restored
    raise AttributeError(f"module 'gemini_ckpt' has no attribute {name!r}")
