"""The training state of a PyTorch model and its optimizer, out and in, under DDP, FSDP2 or none.

A checkpointer stores nested mappings of tensors and JSON values (``real.engine.state``). This
module
turns a model, its optimizer and, optionally, its learning-rate scheduler into such a mapping
and back, through ``torch.distributed.checkpoint.state_dict``, which handles a plain module, a
``DistributedDataParallel`` wrapper and an FSDP2 (``fully_shard``) module alike:

    model      the model's state dict: plain tensors (DDP, none) or DTensor shards (FSDP2)
    optim      the optimizer's state dict from the same ``get_state_dict`` call, keyed by
               parameter name
    scheduler  the scheduler's ``state_dict()`` (only when a scheduler is given)
    rng        torch (and CUDA), numpy and python generator states (``real.trainer.workload.rng``)

``get_state_dict`` returns the **live** tensors (FSDP2's DTensor shards share storage with the
parameters), so a state kept while training goes on must be cloned; a state handed straight to
a checkpointer whose ``save`` copies it need not be. Loading accepts the live layout, plain
local tensors (what the in-memory engine stores: under FSDP2 each rank's local shards, wrapped
into DTensors again) or, under FSDP2, whole plain tensors (a template-free read of the
persistent tier), of which each rank keeps its part. Model and optimizer go back through
separate ``set_model_state_dict`` and ``set_optimizer_state_dict`` calls (one
``set_state_dict`` with ``broadcast_from_rank0`` deadlocks when other ranks pass ``{}``), except
a plain or DDP state restored wholly into the live tensors, which needs only the optimizer's
hyperparameters set (``_loaded_in_place``).

The built-in trainer (``real.trainer.workload.trainer``) and the public adapters
(``gemini_ckpt.adapters.ddp``, ``gemini_ckpt.adapters.fsdp2``) share this one implementation.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from real.trainer.templates import initialising
from real.trainer.workload.rng import capture_rng_state, restore_rng_state


def model_and_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, clone: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's and the optimizer's state dicts, keyed by parameter name.

    Under FSDP2 this is a collective (the optimizer state is keyed through the module's
    parameter names): call it on every rank at the same point.

    Args:
        model: the plain module, its DDP wrapper, or an FSDP2 module.
        optimizer: the optimizer over its parameters.
        clone: copy every tensor; without it they are the live tensors, which the next
            optimizer step changes.
    """
    model_state, optim_state = _KEYS.state_dicts(model, optimizer)
    if clone:
        return clone_state(model_state), clone_state(optim_state)
    return model_state, optim_state


class _StateDictKeys:
    """``get_state_dict`` for a plain or DDP model, by key maps learnt from it once.

    ``get_state_dict`` works out every parameter's name anew on each call (a walk of the
    module tree per parameter: about 2 ms for a 4-layer GPT with Adam, on every save of a
    per-iteration checkpoint). Its result for a model that holds no DTensor is the module's own
    ``state_dict()`` and the optimizer's, renamed: model keys without DDP's ``module.`` (and
    ``torch.compile``'s ``_orig_mod.``) prefix, optimizer parameter indices replaced by those
    names. The first call per (model, optimizer) goes through ``get_state_dict`` and learns
    both renamings; later calls rename the two plain state dicts with them, and go back to
    ``get_state_dict`` (and learn again) whenever the keys they meet are not the learnt ones.
    FSDP2 models (DTensor parameters) and optimizers without state yet (which
    ``get_state_dict`` initialises) always take ``get_state_dict``. A test checks both paths
    give the same dicts.
    """

    def __init__(self) -> None:
        # The module under any DDP wrapper -> (the wrapper's type, optimizer, its parameters'
        # ids in group order, model keys -> names, optimizer indices -> names). Keyed by the
        # wrapped module, so that in-process recovery's new DDP wrapper around the same module
        # (``Trainer.rejoin``) renames at once: its keys are the old wrapper's, and learning
        # them again cost every rank 2-4 ms of each restore (2026-12-04).
        self._learnt: weakref.WeakKeyDictionary[
            nn.Module,
            tuple[
                type,
                weakref.ref[torch.optim.Optimizer],
                tuple[int, ...],
                dict[str, str],
                dict[int, str],
            ],
        ] = weakref.WeakKeyDictionary()

    def state_dicts(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        learnt = self._learnt.get(_wrapped(model))
        if (
            learnt is not None
            and learnt[0] is type(model)
            and learnt[1]() is optimizer
            and optimizer.state
            and learnt[2] == _parameter_ids(optimizer)  # indices still mean the same tensors
        ):
            fast = _renamed(model, optimizer, learnt[3], learnt[4])
            if fast is not None:
                return fast
        model_state, optim_state = get_state_dict(model, optimizer)
        self._learn(model, optimizer, model_state, optim_state)
        return model_state, optim_state

    def _learn(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        model_state: Mapping[str, Any],
        optim_state: Mapping[str, Any],
    ) -> None:
        self._learnt.pop(_wrapped(model), None)
        if any(isinstance(p, DTensor) for p in model.parameters()):
            return
        by_memory = {_memory_key(v): k for k, v in model_state.items() if _keyable(v)}
        plain = model.state_dict()
        keys = {k: by_memory.get(_memory_key(v), "") for k, v in plain.items() if _keyable(v)}
        if set(keys.values()) != set(model_state) or len(keys) != len(plain):
            return  # not a plain renaming: always ask get_state_dict
        raw = optimizer.state_dict()
        groups = optim_state.get("param_groups", [])
        if len(groups) != len(raw["param_groups"]):
            return
        names: dict[int, str] = {}
        for ours, theirs in zip(raw["param_groups"], groups, strict=True):
            if len(ours["params"]) != len(theirs["params"]):
                return
            names.update(zip(ours["params"], theirs["params"], strict=True))
        self._learnt[_wrapped(model)] = (
            type(model),
            weakref.ref(optimizer),
            _parameter_ids(optimizer),
            keys,
            names,
        )


def _wrapped(model: nn.Module) -> nn.Module:
    """The module a DDP wrapper holds (the model itself otherwise)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return cast(nn.Module, model.module)
    return model


def _parameter_ids(optimizer: torch.optim.Optimizer) -> tuple[int, ...]:
    return tuple(id(p) for group in optimizer.param_groups for p in group["params"])


def _keyable(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and not isinstance(value, DTensor)


def _memory_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    return (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())


def _renamed(
    model: nn.Module, optimizer: torch.optim.Optimizer, keys: dict[str, str], names: dict[int, str]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The plain state dicts under the learnt names; None when their keys are not the learnt
    ones (a parameter added, a group added: ``get_state_dict`` learns again)."""
    plain = model.state_dict()
    if plain.keys() != keys.keys():
        return None
    raw = optimizer.state_dict()
    try:
        state = {names[index]: entries for index, entries in raw["state"].items()}
        groups = [
            {**group, "params": [names[index] for index in group["params"]]}
            for group in raw["param_groups"]
        ]
    except KeyError:
        return None
    return {keys[k]: v for k, v in plain.items()}, {"state": state, "param_groups": groups}


_KEYS = _StateDictKeys()


def load_model_and_optimizer_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: Mapping[str, Any],
    optim_state: Mapping[str, Any],
    *,
    device: torch.device | None = None,
) -> None:
    """Put a model and an optimizer state (from ``model_and_optimizer_state``) back.

    Tensors may be in the live layout, plain local tensors (FSDP2: this rank's shards) or, under
    FSDP2, whole tensors. The optimizer keeps references to the tensors it is given: pass a
    state that is not reused (a fresh restore, or ``clone_state`` of a kept one).

    Args:
        model, optimizer: built as for the run that took the state, same world size.
        model_state, optim_state: the two state dicts.
        device: where plain tensors go (default: the device of the model's first parameter).

    Raises:
        ValueError: the model state lacks some of the model's tensors.
    """
    if _loaded_in_place(model, optimizer, model_state, optim_state):
        return
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    template = get_model_state_dict(model)
    if not _all_live(model_state, template):  # restored in place: already there, no self-copy
        set_model_state_dict(model, _live_layout(model_state, template, device))
    set_optimizer_state_dict(
        model, optimizer, _optimizer_live_layout(optim_state, template, device)
    )


def _loaded_in_place(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: Mapping[str, Any],
    optim_state: Mapping[str, Any],
) -> bool:
    """Load a state restored into the live tensors (the engine's ``restore(into=...)``) by
    setting only what such a restore cannot have written: the optimizer's hyperparameters.
    True when it applied, False (nothing changed) when the general path must load it.

    It applies to a plain or DDP model whose every model and optimizer tensor in the state
    *is* the live one (the same memory, under the same name), whose per-parameter entries are
    otherwise equal, and whose optimizer has no load hooks. Loading such a state through
    ``set_model_state_dict`` and ``set_optimizer_state_dict`` changes nothing else, but costs
    every rank of a recovery 1.7-2.0 ms of CPU (a walk of the module tree for the template, and
    the optimizer's load; measured on the validation's models, 2026-12-05), after the restore's
    closing all-reduce, where the last rank to get a CPU holds up the resumed run.
    """
    if not optimizer.state or any(isinstance(p, DTensor) for p in model.parameters()):
        return False
    hooks = ("_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks")
    if any(getattr(optimizer, name, None) for name in hooks):
        return False
    live_model, live_optim = _KEYS.state_dicts(model, optimizer)
    if not _all_live(model_state, live_model):
        return False
    given, live = optim_state.get("state", {}), live_optim["state"]
    if set(given) != set(live) or not all(
        set(entries) == set(live[name])
        and all(_same_entry(value, live[name][key]) for key, value in entries.items())
        for name, entries in given.items()
    ):
        return False
    groups = optim_state.get("param_groups", [])
    if len(groups) != len(optimizer.param_groups) or any(
        list(group.get("params", [])) != list(ours["params"])
        for group, ours in zip(groups, live_optim["param_groups"], strict=True)
    ):
        return False
    for group, ours in zip(groups, optimizer.param_groups, strict=True):
        ours.update({k: copy.deepcopy(v) for k, v in group.items() if k != "params"})
    return True


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    *,
    clone: bool = True,
) -> dict[str, Any]:
    """Model, optimizer, scheduler and generator states of this rank, ready for a checkpointer.

    Args:
        model: the plain module, its DDP wrapper, or an FSDP2 module.
        optimizer: its optimizer.
        scheduler: its learning-rate scheduler (anything with ``state_dict``), or None.
        clone: copy every tensor (default), so the state stays as it is while training goes
            on; False hands out the live tensors, for a checkpointer that copies them at once.

    An optimizer that has no state yet (no step taken) is left so: torch's ``get_state_dict``
    initialises it (while no parameter has a gradient) with a step at learning rate 0, which
    creates its per-parameter tensors (Adam's moments, zeros) but also counts a step (Adam's
    ``step`` becomes 1, which its bias correction then uses for every later step); that state
    is cleared again and the optimizer's recorded as empty, so a state taken before the first
    step neither changes the run nor, restored, starts it from a counted step. Within
    ``real.trainer.templates.initialising_optimizers`` (a restore's template) torch's
    initialisation stays.

    Returns:
        ``{"model", "optim", "rng"}`` and ``"scheduler"`` when one is given.
    """
    fresh = not initialising() and not optimizer.state
    model_state, optim_state = model_and_optimizer_state(model, optimizer, clone=clone)
    if fresh:  # torch set the learning rates back; its step's per-parameter state goes
        optimizer.state.clear()
        optim_state = {**optim_state, "state": {}}
    state: dict[str, Any] = {"model": model_state, "optim": optim_state}
    if scheduler is not None:
        state["scheduler"] = copy.deepcopy(scheduler.state_dict())
    state["rng"] = capture_rng_state()
    return state


def load_training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    scheduler: Any = None,
) -> None:
    """Continue from ``state`` (from ``training_state``, a checkpointer's restore, or DCP).

    The tensors are cloned first, so the state given stays usable (loading keeps references).
    The model's gradients are dropped (set to None): they are no part of the state, and a
    survivor of a failure may hold those of the step it was aborted in, which a loop that
    zeroes them after its optimizer step (gradient accumulation, typically) would otherwise
    add to its first step after the restore.

    Raises:
        ValueError: a scheduler is given but the state has none, or the model state lacks some
            of the model's tensors.
    """
    if scheduler is not None and "scheduler" not in state:
        raise ValueError(
            "the state holds no learning-rate scheduler: it was taken without one; "
            "pass scheduler=None or take the state with the scheduler"
        )
    live_model, live_optim = model_and_optimizer_state(model, optimizer, clone=False)
    load_model_and_optimizer_state(
        model,
        optimizer,
        clone_state(state["model"], live=live_model),
        clone_state(state["optim"], live=live_optim),
    )
    for parameter in model.parameters():
        parameter.grad = None
    if scheduler is not None:
        scheduler.load_state_dict(copy.deepcopy(dict(state["scheduler"])))
    restore_rng_state(state["rng"])


def clone_state(node: Any, live: Any = None) -> Any:
    """A copy of a nested state: tensors cloned (DTensors stay DTensors), containers copied.

    ``live``: the live state in the same layout; a tensor that *is* its live counterpart (the
    same memory: a checkpoint restored in place) is kept, not cloned, since loading it is a
    no-op and nothing else holds it.
    """
    if isinstance(node, torch.Tensor):
        return node if _same_memory(node, live) else node.detach().clone()
    if isinstance(node, Mapping):
        inner = live if isinstance(live, Mapping) else {}
        return {key: clone_state(value, inner.get(key)) for key, value in node.items()}
    if isinstance(node, list | tuple):
        paired = isinstance(live, list | tuple) and len(live) == len(node)
        others = live if paired else [None] * len(node)
        return type(node)(
            clone_state(value, other) for value, other in zip(node, others, strict=True)
        )
    return copy.deepcopy(node)


def _same_memory(tensor: torch.Tensor, live: Any) -> bool:
    """Whether ``tensor`` is ``live``'s memory: same place, dtype, shape and strides (a DTensor
    by its local shard)."""
    if not isinstance(live, torch.Tensor):
        return False
    a = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    b = live.to_local() if isinstance(live, DTensor) else live
    return (
        a.device == b.device
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.data_ptr() == b.data_ptr()
    )


def _same_entry(value: Any, live: Any) -> bool:
    """Whether an optimizer's per-parameter entry is its live one: a tensor by its memory
    (``_same_memory``), anything else by equality."""
    if isinstance(value, torch.Tensor):
        return _same_memory(value, live)
    return not isinstance(live, torch.Tensor) and bool(value == live)


def _all_live(state: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """Whether every tensor of a model state is the live tensor of the same name."""
    return set(state) == set(live) and all(
        isinstance(value, torch.Tensor) and _same_memory(value, live[name])
        for name, value in state.items()
    )


def _as_live(value: Any, like: torch.Tensor | None, device: torch.device) -> Any:
    """``value`` in the layout of ``like``: a DTensor around a local shard, on ``device``."""
    if not isinstance(value, torch.Tensor):
        return value
    if isinstance(value, DTensor):
        return value
    if isinstance(like, DTensor) and value.dim() == like.dim() and value.dim() > 0:
        if tuple(value.shape) == tuple(like.shape) != tuple(like.to_local().shape):
            # A whole tensor (from a template-free read of the persistent tier): keep this
            # rank's part; src_data_rank=None slices locally, without communication.
            return distribute_tensor(
                value.to(like.device), like.device_mesh, like.placements, src_data_rank=None
            )
        return DTensor.from_local(
            value.to(like.device),
            like.device_mesh,
            like.placements,
            run_check=False,
            shape=like.shape,
            stride=like.stride(),
        )
    return value.to(device if value.dim() > 0 else value.device)


def _live_layout(
    state: Mapping[str, Any], template: Mapping[str, Any], device: torch.device
) -> dict[str, Any]:
    missing = sorted(set(template) - set(state))
    if missing:
        raise ValueError(f"the checkpoint's model state lacks {missing[:5]} (and maybe more)")
    return {name: _as_live(value, template.get(name), device) for name, value in state.items()}


def _optimizer_live_layout(
    state: Mapping[str, Any], params: Mapping[str, Any], device: torch.device
) -> dict[str, Any]:
    per_param = {
        name: {key: _as_live(value, params.get(name), device) for key, value in entries.items()}
        for name, entries in state.get("state", {}).items()
    }
    return {**state, "state": per_param}
