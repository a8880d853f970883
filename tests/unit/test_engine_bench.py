"""The training benchmark's model sizes (``gemini-ckpt bench engine --models``) and its CPU
time reading."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks.engine_training import MODELS, _cpu_s, parse_model
from real.trainer.workload.model import GPT, GPTConfig, parameter_count


@pytest.mark.parametrize("name", sorted(MODELS))
def test_preset_parameter_counts_match_the_model(name: str) -> None:
    model = MODELS[name]
    built = GPT(GPTConfig(model.layers, model.hidden, model.heads, model.context))
    assert model.parameters == parameter_count(built)


def test_presets_and_shapes_parse() -> None:
    assert parse_model("medium") is MODELS["medium"]
    custom = parse_model("3x96x48/4")
    assert (custom.layers, custom.hidden, custom.context, custom.batch) == (3, 96, 48, 4)
    assert parse_model("3x96x48").batch == 8


@pytest.mark.parametrize("text", ["huge", "3x96", "axbxc/2"])
def test_bad_model_names_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="LAYERSxHIDDENxCONTEXT"):
        parse_model(text)


def test_process_cpu_time_is_read_from_proc_and_grows_with_work() -> None:
    before = _cpu_s(os.getpid())
    assert abs(before - sum(os.times()[:2])) < 0.05  # what the kernel says of this process
    spent = time.process_time()
    while time.process_time() - spent < 0.3:
        pass
    assert _cpu_s(os.getpid()) - before >= 0.2


def test_floor_checkpointer_copies_and_sends_every_state_byte_to_the_peer() -> None:
    """The training benchmark's floor moves the whole state: each save's bytes land in the
    peer store's sink, and two buffers alternate so a save never overwrites one in flight."""
    import torch

    from benchmarks.engine_training import FloorCheckpointer
    from real.engine.client import StoreClient
    from real.engine.protocol import make_token
    from real.engine.store import NodeStore

    token = make_token()
    store = NodeStore(1, token).start()
    floor = FloorCheckpointer(StoreClient(1, store.address, token))
    try:
        weights = torch.arange(1000, dtype=torch.float32)
        state = {"model": {"w": weights, "b": torch.arange(3, dtype=torch.int64)}, "step": 0}
        for iteration in range(1, 4):
            weights.add_(1.0)
            floor.save(iteration, state)
            floor.wait()
            got = bytes(store.scratch[: floor.buffers[0].numel()])
            sent = bytes(floor.buffers[(iteration - 1) % 2].numpy())
            assert got == sent
            first = torch.frombuffer(bytearray(got[:4000]), dtype=torch.float32)
            assert torch.equal(first, weights)
        # 4000 bytes of weights, then 24 of int64 at the next 64-byte boundary
        assert floor.sent_bytes == 3 * (4032 + 64)
        assert floor.buffers[0].data_ptr() != floor.buffers[1].data_ptr()
    finally:
        floor.close()
        store.stop()


def test_the_double_buffer_writes_its_two_buffers_in_turn() -> None:
    import torch

    from benchmarks.engine_costs import DoubleBuffer

    tensors = [torch.arange(6, dtype=torch.float32).view(2, 3), torch.ones(4, dtype=torch.int64)]
    double = DoubleBuffer(tensors)
    double.copy(tensors)
    first = double.turn
    assert all(torch.equal(a, b) for a, b in zip(double.halves[first], tensors, strict=True))
    assert not double.halves[1 - first][0].any()  # the other buffer not yet written
    tensors[0].add_(1)
    double.copy(tensors)
    assert double.turn == 1 - first
    assert torch.equal(double.halves[double.turn][0], tensors[0])
    assert not torch.equal(double.halves[first][0], tensors[0])  # the older copy kept


def test_the_capture_is_measured_as_training_captures_into_both_slots() -> None:
    """Every capture is committed, as in training, so the next one goes to the other slot
    (once every capture wrote the same slot, which no training does), and the capture is set
    beside both baselines."""
    from benchmarks.engine_costs import micro

    result = micro(2, 2)
    assert result["capture_slots"] == [0, 1]
    for key in ("capture", "capture_vs_double_buffer", "double_buffer"):
        assert result[key]["engine_s"] > 0 and result[key]["baseline_s"] > 0, key
