"""Training state of an FSDP2 (``fully_shard``) module: each rank's shards, out and in.

The state holds this rank's shards of the model and of the optimizer state (DTensors, keyed by
parameter name, through ``torch.distributed.checkpoint.state_dict.get_state_dict``), the
learning-rate scheduler when one is given, and the random generators (torch CPU and CUDA when
present, numpy, python ``random``)::

    from gemini_ckpt.adapters import fsdp2

    restored = checkpointer.restore()
    if restored is not None:
        fsdp2.load_state_dict(model, optimizer, restored.state, scheduler)
    for iteration in range(start, iterations + 1):
        train_step()
        checkpointer.save(iteration, fsdp2.state_dict(model, optimizer, scheduler, clone=False))

The live DTensor shards share storage with the parameters, so ``clone=False`` is only for a
``save`` that copies them at once (every checkpointer here does). ``load_state_dict`` accepts
the shards as DTensors or as plain local tensors (what the in-memory engine gives back) and,
for a state read whole from persistent storage, whole tensors of which each rank keeps its part.
It loads model and optimizer with separate ``set_model_state_dict`` and
``set_optimizer_state_dict`` calls. Call both functions on every rank at the same point, with
the same world size and sharding as the run that took the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from real.trainer.training_state import load_training_state, training_state


def state_dict(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    *,
    clone: bool = True,
) -> dict[str, Any]:
    """This rank's training state: ``{"model", "optim", "scheduler" (if given), "rng"}``.

    Args:
        model: the module after ``fully_shard``.
        optimizer: its optimizer (built over the sharded parameters).
        scheduler: its learning-rate scheduler, or None.
        clone: copy every shard (default); False gives the live shards, for a
            ``checkpointer.save`` that copies them before it returns.
    """
    return training_state(model, optimizer, scheduler, clone=clone)


def load_state_dict(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    scheduler: Any = None,
) -> None:
    """Put a state from ``state_dict`` (or a checkpointer's ``restore().state``) back.

    Raises:
        ValueError: the state lacks some of the model's tensors, or a scheduler is given and
            the state has none.
    """
    load_training_state(model, optimizer, state, scheduler)
