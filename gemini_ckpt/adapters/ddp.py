"""Training state of a plain module or a ``DistributedDataParallel`` one, out and in.

The state holds the model (every DDP rank holds the whole model), the optimizer, the
learning-rate scheduler when one is given, and the random generators (torch CPU and CUDA when
present, numpy, python ``random``)::

    from gemini_ckpt.adapters import ddp

    restored = checkpointer.restore()
    if restored is not None:
        ddp.load_state_dict(model, optimizer, restored.state, scheduler)
    for iteration in range(start, iterations + 1):
        train_step()
        checkpointer.save(iteration, ddp.state_dict(model, optimizer, scheduler, clone=False))

Restore before training on, on every rank, into a model and optimizer built as for the run that
took the state. Bitwise continuation on more than two ranks needs the same gradient bucket
layout as the uninterrupted run: keep ``bucket_cap_mb`` fixed, and since DDP regroups its
buckets after its first backward, give every run (fresh or resumed) one warm-up forward and
backward on a blank batch before its first real iteration, gradients dropped, as the built-in
trainer does (``real.trainer.workload.trainer``; one token is enough, and cheapest: the order in
which gradients become ready is the graph's at any length). On two ranks the order of a sum
does not matter.
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
        model: the module or its ``DistributedDataParallel`` wrapper (names are the module's).
        optimizer: its optimizer.
        scheduler: its learning-rate scheduler (``torch.optim.lr_scheduler`` or anything
            with ``state_dict``/``load_state_dict``), or None.
        clone: copy every tensor (default); False gives the live tensors, for a
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
