"""The GPU path's logic on CPU: the CUDA capture (pinned staging, side stream), the idle-span
profiler's CUDA events, and NCCL's abort, each against a stand-in for the device.

``benchmarks/gpu_check.py`` runs the same paths on a real GPU when one is there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import xxhash

from real.engine.capture import Capturer, CudaStager
from real.engine.client import StoreClient
from real.engine.manifest import seal
from real.engine.profiler import CommProfiler
from real.engine.protocol import make_token
from real.engine.restore import read_local
from real.engine.store import NodeStore
from real.trainer.inprocess import leave_attempt

MB = 1 << 20


class FakeCuda:
    """Streams and events as ``torch.cuda`` offers them, on CPU, logging every call.

    ``now`` is the device clock (seconds): an event recorded takes its value.
    """

    def __init__(self) -> None:
        self.log: list[str] = []
        self.now = 0.0
        self.default = FakeStream(self, "default")
        self.current = self.default
        self.events = 0

    def Stream(self) -> FakeStream:  # torch.cuda's name
        return FakeStream(self, "side")

    def Event(self, enable_timing: bool = False) -> FakeEvent:
        self.events += 1
        return FakeEvent(self, self.events)

    def current_stream(self) -> FakeStream:
        return self.current

    @contextlib.contextmanager
    def stream(self, stream: FakeStream) -> Iterator[None]:
        previous, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = previous


class FakeStream:
    def __init__(self, cuda: FakeCuda, name: str) -> None:
        self.cuda, self.name = cuda, name

    def wait_stream(self, other: FakeStream) -> None:
        self.cuda.log.append(f"{self.name} waits for {other.name}")


class FakeEvent:
    def __init__(self, cuda: FakeCuda, number: int) -> None:
        self.cuda, self.number, self.time = cuda, number, -1.0

    def record(self, stream: FakeStream | None = None) -> None:
        stream = stream or self.cuda.current
        self.time = self.cuda.now
        self.cuda.log.append(f"record {self.number} on {stream.name}")

    def synchronize(self) -> None:
        self.cuda.log.append(f"sync {self.number}")

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.time >= 0 and end.time >= 0, "elapsed_time of an event never recorded"
        return (end.time - self.time) * 1000.0


def test_the_stager_pipelines_pieces_through_its_buffers_after_the_training_stream() -> None:
    cuda = FakeCuda()
    stager = CudaStager(2 * MB, 2, cuda=cuda, pin_memory=False)  # 2 buffers of 1 MiB
    sources = [torch.randn(int(2.5 * MB) // 4), torch.randn(1000), torch.randn(MB // 4)]
    targets = [torch.zeros(s.numel() * 4, dtype=torch.uint8) for s in sources]
    stager.copy(list(zip(sources, targets, strict=True)))
    for source, target in zip(sources, targets, strict=True):
        assert torch.equal(target.view(torch.float32), source)
    log = cuda.log
    # The side stream waits for the training stream before its first copy.
    assert log[0] == "side waits for default"
    records = [int(line.split()[1]) for line in log if line.startswith("record")]
    assert len(records) == 3 + 1 + 1  # 2.5 MiB in three 1 MiB pieces, then one each
    assert all("on side" in line for line in log if line.startswith("record"))
    # A buffer is reused only after the event of its previous piece was waited for: with two
    # buffers, piece n + 2 is recorded after piece n's sync.
    for n in records[:-2]:
        assert log.index(f"sync {n}") < log.index(f"record {n + 2} on side")
    # Every piece landed: every event was waited for before copy() returned.
    assert sorted(int(line.split()[1]) for line in log if line.startswith("sync")) == records


def test_device_tensors_are_captured_through_the_stager(tmp_path: Any) -> None:
    token = make_token()
    store = NodeStore(0, token, shm_dir=tmp_path).start()
    client = StoreClient(0, store.address, token)
    capturer = Capturer(client, owner=0)
    cuda = FakeCuda()
    capturer._stager = CudaStager(2 * MB, 2, cuda=cuda, pin_memory=False)
    capturer.on_host = lambda tensor: tensor.numel() < 1000  # the big ones count as on device
    weights = {"w": torch.randn(700, 700), "b": torch.randn(10)}
    state = {"model": weights, "step": 3}
    try:
        captured = capturer.capture(1, state)
        seal(captured.manifest, captured.slot.data(captured.nbytes))
        raw = captured.manifest.to_bytes()
        captured.slot.write_manifest(raw, xxhash.xxh3_64_intdigest(raw), captured.nbytes)
        capturer.commit(captured)
        restored = read_local(capturer.slots, 0, 1)
        assert torch.equal(restored["model"]["w"], weights["w"])
        assert torch.equal(restored["model"]["b"], weights["b"])
        assert cuda.log[0] == "side waits for default"  # w went through the stager
    finally:
        capturer.close()
        client.close()
        store.stop()


def test_the_profiler_times_device_buckets_by_cuda_events_not_the_host_clock() -> None:
    cuda = FakeCuda()
    host = [100.0]
    profiler = CommProfiler(2, clock=lambda: host[0], cuda=cuda)

    def iteration(queued_at: float, runs: tuple[float, float], ends_at: float) -> None:
        # The hook runs (the all-reduce is queued) early on the host; on the device the bucket
        # is ready at runs[0] and its all-reduce finishes at runs[1].
        host[0] += queued_at
        cuda.now = runs[0]
        future: torch.futures.Future[Any] = torch.futures.Future()
        chained = profiler.timed(lambda: future, on_device=True)
        cuda.now = runs[1]
        future.set_result([torch.zeros(1)])
        chained.wait()
        cuda.now = ends_at
        host[0] += 0.001
        profiler.iteration_begins()

    cuda.now = 0.0
    profiler.iteration_begins()  # the first iteration starts: device time 0
    iteration(0.0001, (0.020, 0.050), 0.100)
    start = cuda.now
    iteration(0.0001, (start + 0.030, start + 0.060), start + 0.100)
    assert profiler.done
    assert profiler.busy == [pytest.approx((0.020, 0.050)), pytest.approx((0.030, 0.060))]
    # The host clock saw 0.1 ms between queueing and the iteration's start: unused.
    assert all(end - begin > 0.02 for begin, end in profiler.busy)


def test_host_buckets_are_still_timed_by_the_host_clock() -> None:
    host = [10.0]
    profiler = CommProfiler(1, clock=lambda: host[0])
    profiler.iteration_begins()
    host[0] += 0.010
    future: torch.futures.Future[Any] = torch.futures.Future()
    chained = profiler.timed(lambda: future, on_device=False)
    host[0] += 0.005
    future.set_result([torch.zeros(1)])
    chained.wait()
    host[0] += 0.020
    profiler.iteration_begins()
    assert profiler.busy == [pytest.approx((0.010, 0.015))]


@pytest.mark.parametrize("backend", ["nccl", "gloo"])
def test_leaving_a_failed_attempt_aborts_nccl_communicators(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    import torch.distributed as dist

    calls: list[str] = []
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(
        dist.distributed_c10d, "_abort_process_group", lambda *a, **k: calls.append("abort")
    )
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: calls.append("destroy"))
    leave_attempt(together=False)
    # NCCL: its communicators are aborted first (a rank blocked on a dead peer returns), then
    # the group is destroyed; gloo has no working abort and is only destroyed.
    assert calls == (["abort", "destroy"] if backend == "nccl" else ["destroy"])
