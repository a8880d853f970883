"""The state dicts of a plain or DDP model come from key maps learnt from
``get_state_dict`` once; they must equal what ``get_state_dict`` gives, every time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict

from real.runtime.procgroup import leave_process_group
from real.trainer import training_state
from real.trainer.training_state import model_and_optimizer_state
from real.trainer.workload.model import GPT, GPTConfig


def _same(ours: Any, theirs: Any, path: str = "") -> None:
    """Equal keys and values; tensors the very same memory."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor), path
        assert ours.data_ptr() == theirs.data_ptr() and ours.shape == theirs.shape, path
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), path
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), path
        for key in theirs:
            _same(ours[key], theirs[key], f"{path}/{key}")
    elif isinstance(theirs, list | tuple):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), path
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _same(a, b, f"{path}[{index}]")
    else:
        assert ours == theirs, path


def _stepped(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    model(tokens).float().mean().backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return get_state_dict(*args, **kwargs)

    monkeypatch.setattr(training_state, "get_state_dict", counting)
    return calls


@pytest.fixture
def group(tmp_path: Path) -> Iterator[None]:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        leave_process_group(together=True)  # the test's DDP module collected first


def _check(model: nn.Module, optimizer: torch.optim.Optimizer, counted: list[int]) -> None:
    for step in range(3):
        _stepped(model, optimizer)
        ours = model_and_optimizer_state(model, optimizer, clone=False)
        _same(ours, get_state_dict(model, optimizer), f"step {step}")


def test_a_plain_model_learns_its_keys_once(counted: list[int]) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(2, 32, 4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _check(model, optimizer, counted)
    assert counted == [1]  # learnt on the first call, renamed after


def test_a_ddp_model_learns_names_without_its_prefix(counted: list[int], group: None) -> None:
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(GPT(GPTConfig(2, 32, 4, 16)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _check(model, optimizer, counted)
    assert counted == [1]
    names = list(model_and_optimizer_state(model, optimizer, clone=False)[0])
    assert names and not any(name.startswith("module.") for name in names)


def test_a_new_ddp_wrapper_of_the_same_module_keeps_the_learnt_keys(
    counted: list[int], group: None
) -> None:
    """In-process recovery wraps the same module in a new DDP wrapper (``Trainer.rejoin``):
    its keys are the old wrapper's, so they are not learnt again; the plain module's are."""
    torch.manual_seed(0)
    module = GPT(GPTConfig(2, 32, 4, 16))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    _check(nn.parallel.DistributedDataParallel(module), optimizer, counted)
    assert counted == [1]
    rewrapped = nn.parallel.DistributedDataParallel(module, init_sync=False)
    _check(rewrapped, optimizer, counted)
    assert counted == [1]
    _check(module, optimizer, counted)  # unwrapped: other keys, learnt anew
    assert counted == [1, 1]


def test_changed_keys_go_back_to_get_state_dict(counted: list[int]) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(2, 32, 4, 16))
    first = list(model.parameters())[:3]
    optimizer = torch.optim.AdamW(first, lr=1e-3)
    _check(model, optimizer, counted)
    optimizer.add_param_group({"params": list(model.parameters())[3:], "lr": 1e-4})
    _check(model, optimizer, counted)  # a new group: its indices are not learnt
    assert len(counted) == 2
    other = torch.optim.AdamW(model.parameters(), lr=1e-3)  # another optimizer, same model
    _check(model, other, counted)
    assert len(counted) == 3
    group = other.param_groups[0]["params"]
    group[0], group[1] = group[1], group[0]  # same count, other tensors at two indices
    _check(model, other, counted)
    assert len(counted) == 4


def test_tied_weights_always_take_get_state_dict(counted: list[int]) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(256, 8)
            self.head = nn.Linear(8, 256, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(tokens))

    model = Tied()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _check(model, optimizer, counted)
    assert len(counted) == 3  # one name per memory is not a renaming: never learnt
