"""Training state of a DeepSpeed engine under ZeRO stage 1, 2 or 3, out and in.

One rank's whole training state, as tensors and JSON values a checkpointer stores::

    model      the module's state dict (stages 1 and 2, where every rank holds the whole
               module; absent under stage 3, whose weights are the partitions below)
    zero       this rank's ZeRO partition: {"stage", "dp_rank", "dp_world_size", "optimizer"}
               where "optimizer" is the ZeRO optimizer's ``state_dict()``: the partitioned fp32
               master weights, the base optimizer's state for them (Adam moments and steps)
               and the loss scaler's settings, made plain
    scheduler  the engine's learning-rate scheduler (when it has one)
    counters   the engine's global_steps, global_samples, skipped_steps and micro_steps
    rng        torch (and CUDA), numpy and python generator states

Usage, with any checkpointer::

    from gemini_ckpt.adapters import deepspeed as ds_state

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    restored = checkpointer.restore()
    if restored is not None:
        ds_state.load_state_dict(engine, restored.state)
    for iteration in range(start, iterations + 1):
        loss = engine(batch); engine.backward(loss); engine.step()
        checkpointer.save(iteration, ds_state.state_dict(engine, clone=False))

Both functions follow DeepSpeed's own checkpoint code (``save_checkpoint`` and
``load_checkpoint``), without files: under ZeRO-3 they bracket the work with the optimizer's
``checkpoint_event_prologue``/``epilogue`` (the epilogue gathers persistent parameters, a
collective), so call them on every rank at the same point. The restore loads the module, then
the optimizer partition with ``load_from_fp32_weights`` (the fp32 masters are restored as they
were, not rebuilt from 16-bit weights), then scheduler, counters and generators: a fresh engine
built like the first, with the same data-parallel world size, continues bit for bit as the
uninterrupted run would have. ZeRO's elastic checkpoint format (``elastic_checkpoint: true``)
needs every rank's partition on every rank and is refused; offloading the optimizer to NVMe is
not covered.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from real.engine.state import JSON_LEAVES
from real.trainer.training_state import clone_state
from real.trainer.workload.rng import capture_rng_state, restore_rng_state

COUNTERS = ("global_steps", "global_samples", "skipped_steps", "micro_steps")
# Entries of the ZeRO optimizer's state_dict() that describe the engine's layout for DeepSpeed's
# universal checkpoints (fragment address objects); a restore into the same layout needs none.
LAYOUT_ONLY = ("param_slice_mappings", "universal_checkpoint_info")
LOSS_SCALER = "loss_scaler"


_ENGINE_OF_MODULE: weakref.WeakKeyDictionary[Any, object] = weakref.WeakKeyDictionary()
"""The token of the engine each module served last (``_require_own_module``)."""


def _require_own_module(engine: Any) -> None:
    """Refuse an engine whose module an earlier engine wrapped.

    ``deepspeed.initialize`` leaves its ZeRO hooks on the module's parameters, and they stay
    when the engine goes (a survivor's engine of a failed attempt). A second engine over that
    module trained to other weights than a run without the failure (ZeRO-2 on the CPU), with
    no error: the module must be built anew for each engine, inside ``Checkpointer.run``'s
    ``train``. Each engine gets a token of its own (an attribute), and each module remembers
    the token of the engine it served.
    """
    module = getattr(engine, "module", None)
    if module is None:  # nothing wrapped to tell apart
        return
    token = getattr(engine, "_gemini_ckpt_token", None)
    if token is None:
        token = object()
        engine._gemini_ckpt_token = token
    served = _ENGINE_OF_MODULE.get(module)
    if served is not None and served is not token:
        raise ValueError(
            "this engine's module was wrapped by an earlier DeepSpeed engine (an earlier "
            "attempt's), whose hooks stay on its parameters and change its training: build "
            "the module anew, and call deepspeed.initialize, inside the function given to "
            'Checkpointer.run() (docs/training.md, "Build outside, wrap inside")'
        )
    _ENGINE_OF_MODULE[module] = token


def state_dict(engine: Any, *, clone: bool = True) -> dict[str, Any]:
    """This rank's training state (see the module docstring); a collective under ZeRO-3.

    Args:
        engine: the ``DeepSpeedEngine`` from ``deepspeed.initialize``.
        clone: copy every tensor (default), so the state stays as it is while training goes
            on; False gives the live tensors, for a ``checkpointer.save`` that copies them
            before it returns.

    Raises:
        ValueError: the engine does not run ZeRO stage 1, 2 or 3, or uses the elastic format;
            or its module served an earlier engine.
    """
    stage = _zero_stage(engine)
    _require_own_module(engine)
    optimizer = engine.optimizer
    _prologue(optimizer)
    try:
        state: dict[str, Any] = {}
        if stage < 3:
            state["model"] = engine.module.state_dict()
        state["zero"] = {
            "stage": stage,
            "dp_rank": _dp_rank(optimizer),
            "dp_world_size": _dp_world_size(optimizer),
            "optimizer": _plain_optimizer_state(optimizer.state_dict()),
        }
        if engine.lr_scheduler is not None:
            state["scheduler"] = engine.lr_scheduler.state_dict()
        state["counters"] = {name: int(getattr(engine, name)) for name in COUNTERS}
        state["rng"] = capture_rng_state()
        # Copy before the epilogue: it gathers parameters, and the caller may train on.
        result: dict[str, Any] = clone_state(state) if clone else state
    finally:
        _epilogue(optimizer)
    return result


def load_state_dict(engine: Any, state: Mapping[str, Any]) -> None:
    """Put a state from ``state_dict`` back into a freshly built engine; a collective under ZeRO-3.

    The engine must be built as for the run that took the state (module, optimizer, ZeRO stage,
    precision, data-parallel world size). The tensors are copied first, so ``state`` stays
    usable (DeepSpeed keeps references to what it loads).

    Raises:
        ValueError: another ZeRO stage or data-parallel layout, a state this adapter did not
            take, or a module that served an earlier engine.
    """
    stage = _zero_stage(engine)
    _require_own_module(engine)
    optimizer = engine.optimizer
    if "zero" not in state:
        raise ValueError(
            "the state has no 'zero' entry: it was not taken by "
            "gemini_ckpt.adapters.deepspeed.state_dict"
        )
    zero = state["zero"]
    expected = {
        "stage": stage,
        "dp_rank": _dp_rank(optimizer),
        "dp_world_size": _dp_world_size(optimizer),
    }
    for key, value in expected.items():
        if int(zero[key]) != value:
            raise ValueError(
                f"the state was taken with ZeRO {key} {zero[key]}, this engine has {value}: "
                "restore into an engine built with the same ZeRO stage and data-parallel layout"
            )
    if stage < 3:
        engine.module.load_state_dict(clone_state(state["model"]))
    partition = _engine_optimizer_state(optimizer, clone_state(zero["optimizer"]))
    partitions: list[Any] = [None] * expected["dp_world_size"]
    partitions[expected["dp_rank"]] = partition
    _prologue(optimizer)
    try:
        optimizer.load_state_dict(
            state_dict_list=partitions,
            load_optimizer_states=True,
            load_from_fp32_weights=True,
            checkpoint_folder=None,
            load_serial=None,
            param_shapes=engine._get_zero_param_shapes(),
        )
    finally:
        _epilogue(optimizer)
    if engine.lr_scheduler is not None:
        if "scheduler" not in state:
            raise ValueError(
                "the engine has a learning-rate scheduler but the state holds none: "
                "build the engine as for the run that took the state"
            )
        engine.lr_scheduler.load_state_dict(clone_state(state["scheduler"]))
    for name in COUNTERS:
        setattr(engine, name, int(state["counters"][name]))
    restore_rng_state(state["rng"])


def _zero_stage(engine: Any) -> int:
    stage = int(engine.zero_optimization_stage())
    if stage not in (1, 2, 3):
        raise ValueError(
            f"the engine runs ZeRO stage {stage}; this adapter covers stages 1, 2 and 3. "
            "Without ZeRO, use gemini_ckpt.adapters.ddp with engine.module and the "
            "torch optimizer"
        )
    if getattr(engine.optimizer, "elastic_checkpoint", False):
        raise ValueError(
            "zero_optimization.elastic_checkpoint is true: that format needs every rank's "
            "partition on every rank; set it to false (the default)"
        )
    return stage


def _dp_rank(optimizer: Any) -> int:
    return int(dist.get_rank(group=optimizer.dp_process_group))


def _dp_world_size(optimizer: Any) -> int:
    return int(dist.get_world_size(group=optimizer.dp_process_group))


def _prologue(optimizer: Any) -> None:
    # ZeRO-3: partition every parameter, as DeepSpeed's save and load do first.
    prologue = getattr(optimizer, "checkpoint_event_prologue", None)
    if callable(prologue):
        prologue()


def _epilogue(optimizer: Any) -> None:
    epilogue = getattr(optimizer, "checkpoint_event_epilogue", None)
    if callable(epilogue):
        epilogue()


def _plain_optimizer_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The ZeRO optimizer's state dict with tensors and JSON values only.

    The loss scaler object becomes its plain settings, enums their numbers, and the layout
    descriptions only universal checkpoints use are left out.
    """
    plain: dict[str, Any] = {}
    for key, value in state.items():
        if key in LAYOUT_ONLY:
            continue
        if key == LOSS_SCALER:
            plain[key] = _scaler_settings(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            plain[key] = int(value)  # ZeroStageEnum is an IntEnum
        else:
            plain[key] = value
    return plain


def _scaler_settings(scaler: Any) -> dict[str, Any]:
    """A loss scaler's attributes that are tensors or JSON values (its dtype is configuration)."""
    return {
        name: value
        for name, value in vars(scaler).items()
        if isinstance(value, (torch.Tensor, *JSON_LEAVES))
    }


def _engine_optimizer_state(optimizer: Any, plain: Mapping[str, Any]) -> dict[str, Any]:
    """A plain optimizer state made loadable: the engine's own loss scaler, set as saved."""
    state = dict(plain)
    scaler = getattr(optimizer, LOSS_SCALER, None)
    if scaler is not None and LOSS_SCALER in state:
        for name, value in state[LOSS_SCALER].items():
            current = getattr(scaler, name, None)
            if isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor):
                value = value.to(current.device)
            setattr(scaler, name, value)
        state[LOSS_SCALER] = scaler
    return state
