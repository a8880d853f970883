"""The trainer: the GPT decoder under DDP or FSDP2, one optimizer step per ``step()``.

The same code runs on CPU with gloo and on GPUs with NCCL; the process group must be
initialised before a ``Trainer`` is built (a single process without one trains the plain
module). ``state()`` is the whole training state a checkpoint needs, nested, with tensors and
JSON values only:

    model      the model's state dict (``get_state_dict``: plain tensors under DDP,
               DTensor shards under FSDP2), the LIVE tensors: copy before the next step
    optim      the AdamW state dict from the same call (live tensors too)
    schedule   the step the learning-rate schedule is at (the rate is a pure function of it)
    rng        torch, numpy and python generator states
    data       the data position and what it is relative to
    iteration  the last finished iteration

``load_state`` takes such a state back, with model and optimizer tensors in the live layout,
as plain local tensors (what an engine that stores raw bytes gives back; under FSDP2 the rank's
local shards, wrapped into DTensors again), or, under FSDP2, as whole plain tensors (a
template-free read of the persistent tier), of which each rank keeps its part. Both directions
go through ``real.trainer.training_state``, the implementation the public adapters share.

Determinism: weights start from the seed, batches are a pure function of (seed, rank, world
size, position), DDP's bucket layout is fixed by ``bucket_cap_mb``, and intra-op threads are
fixed by the caller: the same scenario and seed give bitwise-identical weights, and a restored
state continues bitwise as the uninterrupted run would have.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from real.trainer.inprocess import make_fsdp_abortable, wait_collective
from real.trainer.training_state import load_model_and_optimizer_state, model_and_optimizer_state
from real.trainer.workload.data import Corpus, DataPipeline, load_corpus
from real.trainer.workload.model import GPT, GPTConfig
from real.trainer.workload.rng import capture_rng_state, restore_rng_state
from real.trainer.workload.schedule import learning_rate_at
from shared.scenario import Scenario

logger = logging.getLogger(__name__)

Parallelism = Literal["ddp", "zero3"]


@dataclass(frozen=True)
class TrainerConfig:
    """What the trainer needs from a scenario.

    Attributes:
        model: the decoder's shape.
        parallelism: ``ddp`` (replicated, gradients all-reduced) or ``zero3`` (FSDP2).
        iterations: the run's length (the cosine schedule ends there).
        batch_size_per_rank: sequences per rank per step.
        learning_rate: peak learning rate.
        warmup_iterations: linear warmup steps.
        bucket_cap_mb: DDP gradient bucket size, MB; keep it fixed across restarts.
        seed: seed of the weights and the data.
        corpus: text source (``real.trainer.workload.data.load_corpus``); None: CPython's docs.
        weight_decay: AdamW weight decay.
        grad_clip_norm: gradients are clipped to this global norm; 0 disables clipping.
    """

    model: GPTConfig
    parallelism: Parallelism = "ddp"
    iterations: int = 40
    batch_size_per_rank: int = 4
    learning_rate: float = 3e-3
    warmup_iterations: int = 5
    bucket_cap_mb: float = 1.0
    seed: int = 0
    corpus: str | None = None
    weight_decay: float = 0.1
    grad_clip_norm: float = 1.0

    @classmethod
    def from_scenario(cls, scenario: Scenario) -> TrainerConfig:
        model, training = scenario.model, scenario.training
        return cls(
            model=GPTConfig(
                layers=model.layers,
                hidden=model.hidden,
                heads=model.heads,
                context=model.context,
                vocab_size=model.vocab_size,
            ),
            parallelism=training.parallelism,
            iterations=training.iterations,
            batch_size_per_rank=training.batch_size_per_rank,
            learning_rate=training.learning_rate,
            warmup_iterations=training.warmup_iterations,
            bucket_cap_mb=training.bucket_cap_mb,
            seed=scenario.seed,
            corpus=training.corpus,
        )


@dataclass(frozen=True)
class Prepared:
    """What a DDP rank builds before it knows its rank or its process group.

    A warm spare (``real.trainer.main``) builds these while it waits, so that taking a failed
    rank's place costs it only the DDP wrapper, as a survivor's rejoin does: the decoder, the
    corpus, and an AdamW whose state already exists (the per-parameter moments that a first
    ``state()`` would otherwise create with a zero-gradient step, on the restore's path).
    Measured on the validation's 1.3M-parameter model, one process, unloaded: building the
    trainer 26 ms against 13 ms for the rewrap, and the optimizer's state 7-12 ms more
    (2026-12-04). The memory is the rank's own state once more per spare: its weights and
    the two moments (``real.launcher.capacity`` counts 16 bytes per parameter per trainer).

    Attributes:
        module: the decoder with its seeded weights.
        optimizer: AdamW over ``module``'s parameters, its state allocated by a first ask
            for the state (the weights do not move). A restore overwrites it; a trainer that
            starts from scratch builds a fresh one instead.
        corpus: the loaded corpus.
    """

    module: GPT
    optimizer: torch.optim.AdamW
    corpus: Corpus


@dataclass(frozen=True)
class StepResult:
    """One finished iteration: its number, loss and learning rate."""

    iteration: int
    loss: float
    learning_rate: float


class Trainer:
    """Model, optimizer, schedule and data of one rank.

    Args:
        config: what to train.
        rank: this rank.
        world_size: ranks in the job (all data-parallel).
        device: where the model lives (``cpu`` or ``cuda:<local rank>``).
        corpus: an already loaded corpus (default: ``load_corpus(config.corpus)``).
        restoring: a checkpoint is loaded into every rank before the first step (an attempt
            of in-process recovery), so DDP's wrap skips its broadcast of rank 0's parameters
            (``init_sync=False``): the restore overwrites them on every rank. Without it, the
            initial weights are broadcast as usual.
        prepared: the module, optimizer and corpus built ahead (``Trainer.prepare``, with
            this ``config`` and ``device``), used instead of building them here. DDP only.
    """

    def __init__(
        self,
        config: TrainerConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        corpus: Corpus | None = None,
        restoring: bool = False,
        prepared: Prepared | None = None,
    ) -> None:
        # Subnormal floats made CPU iterations ~4x slower on our machines (docs/design.md section
        # 6).
        torch.set_flush_denormal(True)
        if prepared is not None and config.parallelism != "ddp":
            raise ValueError("a prepared trainer is DDP only: FSDP2 shards at its build")
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        distributed = dist.is_available() and dist.is_initialized()
        if not distributed and (world_size != 1 or config.parallelism == "zero3"):
            raise RuntimeError(
                f"world size {world_size} with {config.parallelism} needs an initialised "
                "process group: call torch.distributed.init_process_group first"
            )
        if distributed and dist.get_world_size() != world_size:
            raise ValueError(
                f"world_size {world_size} differs from the process group's {dist.get_world_size()}"
            )
        if config.model.vocab_size != 256:
            raise ValueError(
                f"the byte tokenizer needs model.vocab_size 256, got {config.model.vocab_size}"
            )
        if prepared is not None:
            if prepared.module.tok_emb.weight.device != self.device:
                raise ValueError(
                    f"the prepared model is on {prepared.module.tok_emb.weight.device}, "
                    f"the trainer on {self.device}"
                )
            module, corpus = prepared.module, prepared.corpus
        else:
            module = GPT(config.model, seed=config.seed).to(self.device)
        self.module = module
        self.model: nn.Module
        if config.parallelism == "zero3":
            self.model = _fully_shard(module, self.device, world_size)
        elif distributed:
            self.model = self._wrap_ddp(sync=not restoring)
        else:
            self.model = module
        if prepared is not None and restoring:
            # The same parameters, in the same order, as self.model.parameters().
            self.optimizer = prepared.optimizer
        else:
            self.optimizer = _adamw(self.model, config)
        self.data = DataPipeline(
            corpus if corpus is not None else load_corpus(config.corpus),
            context=config.model.context,
            batch_size=config.batch_size_per_rank,
            seed=config.seed,
            rank=rank,
            world_size=world_size,
        )
        self.iteration = 0

    @staticmethod
    def prepare(config: TrainerConfig, device: torch.device | str = "cpu") -> Prepared:
        """Build what a DDP trainer of ``config`` needs before it has a process group (a warm
        spare's wait): the seeded decoder, the corpus, and an AdamW whose state exists.

        Raises:
            ValueError: ``config`` is FSDP2's, whose model is sharded over the group.
        """
        if config.parallelism != "ddp":
            raise ValueError("only a DDP trainer can be prepared: FSDP2 shards at its build")
        torch.set_flush_denormal(True)
        module = GPT(config.model, seed=config.seed).to(torch.device(device))
        optimizer = _adamw(module, config)
        # The first ask for the state makes the moments (torch's get_state_dict: a step with
        # zero gradients at learning rate 0, which leaves every weight as it was).
        model_and_optimizer_state(module, optimizer, clone=False)
        return Prepared(module, optimizer, load_corpus(config.corpus))

    @staticmethod
    def warm_sharding(config: TrainerConfig) -> None:
        """Pay this process's first FSDP2 sharding and first FSDP2 state now, before it has a
        process group (a warm spare's wait), on a model of ``config`` sharded over a group of
        this process alone, which is then dropped.

        A process's first ``fully_shard`` and its first ask for an FSDP2 trainer's state (the
        optimizer's moments made by a step on DTensors whose dispatch torch has never seen)
        cost several times later ones, and a spare paid both inside a recovery, where every
        rank waited for it (docs/cluster.md, "Warm spares"). The model cannot be kept: its
        parameters would belong to this group's mesh.

        Raises:
            RuntimeError: a process group is already initialised.
        """
        if dist.is_initialized():
            raise RuntimeError("warm_sharding needs a process with no process group yet")
        store = dist.HashStore()  # type: ignore[attr-defined]
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        # Whatever torch draws on the way comes from a copy of the process's generator: the
        # job's first attempt finds it as a process that did not warm up would.
        with torch.random.fork_rng(devices=[]):
            try:
                model = _fully_shard(GPT(config.model, seed=config.seed), torch.device("cpu"), 1)
                optimizer = _adamw(model, config)
                model_and_optimizer_state(model, optimizer, clone=False)
                del model, optimizer
            finally:
                dist.destroy_process_group()

    def rejoin(self) -> None:
        """Wrap the same module and optimizer in the process group formed since (in-process
        recovery: the previous attempt's group is gone with its failure).

        DDP only: a new ``DistributedDataParallel`` around the same module, then the bucket
        warm-up, so the resumed run reduces exactly as an uninterrupted one. The wrap skips
        DDP's broadcast of rank 0's parameters: an attempt that rejoins always restores a
        checkpoint on every rank before its first step (one that starts over gives the rank
        to a fresh process instead), and the broadcast sent the whole model over every link
        for nothing (0.4-0.6 s of a restart over 0.2 Gbit/s links).

        Raises:
            ValueError: under FSDP2, whose parameters belong to the old group's device mesh:
                build a new ``Trainer`` instead.
        """
        if self.config.parallelism == "zero3":
            raise ValueError("an FSDP2 trainer cannot change process groups: build a new one")
        if not (dist.is_available() and dist.is_initialized()):
            return
        self.model = self._wrap_ddp(sync=False)

    def _wrap_ddp(self, *, sync: bool) -> nn.Module:
        """``self.module`` in ``DistributedDataParallel`` on the current group, its buckets
        settled; ``sync``: broadcast rank 0's parameters and buffers first (DDP's default)."""
        model = nn.parallel.DistributedDataParallel(
            self.module,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            bucket_cap_mb=self.config.bucket_cap_mb,
            init_sync=sync,
        )
        self._settle_ddp_buckets(model)
        return model

    def detach(self) -> None:
        """Drop the DDP wrapper (and with it the failed group's last reference), keeping the
        module and optimizer: until the group is gone, its connections stay open and the peers
        still blocked in a collective with this rank never learn that it left."""
        self.model = self.module

    def _settle_ddp_buckets(self, model: nn.Module) -> None:
        """One forward/backward on a blank batch, before any real iteration.

        DDP rebuilds its gradient buckets after the first backward, in the order gradients
        became ready, and gloo's ring all-reduce sums each element in an order that depends on
        its offset in the bucket. A run resumed from a checkpoint would otherwise reduce its
        first resumed iteration with the initial layout while the uninterrupted run used the
        rebuilt one, and the weights would drift by an ulp. Every run, fresh or resumed, does
        this warm-up, so every real iteration uses the rebuilt layout. It reads no data and
        draws no random numbers; the gradients are dropped.

        The blank batch is one token long: the order in which gradients become ready is the
        autograd graph's, the same at any length, and a full context cost every rank of a
        restart several times the compute (it wraps and settles on the restart's path).
        """
        blank = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        model(blank, blank).backward()
        for parameter in model.parameters():
            parameter.grad = None

    def _rate(self, step: int) -> float:
        return _rate(self.config, step)

    def step(self) -> StepResult:
        """Run one iteration: forward, backward (gradients reduced), clip, optimizer step."""
        iteration = self.iteration + 1
        rate = self._rate(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        inputs, targets = self.data.next_batch()
        loss = self.model(inputs.to(self.device), targets.to(self.device))
        loss.backward()
        if self.config.grad_clip_norm > 0:
            _clip_gradients(self.model, self.config.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration = iteration
        return StepResult(iteration, float(loss.detach().item()), rate)

    def state(self) -> dict[str, Any]:
        """The training state after ``self.iteration``; model and optim tensors are live."""
        model_state, optim_state = model_and_optimizer_state(
            self.model, self.optimizer, clone=False
        )
        return {
            "model": model_state,
            "optim": optim_state,
            "schedule": self._schedule_state(),
            "rng": capture_rng_state(),
            "data": self.data.state(),
            "iteration": self.iteration,
        }

    def _schedule_state(self) -> dict[str, Any]:
        return {
            "step": self.iteration,
            "peak": self.config.learning_rate,
            "warmup_steps": self.config.warmup_iterations,
            "total_steps": self.config.iterations,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (from ``state()``, a checkpointer, or DCP).

        Raises:
            ValueError: the state was taken with another schedule, corpus, seed or world size.
        """
        schedule = state["schedule"]
        mine = self._schedule_state()
        for key in ("peak", "warmup_steps", "total_steps"):
            if schedule[key] != mine[key]:
                raise ValueError(
                    f"the checkpoint's learning-rate schedule has {key}={schedule[key]}, this "
                    f"run {mine[key]}: resume with the same training settings"
                )
        load_model_and_optimizer_state(
            self.model, self.optimizer, state["model"], state["optim"], device=self.device
        )
        self.data.load_state(state["data"])
        restore_rng_state(state["rng"])
        self.iteration = int(state["iteration"])

    def model_state(self, *, full: bool = False) -> dict[str, torch.Tensor]:
        """The model's tensors on the CPU, copied.

        Args:
            full: gather FSDP2 shards into whole tensors (a collective: call on every rank).
                Under DDP every rank holds the whole model anyway.
        """
        options = StateDictOptions(full_state_dict=full and self.config.parallelism == "zero3")
        tensors = get_model_state_dict(self.model, options=options)
        return {
            name: _local(cast(torch.Tensor, t)).detach().cpu().clone()
            for name, t in tensors.items()
        }


def _rate(config: TrainerConfig, step: int) -> float:
    return learning_rate_at(
        step,
        peak=config.learning_rate,
        warmup_steps=config.warmup_iterations,
        total_steps=config.iterations,
    )


def _adamw(model: nn.Module, config: TrainerConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        model.parameters(),
        lr=_rate(config, 1),
        betas=(0.9, 0.95),
        weight_decay=config.weight_decay,
    )


def _fully_shard(module: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    assert isinstance(module, GPT)
    for block in module.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    # On the CPU, collectives that an abort ends: a survivor must not wait in a gloo
    # all-gather for peers that have left the attempt (in-process recovery).
    make_fsdp_abortable(module)
    return module


def _clip_gradients(model: nn.Module, max_norm: float) -> None:
    """Clip to a global gradient norm (under FSDP2 the norm is reduced over the shards)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    squares = torch.stack([_local(g).detach().float().pow(2).sum() for g in grads]).sum()
    if isinstance(grads[0], DTensor):
        group = grads[0].device_mesh.get_group()
        if squares.device.type == "cpu":  # gloo: a wait that the agent's abort ends
            wait_collective(dist.all_reduce(squares, group=group, async_op=True))
        else:
            dist.all_reduce(squares, group=group)
    total = squares.sqrt()
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grad in grads:
        _local(grad).mul_(scale.to(grad.device))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor
