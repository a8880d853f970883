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

    def __init__(self, page_lock: bool = True) -> None:
        self.log: list[str] = []
        self.now = 0.0
        self.default = FakeStream(self, "default")
        self.current = self.default
        self.events = 0
        self.page_lock = page_lock  # whether cudaHostRegister succeeds
        self.locked: dict[int, int] = {}  # page-locked regions: address -> bytes

    def cudart(self) -> FakeCudart:
        return FakeCudart(self)

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


class FakeCudart:
    """``cudaHostRegister`` and ``cudaHostUnregister``, keeping the locked regions."""

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda

    def cudaHostRegister(self, pointer: int, size: int, flags: int) -> int:
        assert pointer not in self.cuda.locked, "a region page-locked twice"
        self.cuda.log.append(f"register {size}")
        if not self.cuda.page_lock:
            return 1  # cudaErrorInvalidValue, as CUDA answers a region it will not lock
        self.cuda.locked[pointer] = size
        return 0

    def cudaHostUnregister(self, pointer: int) -> int:
        self.cuda.log.append(f"unregister {self.cuda.locked.pop(pointer)}")
        return 0

    def cudaGetLastError(self) -> int:
        self.cuda.log.append("last error read")
        return 0


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


def test_device_tensors_go_through_staging_where_cuda_will_not_page_lock_the_slot(
    tmp_path: Any,
) -> None:
    token = make_token()
    store = NodeStore(0, token, shm_dir=tmp_path).start()
    client = StoreClient(0, store.address, token)
    capturer = Capturer(client, owner=0)
    cuda = FakeCuda(page_lock=False)
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
        assert cuda.log[0].startswith("register")  # refused, and its error cleared:
        assert cuda.log[1] == "last error read"  # the next kernel's check would report it
        assert cuda.log[2] == "side waits for default"  # then w went through the stager
        assert len(capturer._stager.buffers) == 2
        assert sum(line.startswith("sync") for line in cuda.log) == 2  # 1.96 MB in 2 pieces
    finally:
        capturer.close()
        client.close()
        store.stop()
    assert not any(line.startswith("unregister") for line in cuda.log)


def test_device_tensors_land_straight_in_the_page_locked_slot(tmp_path: Any) -> None:
    token = make_token()
    store = NodeStore(0, token, shm_dir=tmp_path).start()
    client = StoreClient(0, store.address, token)
    capturer = Capturer(client, owner=0)
    cuda = FakeCuda()
    stager = capturer._stager = CudaStager(2 * MB, 2, cuda=cuda, pin_memory=False)
    capturer.on_host = lambda tensor: tensor.numel() < 1000  # the big ones count as on device
    weights = {"w": torch.randn(700, 700), "v": torch.randn(300, 300), "b": torch.randn(10)}
    state = {"model": weights, "step": 3}
    try:
        for iteration in (1, 2, 3):
            for tensor in weights.values():
                tensor.add_(1.0)
            captured = capturer.capture(iteration, state)
            seal(captured.manifest, captured.slot.data(captured.nbytes))
            raw = captured.manifest.to_bytes()
            captured.slot.write_manifest(raw, xxhash.xxh3_64_intdigest(raw), captured.nbytes)
            capturer.commit(captured)
            restored = read_local(capturer.slots, 0, iteration)
            assert all(torch.equal(restored["model"][k], t) for k, t in weights.items())
        # Each of the two slots' data regions was page-locked once, whole, and no staging
        # buffer was ever allocated: one pass over the bytes.
        registered = [line for line in cuda.log if line.startswith("register")]
        assert len(registered) == 2
        assert sorted(cuda.locked.values()) == sorted(
            slot.state().data_capacity for slot in capturer.slots if slot is not None
        )
        assert stager._buffers == []
        # Per capture: the side stream waits for the training stream, then one event after
        # both device tensors' copies, waited for once.
        waits = [i for i, line in enumerate(cuda.log) if line == "side waits for default"]
        assert len(waits) == 3
        assert sum(line.startswith("record") for line in cuda.log) == 3
        assert sum(line.startswith("sync") for line in cuda.log) == 3
    finally:
        capturer.close()
        client.close()
        store.stop()
    assert cuda.locked == {}  # unlocked before the slots were unmapped
    assert sum(line.startswith("unregister") for line in cuda.log) == 2


def test_a_replaced_slot_is_unlocked_before_it_is_unmapped(tmp_path: Any) -> None:
    token = make_token()
    store = NodeStore(0, token, shm_dir=tmp_path).start()
    client = StoreClient(0, store.address, token)
    capturer = Capturer(client, owner=0, local_slots=1)
    cuda = FakeCuda()
    capturer._stager = CudaStager(2 * MB, 2, cuda=cuda, pin_memory=False)
    capturer.on_host = lambda tensor: False
    try:
        capturer.capture(1, {"w": torch.randn(1000)})
        first = dict(cuda.locked)
        capturer.capture(2, {"w": torch.randn(1000), "grown": torch.randn(MB)})  # a new file
        assert len(cuda.locked) == 1 and cuda.locked != first
        registers = [i for i, line in enumerate(cuda.log) if line.startswith("register")]
        # The old file's pages were unlocked when it was replaced, before the new one's lock.
        assert registers[0] < cuda.log.index(f"unregister {first.popitem()[1]}") < registers[1]
    finally:
        capturer.close()
        client.close()
        store.stop()
    assert cuda.locked == {}


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


def test_an_iteration_begun_before_the_first_device_bucket_is_not_profiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without a stand-in given, the profiler learns that buckets live on a device from the
    # first one, mid-iteration: that iteration has no zero on the device's clock.
    cuda = FakeCuda()
    monkeypatch.setattr("real.engine.profiler._torch_cuda", lambda: cuda)
    host = [0.0]
    profiler = CommProfiler(2, clock=lambda: host[0])
    profiler.iteration_begins()
    for iteration in range(3):
        started = cuda.now
        future: torch.futures.Future[Any] = torch.futures.Future()
        cuda.now = started + 0.010
        chained = profiler.timed(lambda: future, on_device=True)  # noqa: B023
        cuda.now = started + 0.030
        future.set_result([torch.zeros(1)])
        chained.wait()
        cuda.now = started + 0.100 + iteration  # the first iteration is the longest
        host[0] += 0.100 + iteration
        profiler.iteration_begins()
        assert profiler.done == (iteration == 2)
    assert profiler.lengths == [pytest.approx(1.1), pytest.approx(2.1)]
    assert profiler.busy == [pytest.approx((0.010, 0.030))] * 2


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
