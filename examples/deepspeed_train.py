"""DeepSpeed ZeRO training under torchrun, checkpointed into memory every iteration.

A small MLP learns a fixed random linear map; each rank's batches are a pure function of
(seed, rank, iteration), so a resumed run reads exactly the batches the uninterrupted run would
have. The whole training state of every rank (module, ZeRO partition of fp32 master weights and
Adam state, LR scheduler, step counters, generators) goes out through
``gemini_ckpt.adapters.deepspeed.state_dict`` and back through ``load_state_dict``;
``gemini_ckpt.Checkpointer`` keeps it in memory: in a store daemon per node that outlives
torchrun's worker restarts, and in ``--replicas`` - 1 peers' (on several nodes).

One machine, CPU and gloo, ZeRO-3 on two ranks; a failed worker makes torchrun restart them all
(``--max-restarts``), and they resume from memory::

    DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 --max-restarts 1 \\
        examples/deepspeed_train.py --zero-stage 3

``GEMINI_CRASH_AT_ITERATION=12 GEMINI_CRASH_RANK=1`` (``real.trainer.inject``) kills rank 1 there in
the
first attempt. The last line of each rank (``state sha256 ...``) equals that of a
run that never failed.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gemini_ckpt import Checkpointer
from gemini_ckpt.adapters import deepspeed as ds_state
from real.engine.state import flatten_state
from real.runtime.procgroup import leave_process_group
from real.trainer.inject import crash_point_from_env, maybe_crash

log = logging.getLogger("deepspeed_train")

FEATURES, HIDDEN, OUTPUTS = 16, 64, 4


def init_distributed() -> None:
    """Let DeepSpeed take the process group (formed from torchrun's environment if none is).

    ``deepspeed.init_distributed`` would JIT-compile its shared-memory collectives first
    (minutes on a small CPU machine), which gloo does not need.
    """
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def deepspeed_config(zero_stage: int, *, bf16: bool = False) -> dict[str, Any]:
    """The engine's configuration: ZeRO stage, clipping, a warm-up LR schedule."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": zero_stage},
        "scheduler": {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 3e-3, "warmup_num_steps": 5},
        },
    }
    if bf16:
        config["bf16"] = {"enabled": True}
    return config


def build_engine(zero_stage: int, *, bf16: bool = False, seed: int = 0) -> Any:
    """A fresh engine: the model's weights from ``seed``, AdamW, the config above."""
    import deepspeed

    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, OUTPUTS))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(zero_stage, bf16=bf16)
    )
    return engine


def train_step(engine: Any, iteration: int, *, seed: int = 0) -> float:
    """One optimizer step on this rank's batch of ``iteration``; returns the loss."""
    rank = engine.global_rank
    generator = torch.Generator().manual_seed(seed * 1_000_003 + iteration * 1_009 + rank)
    inputs = torch.randn(engine.train_micro_batch_size_per_gpu(), FEATURES, generator=generator)
    target_map = torch.randn(FEATURES, OUTPUTS, generator=torch.Generator().manual_seed(seed))
    targets = inputs @ target_map
    dtype = next(engine.module.parameters()).dtype
    outputs = engine(inputs.to(engine.device, dtype))
    loss = (outputs.float() - targets.to(engine.device)).pow(2).mean()
    engine.backward(loss)
    engine.step()
    return float(loss.detach().item())


def state_digest(state: Mapping[str, Any]) -> dict[str, str]:
    """sha256 of every tensor and JSON value of a state, by name (generator states left out:
    they depend on what else the process drew)."""
    tensors, values = flatten_state(state)
    digests = {}
    for name, tensor in tensors.items():
        if not name.startswith("rng/"):
            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            digests[name] = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
    for name, value in values.items():
        if not name.startswith("rng/"):
            digests[name] = hashlib.sha256(json.dumps(value).encode()).hexdigest()
    return digests


def combined_digest(digests: Mapping[str, str]) -> str:
    """One sha256 over a state's per-name digests."""
    return hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zero-stage", type=int, choices=(1, 2, 3), default=3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=2, help="copies of each checkpoint")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights, fp32 masters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/deepspeed-example"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank %(process)d: %(message)s")
    torch.set_flush_denormal(True)

    # Rank, world and node from torchrun's environment; it forms the process group (afresh on
    # every torchrun attempt), which DeepSpeed then uses.
    checkpointer = Checkpointer(replicas=args.replicas, run_dir=args.out)
    init_distributed()
    engine = build_engine(args.zero_stage, bf16=args.bf16, seed=args.seed)
    rank = engine.global_rank
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    crash = crash_point_from_env() if first_attempt else None
    start = 1
    restored = checkpointer.restore()
    if restored is not None:
        ds_state.load_state_dict(engine, restored.state)
        start = restored.iteration + 1
        log.info("rank %d: restored iteration %d (%s)", rank, restored.iteration, restored.tier)
    loss = float("nan")
    for iteration in range(start, args.iterations + 1):
        maybe_crash(crash, iteration, rank, "before_step")
        loss = train_step(engine, iteration, seed=args.seed)
        maybe_crash(crash, iteration, rank, "after_step")
        # clone=False: save() copies every tensor before it returns.
        checkpointer.save(iteration, ds_state.state_dict(engine, clone=False))
        maybe_crash(crash, iteration, rank, "after_save")
    digest = combined_digest(state_digest(ds_state.state_dict(engine)))
    print(
        f"rank {rank}: finished iteration {args.iterations}, loss {loss:.6f}, "
        f"state sha256 {digest}",
        flush=True,
    )
    checkpointer.close()
    # Drop the engine before the process group (a group still held at exit can abort).
    del engine, restored
    gc.collect()
    leave_process_group(together=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
