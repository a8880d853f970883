"""The engine's GPU path on a real GPU, in one short run (about a minute).

    .venv/bin/python benchmarks/gpu_check.py [--size-mb 256]

Without CUDA it prints why it skipped and exits 0 (the same logic is covered on CPU by
``tests/unit/test_engine_gpu_standin.py``). With a GPU it checks, printing PASS/FAIL per line
and exiting 1 if any failed:

1. **CUDA capture** (pinned staging, side stream): a state of ``--size-mb`` MiB on the GPU
   whose last update is still queued behind a long kernel when ``save()``'s capture starts;
   the slot must hold the updated bytes (the side stream waited for the training stream).
   Capture time against a plain device-to-host copy of the same tensors into pinned memory.
2. **restore into live CUDA tensors** from local memory: bitwise, and the same tensor objects.
3. **idle-span profiler under NCCL**: a DDP model on a one-rank NCCL group, its all-reduces
   timed by CUDA events; the busy intervals must lie inside the iteration and, with a long
   kernel queued before the backward pass, start well after the host queued them.
4. **NCCL abort**: an all-reduce on a one-rank NCCL group, then ``leave_attempt`` (abort the
   communicators, destroy the group) and a fresh group that works: what a surviving rank does
   in in-process recovery. (A peer that hangs needs a second GPU; one GPU cannot show it.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from real.runtime.env import GEMINI_RUN_DIR

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MB = 1 << 20
RESULTS: list[bool] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}", flush=True)


def capture_and_restore(size_mb: int) -> None:
    import torch
    import xxhash

    from real.engine.capture import Capturer
    from real.engine.client import StoreClient
    from real.engine.manifest import seal
    from real.engine.protocol import make_token
    from real.engine.restore import read_local
    from real.engine.store import NodeStore

    device = torch.device("cuda")
    per = size_mb * MB // 8 // 4
    weights = {f"w{i}": torch.randn(per, device=device) for i in range(8)}
    state: dict[str, Any] = {"model": weights, "step": 1}
    expected = {k: (t * 2).cpu() for k, t in weights.items()}
    token = make_token()
    store = NodeStore(0, token).start()
    client = StoreClient(0, store.address, token)
    capturer = Capturer(client, owner=0)
    try:
        capturer.capture(0, state)  # allocate the slots, create the stager
        torch.cuda.synchronize()
        # The update the capture must see is still queued behind a ~50 ms kernel.
        torch.cuda._sleep(50_000_000)  # type: ignore[no-untyped-call]
        for t in weights.values():
            t.mul_(2)
        captured = capturer.capture(1, state)
        seal(captured.manifest, captured.slot.data(captured.nbytes))
        raw = captured.manifest.to_bytes()
        captured.slot.write_manifest(raw, xxhash.xxh3_64_intdigest(raw), captured.nbytes)
        capturer.commit(captured)
        host = read_local(capturer.slots, 0, 1)
        same = all(torch.equal(host["model"][k], v) for k, v in expected.items())
        check("CUDA capture waits for the training stream", same, "slot holds the updated bytes")

        pinned = {k: torch.empty(t.shape, pin_memory=True) for k, t in weights.items()}

        def plain() -> float:
            torch.cuda.synchronize()
            started = time.perf_counter()
            for k, t in weights.items():
                pinned[k].copy_(t, non_blocking=True)
            torch.cuda.synchronize()
            return time.perf_counter() - started

        def engine() -> float:
            torch.cuda.synchronize()
            started = time.perf_counter()
            capturer.capture(2, state)
            return time.perf_counter() - started

        plain(), engine()
        pairs = [(engine(), plain()) for _ in range(5)]
        ratio = statistics.median(e / p for e, p in pairs)
        check(
            "CUDA capture time",
            True,
            f"{1000 * statistics.median(e for e, _ in pairs):.1f} ms vs device-to-pinned copy "
            f"{1000 * statistics.median(p for _, p in pairs):.1f} ms: {ratio:.2f}x "
            f"({size_mb} MiB; the capture also lands the bytes in the slot)",
        )

        objects = {k: torch.zeros_like(t) for k, t in weights.items()}
        live = {"model": dict(objects)}
        restored = read_local(capturer.slots, 0, 1, into=live)
        in_place = all(restored["model"][k] is objects[k] for k in objects)
        bitwise = all(torch.equal(objects[k].cpu(), v) for k, v in expected.items())
        check("restore into live CUDA tensors", in_place and bitwise, "same objects, bitwise")
    finally:
        capturer.close()
        client.close()
        store.stop()


def _group(backend: str) -> None:
    import torch.distributed as dist

    store = dist.HashStore()  # type: ignore[attr-defined]
    dist.init_process_group(backend, store=store, rank=0, world_size=1)


def profiler_under_nccl() -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from real.engine.profiler import CommProfiler

    _group("nccl")
    try:
        model = DistributedDataParallel(torch.nn.Linear(2048, 2048).cuda(), bucket_cap_mb=4)
        profiler = CommProfiler(3)
        profiler.attach(model)
        data = torch.randn(64, 2048, device="cuda")
        queued_after: list[float] = []
        profiler.iteration_begins()
        for _ in range(4):
            begun = time.perf_counter()
            torch.cuda._sleep(100_000_000)  # type: ignore[no-untyped-call]  # ~50 ms of device work before the backward
            model(data).sum().backward()
            queued_after.append(time.perf_counter() - begun)
            torch.cuda.synchronize()
            profiler.iteration_begins()
        busy = profiler.busy
        length = profiler.summary()["iteration_s"]
        inside = bool(busy) and all(0 <= a <= b <= length + 1e-3 for a, b in busy)
        late = bool(busy) and min(a for a, _ in busy) > max(queued_after)
        check(
            "profiler times NCCL buckets on the device",
            profiler.done and inside and late,
            f"{len(busy)} busy intervals, first at {1000 * min(a for a, _ in busy):.1f} ms "
            f"(host queued the backward within {1000 * max(queued_after):.1f} ms); "
            f"iteration {1000 * length:.1f} ms",
        )
    finally:
        dist.destroy_process_group()


def nccl_abort() -> None:
    import torch
    import torch.distributed as dist

    from real.trainer.inprocess import leave_attempt

    _group("nccl")
    tensor = torch.ones(1024, device="cuda")
    dist.all_reduce(tensor)
    torch.cuda.synchronize()
    started = time.perf_counter()
    leave_attempt(together=False)
    left = time.perf_counter() - started
    gone = not dist.is_initialized()
    _group("nccl")
    try:
        again = torch.ones(4, device="cuda")
        dist.all_reduce(again)
        works = bool(torch.equal(again.cpu(), torch.ones(4)))
    finally:
        dist.destroy_process_group()
    check(
        "NCCL abort, then a fresh group",
        gone and works,
        f"left the attempt in {1000 * left:.1f} ms; a new NCCL group all-reduces",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("SKIP  torch is not installed")
        return 0
    if not torch.cuda.is_available():
        print(
            "SKIP  no CUDA device here: the CUDA capture, the profiler's CUDA events and NCCL's "
            "abort need a GPU (their logic runs on CPU in tests/unit/test_engine_gpu_standin.py)"
        )
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    os.environ.setdefault(GEMINI_RUN_DIR, tempfile.mkdtemp(prefix="gemini-gpu-check-"))
    steps: list[tuple[str, Any]] = [
        ("CUDA capture and restore", lambda: capture_and_restore(args.size_mb)),
        ("profiler under NCCL", profiler_under_nccl),
        ("NCCL abort", nccl_abort),
    ]
    for name, step in steps:
        try:
            step()
        except Exception as error:  # report every step, whatever one of them does
            check(name, False, f"{type(error).__name__}: {error}")
    print(f"{sum(RESULTS)} of {len(RESULTS)} checks passed")
    return 0 if all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
