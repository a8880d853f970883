"""The DDP and FSDP2 adapters on 2 gloo ranks: bitwise round trip, and restore-then-continue.

One job of two ranks (this file run as a worker: ``python test_adapters_torch.py '<json>'``)
trains a small MLP under DDP, then under FSDP2 (``fully_shard``), with AdamW and a warm-up then
cosine LR schedule, on batches drawn from the global torch, numpy and python generators (so
restoring them matters). At iteration 3 it takes ``state_dict(...)`` (cloned) and passes it
through the in-memory engine's layout (``real.engine.state.flatten_state``, local tensors copied,
JSON values through ``json``), as a checkpointer stores it; the first model trains on to
iteration 7 without a pause. A freshly built model, optimizer and scheduler then load the stored
state: their state must equal the captured one bit for bit (generators included, and the capture
must not have changed while the first model trained on), and after training 4..7 they must end
in the first model's state, bit for bit, without having changed the stored state they loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from real.runtime.processes import free_port, stop_process

KINDS = ("ddp", "fsdp2")
CAPTURE_AT, ITERATIONS = 3, 7
TIMEOUT_S = 180


def worker(config: dict[str, Any]) -> None:
    """One rank: both kinds in turn; writes its findings as JSON."""
    import hashlib
    import random

    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn

    from gemini_ckpt.adapters import ddp, fsdp2
    from real.engine.state import flatten_state, unflatten_state
    from real.runtime.procgroup import leave_process_group

    rank = config["rank"]
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{config['port']}", rank=rank, world_size=2
    )
    torch.set_num_threads(1)

    def build(kind: str) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
        generator = torch.Generator().manual_seed(0)
        module = nn.Sequential(nn.Linear(12, 48), nn.GELU(), nn.Linear(48, 6))
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        model: nn.Module
        if kind == "ddp":
            model = nn.parallel.DistributedDataParallel(module)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (2,))
            fully_shard(module[0], mesh=mesh)
            fully_shard(module[2], mesh=mesh)
            model = fully_shard(module, mesh=mesh)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.2, total_iters=2)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], [2])
        return model, optimizer, scheduler

    def step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        # Every global generator moves, so a restore that missed one would show.
        inputs = torch.randn(8, 12) * (1.0 + random.random()) + float(np.random.rand())
        loss = (model(inputs) - inputs[:, :6]).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    def stored(state: dict[str, Any]) -> dict[str, Any]:
        """``state`` as the in-memory engine keeps and returns it."""
        tensors, values = flatten_state(state)
        local = {
            name: (t.to_local() if hasattr(t, "to_local") else t).detach().clone()
            for name, t in tensors.items()
        }
        return unflatten_state(local, json.loads(json.dumps(values)))

    def digest(state: dict[str, Any]) -> dict[str, str]:
        tensors, values = flatten_state(state)
        found = {}
        for name, tensor in tensors.items():
            local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
            raw = local.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            found[name] = f"{local.dtype}{tuple(local.shape)}:{hashlib.sha256(raw).hexdigest()}"
        for name, value in values.items():
            found[name] = json.dumps(value)
        return found

    report: dict[str, Any] = {}
    for kind, adapter in (("ddp", ddp), ("fsdp2", fsdp2)):
        torch.manual_seed(rank)
        random.seed(rank)
        np.random.seed(rank)
        first = build(kind)
        for _ in range(CAPTURE_AT):
            step(*first)
        captured = adapter.state_dict(*first)
        at_capture = digest(captured)
        kept = stored(captured)
        kept_digest = digest(kept)
        for _ in range(CAPTURE_AT, ITERATIONS):
            step(*first)
        uninterrupted = digest(adapter.state_dict(*first))
        second = build(kind)
        model, optimizer, scheduler = second
        adapter.load_state_dict(model, optimizer, kept, scheduler)
        loaded = digest(adapter.state_dict(*second))
        for _ in range(CAPTURE_AT, ITERATIONS):
            step(*second)
        report[kind] = {
            "sharded": any(
                "DTensor" in type(t).__name__ for t in flatten_state(captured)[0].values()
            ),
            "capture_kept": digest(captured) == at_capture,
            "round_trip": {
                k: (v, loaded.get(k)) for k, v in at_capture.items() if loaded.get(k) != v
            },
            "same_names": sorted(loaded) == sorted(at_capture),
            "continued": {
                k: (v, uninterrupted.get(k))
                for k, v in digest(adapter.state_dict(*second)).items()
                if uninterrupted.get(k) != v
            },
            "stored_untouched": digest(kept) == kept_digest,
            "captured_iteration": CAPTURE_AT,
            "names": sorted(at_capture),
        }
        del first, second, model, optimizer, scheduler
    Path(config["report"]).write_text(json.dumps(report))
    leave_process_group(together=True)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run the two-rank job once; each rank's findings."""
    folder = tmp_path_factory.mktemp("adapters")
    port = free_port()
    processes = []
    try:
        for rank in range(2):
            config = {"rank": rank, "port": port, "report": str(folder / f"rank{rank}.json")}
            with open(folder / f"rank{rank}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, __file__, json.dumps(config)],
                        env={**os.environ, "OMP_NUM_THREADS": "1"},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        for rank, process in enumerate(processes):
            code = process.wait(TIMEOUT_S)
            log_text = (folder / f"rank{rank}.log").read_text(errors="replace")[-4000:]
            assert code == 0, f"rank {rank} exited {code}:\n{log_text}"
    finally:
        for process in processes:
            stop_process(process, 10)
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trips_bitwise(reports: list[dict[str, Any]], kind: str) -> None:
    for rank, report in enumerate(reports):
        found = report[kind]
        assert found["sharded"] == (kind == "fsdp2"), f"rank {rank}: {kind} state layout"
        names = found["names"]
        for prefix in ("model/", "optim/state/", "scheduler/", "rng/torch", "rng/numpy/"):
            assert any(name.startswith(prefix) for name in names), (rank, prefix, names)
        assert found["capture_kept"], f"rank {rank}: the cloned capture changed with training"
        assert found["same_names"], f"rank {rank}: the reloaded state has other entries"
        assert found["round_trip"] == {}, f"rank {rank}: reloaded state differs"


@pytest.mark.parametrize("kind", KINDS)
def test_restore_then_continue_equals_uninterrupted(
    reports: list[dict[str, Any]], kind: str
) -> None:
    for rank, report in enumerate(reports):
        found = report[kind]
        assert found["continued"] == {}, f"rank {rank}: {kind} after restore differs"
        assert found["stored_untouched"], f"rank {rank}: training changed the loaded state"


def test_a_state_taken_without_a_scheduler_does_not_load_into_one() -> None:
    """In one process (no process group): the error names what is missing and the way out."""
    import torch
    from torch import nn

    from gemini_ckpt.adapters import ddp

    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer)
    state = ddp.state_dict(model, optimizer)
    assert "scheduler" not in state
    with pytest.raises(ValueError, match=r"no learning-rate scheduler.*scheduler=None"):
        ddp.load_state_dict(model, optimizer, state, scheduler)


def test_a_restore_drops_the_gradients_of_an_aborted_step() -> None:
    """A survivor aborted after its backward (before its step) holds that step's gradients;
    with a loop that zeroes them after each step, the restore must drop them, or its first
    step after the restore adds them in and the run leaves the uninterrupted one."""
    import torch
    from torch import nn

    from gemini_ckpt.adapters import ddp

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.ones(4, 3)

    def step() -> None:  # backward, step, then zero: the accumulation-friendly order
        model(batch).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    state = ddp.state_dict(model, optimizer)
    step()
    uninterrupted = {key: value.clone() for key, value in model.state_dict().items()}
    model(batch).square().sum().backward()  # the aborted step: gradients, no optimizer step
    ddp.load_state_dict(model, optimizer, state)
    assert all(parameter.grad is None for parameter in model.parameters())
    step()
    for key, value in model.state_dict().items():
        assert torch.equal(value, uninterrupted[key]), key


def test_a_state_taken_before_the_first_step_changes_nothing() -> None:
    """torch's ``get_state_dict`` initialises an optimizer without state by a step at learning
    rate 0, which counts (AdamW's ``step`` becomes 1): a save before the first step must not
    change the run, and a restore of it must start the optimizer from no step."""
    import torch
    from torch import nn

    from gemini_ckpt.adapters import ddp

    def build() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
        for _ in range(steps):
            model(torch.ones(4, 3)).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad()

    model, optimizer = build()
    train(model, optimizer, 3)
    uninterrupted = {key: value.clone() for key, value in model.state_dict().items()}

    model, optimizer = build()
    state = ddp.state_dict(model, optimizer)  # no gradients yet: what torch initialises
    assert state["optim"]["state"] == {} and not optimizer.state
    train(model, optimizer, 3)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in uninterrupted.items())

    # Taken as a restore's template, it keeps torch's optimizer tensors to restore into.
    from real.trainer.templates import initialising_optimizers

    with initialising_optimizers():
        assert set(ddp.state_dict(*build())["optim"]["state"]) == {"weight", "bias"}

    survivor, its_optimizer = build()  # trained on, then rolled back to before the first step
    train(survivor, its_optimizer, 2)
    ddp.load_state_dict(survivor, its_optimizer, state)
    assert not its_optimizer.state
    train(survivor, its_optimizer, 3)
    assert all(torch.equal(survivor.state_dict()[k], v) for k, v in uninterrupted.items())


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
