"""The engine's GPU path on a real GPU, in one short run (about a minute).

    .venv/bin/python benchmarks/gpu_check.py [--size-mb 256]

Without CUDA it prints why it skipped and exits 0 (the same logic is covered on CPU by
``tests/unit/test_engine_gpu_standin.py``). With a GPU it checks, printing PASS/FAIL per check
(INFO for a figure) and exiting 1 if any failed:

1. **CUDA capture** (side stream, straight into the page-locked slot): a state of ``--size-mb``
   MiB on the GPU whose last update is still queued behind a long kernel when ``save()``'s
   capture starts; the slot must hold the updated bytes (the side stream waited for the
   training stream).
   Capture time against a plain device-to-host copy of the same tensors into pinned memory.
2. **restore into live CUDA tensors** from local memory: bitwise, and the same tensor objects.
3. **idle-span profiler under NCCL**: a DDP model on a one-rank NCCL group, its all-reduces
   timed by CUDA events; the busy intervals must lie inside the iteration and, with a long
   kernel queued before the backward pass, start well after the host queued them.
4. **The public checkpointer on a GPU** (``from gemini_ckpt import Checkpointer``, one process,
   no torchrun): a GPT decoder and its AdamW state on the GPU, ``save()`` after every step,
   then ``restore(into=...)`` into the live CUDA tensors, bitwise against the state saved;
   and the figure: the median iteration with a save after each step against the same steps
   without, blocks of each in turn (``--device cpu`` runs this check alone, on the CPU).
5. **NCCL abort**: an all-reduce on a one-rank NCCL group, then ``leave_attempt`` (abort the
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from real.runtime.env import GEMINI_RUN_DIR  # noqa: E402  (after the repository is on the path)

MB = 1 << 20
RESULTS: list[bool] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}", flush=True)


def figure(name: str, detail: str) -> None:
    """A measurement, printed; not a check (no target to pass or fail here)."""
    print(f"INFO  {name}: {detail}", flush=True)


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
        figure(
            "CUDA capture time",
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
        model(data).sum().backward()  # NCCL's first all-reduce forms its communicator
        torch.cuda.synchronize()
        queued_after: list[float] = []
        profiler.iteration_begins()
        for _ in range(3):
            begun = time.perf_counter()
            torch.cuda._sleep(100_000_000)  # type: ignore[no-untyped-call]  # ~50 ms of device work before the backward
            model(data).sum().backward()
            queued_after.append(time.perf_counter() - begun)
            torch.cuda.synchronize()
            profiler.iteration_begins()
        busy = profiler.busy
        length = profiler.summary()["iteration_s"]
        # Every profiled iteration placed its buckets; they ran after the queued kernel, well
        # after the host had queued the whole backward pass.
        inside = len(busy) >= 3 and all(0 <= a <= b <= length + 1e-3 for a, b in busy)
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


def checkpointer_training(device_name: str, layers: int, hidden: int, rounds: int) -> None:
    import torch

    from gemini_ckpt import Checkpointer
    from real.trainer.workload.model import GPT, GPTConfig, parameter_count

    device = torch.device(device_name)
    config = GPTConfig(layers=layers, hidden=hidden, heads=max(hidden // 64, 1), context=256)
    model = GPT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (16, config.context + 1), generator=generator).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        loss = model(tokens[:, :-1], tokens[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    run_dir = Path(os.environ[GEMINI_RUN_DIR]) / "checkpointer"
    with Checkpointer(replicas=1, run_dir=run_dir) as checkpointer:
        step()
        checkpointer.save(1, state())  # allocates the slots (and page-locks them)
        times: dict[str, list[float]] = {"none": [], "save": [], "call": []}
        iteration = 1
        for _ in range(rounds):
            for mode in ("none", "save"):
                for _ in range(5):
                    iteration += 1
                    sync()
                    began = time.perf_counter()
                    step()
                    if mode == "save":
                        called = time.perf_counter()
                        checkpointer.save(iteration, state())
                        times["call"].append(time.perf_counter() - called)
                    sync()
                    times[mode].append(time.perf_counter() - began)
        iteration += 1
        step()
        checkpointer.save(iteration, state())
        sync()
        saved = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        moments = [s["exp_avg"].detach().cpu().clone() for s in optimizer.state.values()]
        objects = [p for p in model.parameters()]
        step()  # the live state moves on; the restore must bring it back
        sync()
        restore_began = time.perf_counter()
        restored = checkpointer.restore(into=state)
        sync()
        restore_s = time.perf_counter() - restore_began
        capture_costs = checkpointer._engine_now().capturer.costs.snapshot()
        same_objects = all(a is b for a, b in zip(objects, model.parameters(), strict=True))
        bitwise = all(
            torch.equal(v.cpu(), saved[k]) for k, v in model.state_dict().items()
        ) and all(
            torch.equal(s["exp_avg"].cpu(), m)
            for s, m in zip(optimizer.state.values(), moments, strict=True)
        )
        check(
            f"the public Checkpointer restores the live {device_name} state in place",
            restored is not None
            and restored.iteration == iteration
            and restored.tier == "local"
            and same_objects
            and bitwise,
            f"iteration {None if restored is None else restored.iteration} of {iteration} from "
            f"{None if restored is None else restored.tier}, bitwise, the same tensor objects",
        )
    # The floor of a capture and of a restore: one plain copy of the same tensors between the
    # device and page-locked host buffers, and back.
    tensors = [t for t in model.parameters()] + [
        v for s in optimizer.state.values() for v in s.values() if v.dim()
    ]
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=device.type == "cuda") for t in tensors]

    @torch.no_grad()
    def plain(back: bool) -> float:
        sync()
        began = time.perf_counter()
        for t, h in zip(tensors, host, strict=True):
            (t.copy_(h, non_blocking=True) if back else h.copy_(t, non_blocking=True))
        sync()
        return time.perf_counter() - began

    plain(False)
    to_host = statistics.median(plain(False) for _ in range(5))
    to_device = statistics.median(plain(True) for _ in range(5))
    none = statistics.median(times["none"])
    saved_step = statistics.median(times["save"])
    call = statistics.median(times["call"])
    state_mb = 12 * parameter_count(model) / MB
    figure(
        "save() and restore against a plain copy of the state",
        f"save() {1000 * call:.1f} ms vs a plain copy to page-locked memory "
        f"{1000 * to_host:.1f} ms ({call / to_host:.2f}x); restore in place "
        f"{1000 * restore_s:.1f} ms (one, the first) vs a plain copy back "
        f"{1000 * to_device:.1f} ms ({restore_s / to_device:.2f}x)",
    )
    for name, entry in sorted(capture_costs.items()):
        print(
            f"      {name}: {1000 * entry['s'] / max(entry['calls'], 1):.2f} ms per call, "
            f"{int(entry['calls'])} calls",
            flush=True,
        )
    figure(
        "step with a save() after every iteration",
        f"{1000 * saved_step:.1f} ms vs {1000 * none:.1f} ms without "
        f"({100 * (saved_step / none - 1):+.1f}%; "
        f"{parameter_count(model) / 1e6:.1f}M parameters, {state_mb:.0f} MiB of state with AdamW, "
        f"{len(times['save'])} iterations of each, on {device_name})",
    )


def nccl_abort() -> None:
    import torch
    import torch.distributed as dist

    from real.trainer.inprocess import leave_attempt

    _group("nccl")
    tensor = torch.ones(1024, device="cuda")
    dist.all_reduce(tensor)
    torch.cuda.synchronize()
    import cProfile
    import pstats

    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    leave_attempt(together=False)
    profile.disable()
    left = time.perf_counter() - started
    pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(8)
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
    parser.add_argument("--size-mb", type=int, default=256, help="state of the capture check")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: only the public checkpointer's check, on the CPU (a dry run of the script)",
    )
    parser.add_argument("--layers", type=int, default=8, help="GPT blocks of check 4")
    parser.add_argument("--hidden", type=int, default=1024, help="GPT width of check 4")
    parser.add_argument("--rounds", type=int, default=4, help="blocks of 5 iterations per mode")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("SKIP  torch is not installed")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "SKIP  no CUDA device here: the CUDA capture, the profiler's CUDA events and NCCL's "
            "abort need a GPU (their logic runs on CPU in tests/unit/test_engine_gpu_standin.py)"
        )
        return 0
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {where}, torch {torch.__version__}", flush=True)
    training = (
        "public checkpointer",
        lambda: checkpointer_training(args.device, args.layers, args.hidden, args.rounds),
    )
    steps: list[tuple[str, Any]] = [training]
    if args.device == "cuda":
        steps = [
            ("CUDA capture and restore", lambda: capture_and_restore(args.size_mb)),
            ("profiler under NCCL", profiler_under_nccl),
            ("NCCL abort", nccl_abort),
            training,
        ]
    with tempfile.TemporaryDirectory(prefix="gemini-gpu-check-") as scratch:
        os.environ[GEMINI_RUN_DIR] = scratch  # its files go with the scratch folder
        for name, step in steps:
            try:
                step()
            except Exception as error:  # report every step, whatever one of them does
                check(name, False, f"{type(error).__name__}: {error}")
    print(f"{sum(RESULTS)} of {len(RESULTS)} checks passed")
    return 0 if all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
