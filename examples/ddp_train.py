"""A minimal DDP training script protected by gemini-ckpt's in-memory checkpoints.

Runs under plain torchrun (a worker that fails restarts and restores from memory) and, unchanged,
under gemini-ckpt's agents (survivors recover in process)::

    torchrun --nnodes 1 --nproc-per-node 2 --max-restarts 3 examples/ddp_train.py --out runs/ddp

Set ``EXAMPLE_CRASH_AT=<iteration>`` to make rank 1 die there once (first torchrun attempt).
As written it trains on the CPU (gloo); on a GPU host, where the process group uses NCCL, put
the model and the batches on ``cuda:LOCAL_RANK`` (docs/training.md).
"""

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from gemini_ckpt import Checkpointer
from gemini_ckpt.adapters import ddp as adapter

parser = argparse.ArgumentParser()
parser.add_argument("--iterations", type=int, default=30)
parser.add_argument("--out", type=Path, default=Path("runs/ddp-example"))
args = parser.parse_args()

torch.manual_seed(0)
torch.set_num_threads(1)
checkpointer = Checkpointer(replicas=2, run_dir=args.out)  # joins the process group
model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
crash_at = int(os.environ.get("EXAMPLE_CRASH_AT", "0"))


def batch(iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Data as a pure function of (iteration, rank): a resumed run sees what it would have."""
    generator = torch.Generator().manual_seed(iteration * 1000 + dist.get_rank())
    inputs = torch.randn(16, 32, generator=generator)
    return inputs, inputs.sum(dim=1, keepdim=True).sin()


def train(restored) -> None:  # once per attempt, with the process group ready
    ddp_model = nn.parallel.DistributedDataParallel(model)
    checkpointer.attach(ddp_model)  # its all-reduces' idle spans carry the replicas
    # One warm-up forward and backward, gradients dropped: DDP regroups its buckets after its
    # first backward, and on more than two ranks a resumed run must reduce in the layout of
    # the run it continues (docs/training.md, "What the adapters leave to your script").
    ddp_model(torch.zeros(1, 32)).sum().backward()
    optimizer.zero_grad(set_to_none=True)
    start = 1
    if restored is not None:
        adapter.load_state_dict(ddp_model, optimizer, restored.state)
        start = restored.iteration + 1
        print(f"rank {dist.get_rank()}: resumed at {start} from {restored.tier}", flush=True)
    for iteration in range(start, args.iterations + 1):
        inputs, targets = batch(iteration)
        loss = nn.functional.mse_loss(ddp_model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        checkpointer.save(iteration, adapter.state_dict(ddp_model, optimizer, clone=False))
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if iteration == crash_at and dist.get_rank() == 1 and first_attempt:
            os._exit(17)  # a crash: no cleanup, as a real failure
    if dist.get_rank() == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out / "final.pt")


checkpointer.run(train)
checkpointer.close()  # leaves the process group it formed
