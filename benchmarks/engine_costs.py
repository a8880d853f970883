"""Where a checkpoint's time goes, and the engine against its floor, measured in one run.

    .venv/bin/python benchmarks/engine_costs.py [--size-mb 64] [--repeats 5]
        [--models headline,tiny] [--training-repeats 1] [--no-training] [--json FILE]

Part 1, micro (one trainer process with its node's store in-process, a peer store in a process
of its own, a ``--size-mb`` state in 32 float32 tensors): every figure is the median of
``--repeats`` back-to-back pairs, engine and baseline alternating, and each ratio the median of
the per-pair ratios:

- **capture** (``save()``'s copy into the slot, each capture committed as in training, so
  captures alternate between the two local slots) / a plain ``copy_`` of the same tensors into
  touched memory; target <= 1.0. Beside it, the same plain copy into two buffers of shared
  memory taken in turn (``DoubleBuffer``: what any checkpoint that keeps its committed copy
  while it writes the next one must do), against the capture and against the plain copy;
- **restore from local memory into the live state** / the plain copy; target <= 1.1. Beside
  it, with every block verified first (``verify_local``), and into fresh tensors (a caller
  with no state yet);
- **restore from a peer into the live state** / (one-way send of the same bytes into plain
  memory of the peer store's process + the plain copy); target <= 1.25;
- **replica committed** (put_begin, chunks hashed while sent and while received, the sealed
  manifest, put_end's verdict, commit) / the one-way send; target <= 1.25;
- **memory**: checkpoint memory per state byte at m = 2 (own slots + the replica slots held
  for this rank by the peer); target <= 3; and the same with ``checkpoint.local_slots: 1``;
- **first restore in a fresh process**: start, import, connect, restore from local memory,
  and whether ``torch.distributed.checkpoint`` or fsspec got imported.

Then the **cost breakdown** per save and per restore: every pass over the bytes (copy, hash,
send, receive, verify, clone) with its rate, every round trip and every fixed step, for the
training thread, the sender thread and the store process (``real.engine.costs``).

Part 2, training (``benchmarks.engine_training``): iteration time of 4 ranks (DDP on gloo, 4
nodes x 1 rank, each with its own store: the headline's layout) with a checkpoint after every
iteration, replicated to a peer (m = 2), interleaved, against no checkpoints; models
``headline`` (4 x 256, context 64, batch 4: 3.2M parameters, 39 MB of state per rank, as
``scenarios/headline.yaml``) and ``tiny``; target <= 5% on the headline. Beside them, the
**floor** (``FloorCheckpointer``): the same ranks doing only what any replicated in-memory
checkpoint must, one plain copy of the state and one one-way send of its bytes to the next
node's store per iteration; ours is reported as a multiple of the floor's overhead. The
training thread's and the sender's costs per save come from rank 0, the store's from node 0.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.engine import make_state  # noqa: E402
from benchmarks.engine_training import BenchModel, bench_training, parse_model  # noqa: E402
from real.engine.capture import Capturer  # noqa: E402
from real.engine.client import StoreClient  # noqa: E402
from real.engine.costs import difference  # noqa: E402
from real.engine.process import StoreProcess  # noqa: E402
from real.engine.protocol import make_token, send_frame  # noqa: E402
from real.engine.replication import ReplicationManager  # noqa: E402
from real.engine.restore import read_local, read_peer  # noqa: E402
from real.engine.shm import Slot  # noqa: E402
from real.engine.store import NodeStore  # noqa: E402
from real.runtime.env import GEMINI_RUN_DIR  # noqa: E402
from shared.placement import plan_placement  # noqa: E402
from shared.scenario import Scenario  # noqa: E402

MB = 1 << 20
HEADLINE = BenchModel("headline", 4, 256, 4, 64, 4, 15)
TARGETS = {
    "capture": 1.0,
    "restore_local_into_live": 1.1,
    "restore_peer_into_live": 1.25,
    "replica_committed": 1.25,
}


Measurement = tuple[float, float]  # (wall seconds, CPU seconds of every process involved)


def _pairs(
    engine: Callable[[], Measurement], baseline: Callable[[], Measurement], repeats: int
) -> dict[str, float]:
    """Median seconds of each side and the median per-pair ratios engine / baseline, by wall
    time and by CPU time (the work done: steadier than wall time on a loaded machine)."""
    engine(), baseline()  # warm-up: allocations, connections, page faults
    pairs = []
    for turn in range(repeats):
        if turn % 2:
            b, e = baseline(), engine()
        else:
            e, b = engine(), baseline()
        pairs.append((e, b))
    return {
        "engine_s": statistics.median(e[0] for e, _ in pairs),
        "baseline_s": statistics.median(b[0] for _, b in pairs),
        "ratio": statistics.median(e[0] / b[0] for e, b in pairs),
        "cpu_ratio": statistics.median(e[1] / max(b[1], 1e-9) for e, b in pairs),
    }


class DoubleBuffer:
    """Two buffers of shared memory (shmem pages, as the node store's slots), each laid out as
    the state's tensors, written in turn: the floor of a capture that keeps the committed copy
    while it writes the next, where the plain copy writes one private destination again and
    again (docs/engine.md has both, measured side by side)."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        # mmap(-1) is MAP_SHARED | MAP_ANONYMOUS: shmem pages, like /dev/shm files.
        self._maps = [mmap.mmap(-1, nbytes) for _ in range(2)]
        self.halves: list[list[torch.Tensor]] = []
        for shared in self._maps:
            data = torch.frombuffer(shared, dtype=torch.uint8)
            views, offset = [], 0
            for tensor in tensors:
                size = tensor.numel() * tensor.element_size()
                views.append(data[offset : offset + size].view(tensor.dtype).view(tensor.shape))
                offset += size
            self.halves.append(views)
        self.turn = 0

    def copy(self, tensors: list[torch.Tensor]) -> None:
        """Copy ``tensors`` into the buffer not written last."""
        self.turn ^= 1
        for target, tensor in zip(self.halves[self.turn], tensors, strict=True):
            target.copy_(tensor)


def _timed(action: Callable[[], Any], remote: StoreClient | None = None) -> Measurement:
    """Wall time of ``action``, and CPU time of this thread plus the ``remote`` store's."""
    remote_before = remote.stats()["cpu_s"] if remote is not None else 0.0
    cpu, started = time.thread_time(), time.perf_counter()
    action()
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
    if remote is not None:
        cpu += remote.stats()["cpu_s"] - remote_before
    return wall, cpu


def micro(size_mb: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(1)  # as a trainer of 4 on 2 cores; baseline and engine alike
    token = make_token()
    state = make_state(size_mb * MB)
    tensors = state["model"]
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    targets = {k: torch.zeros_like(t) for k, t in tensors.items()}
    live: dict[str, Any] = {"model": targets, "iteration": 0}
    out: dict[str, Any] = {"state_bytes": nbytes, "tensors": len(tensors), "repeats": repeats}
    local = NodeStore(0, token).start()
    remote = StoreProcess(1, token)
    remote.start()
    client = StoreClient(0, local.address, token)
    peer = StoreClient(1, remote.address, token)
    sink = StoreClient(1, remote.address, token)
    stats = StoreClient(1, remote.address, token)
    capturer = Capturer(client, owner=0)
    scenario = Scenario.model_validate(
        {"name": "costs", "cluster": {"nodes": 2}, "checkpoint": {"replicas": 2}}
    )
    manager = ReplicationManager(
        scenario, plan_placement(2, 2), 0, 0, capturer, [local.address, remote.address], token
    )
    iteration = [0]
    try:

        def plain_copy() -> Measurement:
            def copy() -> None:
                for k, t in tensors.items():
                    targets[k].copy_(t)

            return _timed(copy)

        def capture() -> Measurement:
            """One capture, then its commit (not timed), as every iteration of a training with
            checkpoints commits: the next capture goes to the other slot. Until 2026-12-07 the
            captures here were never committed, so each wrote the slot the one before had
            just written, which no training does."""
            iteration[0] += 1
            captured: list[Any] = []
            measured = _timed(lambda: captured.append(capturer.capture(iteration[0], state)))
            capturer.commit(captured[0])
            slots_written.append(captured[0].slot_index)
            return measured

        slots_written: list[int] = []
        sources = list(tensors.values())
        double = DoubleBuffer(sources)

        def double_buffered_copy() -> Measurement:
            return _timed(lambda: double.copy(sources))

        out["capture"] = _pairs(capture, plain_copy, repeats)
        out["capture_vs_double_buffer"] = _pairs(capture, double_buffered_copy, repeats)
        out["double_buffer"] = _pairs(double_buffered_copy, plain_copy, repeats)
        out["capture_slots"] = sorted(set(slots_written))

        def replicate() -> Measurement:
            iteration[0] += 1
            captured = capturer.capture(iteration[0], state)
            return _timed(lambda: manager._finish(captured, flushing=True), stats)

        scratch = None

        def one_way_send() -> Measurement:
            def send() -> None:
                send_frame(sink.sock, {"op": "sink"}, scratch)
                sink.sock.recv(65536)

            return _timed(send, stats)

        first = capturer.capture(1000, state)
        manager._finish(first, flushing=True)
        scratch = first.slot.data(first.nbytes)
        replicate(), replicate()  # both slots on both sides allocated: steady state
        sender_before = manager.costs.snapshot()
        training_before = capturer.costs.snapshot()
        store_before = stats.stats()["costs"]
        count_before = iteration[0]
        out["replica_committed"] = _pairs(replicate, one_way_send, repeats)
        saves = iteration[0] - count_before
        out["save_costs"] = {
            "saves": saves,
            "training": difference(capturer.costs.snapshot(), training_before),
            "sender": difference(manager.costs.snapshot(), sender_before),
            "store": difference(stats.stats()["costs"], store_before),
        }
        committed = manager.last_committed
        assert committed is not None

        def restore_costs(action: Callable[[], Any]) -> dict[str, Any]:
            before = capturer.costs.snapshot()
            action()
            return difference(capturer.costs.snapshot(), before)

        def remapped(restore: Callable[[list[Slot | None]], Any]) -> Measurement:
            # As a survivor's engine, rebuilt after a failure, finds them: slot files mapped
            # anew (outside the timing: the rebuild maps them).
            slots = [None if s is None else Slot.open(s.path) for s in capturer.slots]
            for slot in slots:
                if slot is not None:
                    slot.manifest_key = capturer.client.manifest_key
            try:
                return _timed(lambda: restore(slots))
            finally:
                for slot in slots:
                    if slot is not None:
                        slot.close()

        def local_into() -> Measurement:
            return remapped(
                lambda slots: read_local(slots, 0, committed, into=live, verify_data=False)
            )

        def local_verified() -> Measurement:
            return remapped(lambda slots: read_local(slots, 0, committed, into=live))

        def local_fresh() -> Measurement:
            return remapped(lambda slots: read_local(slots, 0, committed, verify_data=False))

        def peer_into() -> Measurement:
            return _timed(lambda: read_peer(peer, 0, committed, into=live), stats)

        def send_and_copy() -> Measurement:
            sent, copied = one_way_send(), plain_copy()
            return sent[0] + copied[0], sent[1] + copied[1]

        out["restore_local_into_live"] = _pairs(local_into, plain_copy, repeats)
        out["restore_local_verified"] = _pairs(local_verified, plain_copy, repeats)
        out["restore_local_fresh"] = _pairs(local_fresh, plain_copy, repeats)
        out["restore_peer_into_live"] = _pairs(peer_into, send_and_copy, repeats)
        out["one_way_send_s"] = statistics.median(one_way_send()[0] for _ in range(repeats))
        out["restore_costs"] = {
            "local into live": restore_costs(
                lambda: read_local(
                    capturer.slots,
                    0,
                    committed,
                    into=live,
                    verify_data=False,
                    costs=capturer.costs,
                )
            ),
            "local, verified, into live": restore_costs(
                lambda: read_local(capturer.slots, 0, committed, into=live, costs=capturer.costs)
            ),
            "local into fresh tensors": restore_costs(
                lambda: read_local(
                    capturer.slots, 0, committed, verify_data=False, costs=capturer.costs
                )
            ),
            "peer into live": restore_costs(
                lambda: read_peer(peer, 0, committed, into=live, costs=capturer.costs)
            ),
        }
        own = local.memory_bytes()
        replica = stats.stats()["memory_bytes"]
        # checkpoint.local_slots: 1 (one own slot; the trade is in docs/engine.md): the same
        # state captured twice by a one-slot capturer of another rank in the same store.
        lean = Capturer(client, owner=1, local_slots=1)
        try:
            lean.capture(1, state)
            lean.capture(2, state)
            lean_own = local.memory_bytes() - own
        finally:
            lean.close()
        out["memory"] = {
            "own_bytes": own,
            "replica_bytes": replica,
            "per_state_byte": (own + replica) / nbytes,
            "one_local_slot_per_state_byte": (lean_own + replica) / nbytes,
        }
        out["fresh_process"] = fresh_process_restore(local.address, token, committed)
    finally:
        manager.close()
        for c in (peer, sink, stats):
            c.close()
        capturer.close()
        client.close()
        local.stop()
        remote.stop()
    return out


FRESH = textwrap.dedent(
    """
    import json, sys, time
    started = time.perf_counter()
    from real.engine import GeminiCheckpointer
    from shared.scenario import Scenario
    scenario = Scenario.model_validate(
        {"name": "fresh", "cluster": {"nodes": 1}, "checkpoint": {"replicas": 1}})
    address, token, run_dir = sys.argv[1:4]
    checkpointer = GeminiCheckpointer(scenario=scenario, rank=0, world_size=1, node=0,
        local_rank=0, run_dir=run_dir, store_addresses=[address], token=token)
    imported = time.perf_counter()
    restored = checkpointer.restore()
    done = time.perf_counter()
    heavy = [m for m in ("torch.distributed.checkpoint", "fsspec") if m in sys.modules]
    print(json.dumps({"import_and_connect_s": imported - started,
        "restore_s": done - imported, "iteration": restored.iteration, "heavy": heavy}))
    checkpointer.capturer.close()
    """
)


def fresh_process_restore(address: str, token: str, iteration: int) -> dict[str, Any]:
    """A fresh interpreter restores rank 0 from local memory (fresh tensors: no state yet)."""
    with tempfile.TemporaryDirectory(prefix="gemini-costs-") as folder:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", FRESH, address, token, folder],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), GEMINI_RUN_DIR: folder},
            check=False,
            timeout=120,
        )
        total = time.perf_counter() - started
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    report["process_s"] = total
    assert report["iteration"] == iteration
    return report


def _rate(entry: dict[str, float]) -> str:
    if not entry.get("bytes") or entry["s"] <= 0:
        return ""
    return f"{entry['bytes'] / entry['s'] / 1e9:6.2f} GB/s"


def print_costs(title: str, costs: dict[str, dict[str, float]], per: int) -> None:
    print(f"  {title}")
    for name, entry in sorted(costs.items()):
        calls = entry["calls"] / per
        print(f"    {name:<58} {1000 * entry['s'] / per:9.2f} ms  x{calls:5.1f}  {_rate(entry)}")


def report_micro(result: dict[str, Any]) -> None:
    size = result["state_bytes"]
    print(
        f"state: {size / MB:.0f} MiB in {result['tensors']} float32 tensors; medians of "
        f"{result['repeats']} back-to-back pairs; ratios engine / baseline by wall time and by "
        "CPU time (this thread + the peer store's process); targets judged by wall time"
    )

    def line(label: str, key: str, baseline: str, target: float | None) -> None:
        pair = result[key]
        verdict = ""
        if target is not None:
            verdict = f"target <= {target:.2f}: {'met' if pair['ratio'] <= target else 'MISSED'}"
        print(
            f"  {label:<40} {1000 * pair['engine_s']:8.1f} ms vs {baseline:<28}"
            f"{1000 * pair['baseline_s']:8.1f} ms: {pair['ratio']:5.2f}x wall, "
            f"{pair['cpu_ratio']:5.2f}x CPU  {verdict}"
        )

    line("capture (save's copy)", "capture", "plain copy", TARGETS["capture"])
    line("capture (save's copy)", "capture_vs_double_buffer", "copy, two shared buffers", None)
    line("copy into two shared buffers in turn", "double_buffer", "plain copy", None)
    line(
        "restore local -> live",
        "restore_local_into_live",
        "plain copy",
        TARGETS["restore_local_into_live"],
    )
    line("restore local -> live, blocks verified", "restore_local_verified", "plain copy", None)
    line("restore local -> fresh tensors", "restore_local_fresh", "plain copy", None)
    line(
        "restore peer -> live",
        "restore_peer_into_live",
        "one-way send + plain copy",
        TARGETS["restore_peer_into_live"],
    )
    line(
        "replica committed",
        "replica_committed",
        "one-way send",
        TARGETS["replica_committed"],
    )
    memory = result["memory"]
    print(
        f"  memory: {memory['per_state_byte']:.2f} bytes per state byte at m=2 (own slots "
        f"{memory['own_bytes'] / size:.2f}, replica slots on the peer "
        f"{memory['replica_bytes'] / size:.2f}); target <= 3: "
        f"{'met' if memory['per_state_byte'] <= 3 else 'MISSED'}; with checkpoint.local_slots: "
        f"1, {memory['one_local_slot_per_state_byte']:.2f} (a node lost mid-replication then "
        "finds no iteration in memory at m=2: docs/engine.md)"
    )
    fresh = result["fresh_process"]
    if "error" in fresh:
        print(f"  fresh process restore failed: {fresh['error']}")
    else:
        print(
            f"  first restore in a fresh process: {fresh['process_s']:.2f} s in all "
            f"(imports and connect {fresh['import_and_connect_s']:.2f} s, restore "
            f"{fresh['restore_s']:.3f} s); heavy modules imported: {fresh['heavy'] or 'none'}"
        )
    costs = result["save_costs"]
    print(f"cost breakdown per save ({size / MB:.0f} MiB, one replica, blocking here):")
    print_costs("training thread (save)", costs["training"], costs["saves"])
    print_costs("sender thread (replicate, commit)", costs["sender"], costs["saves"])
    print_costs("peer store process (receive)", costs["store"], costs["saves"])
    print("cost breakdown per restore:")
    for title, entries in result["restore_costs"].items():
        print_costs(title, entries, 1)


def training(models: list[BenchModel], repeats: int) -> list[dict[str, Any]]:
    results = []
    for model in models:
        result = bench_training(
            nodes=4,
            per_node=1,
            model=model,
            profiling=3,
            repeats=repeats,
            modes=("none", "floor", "interleaved"),
        )
        results.append(result)
        report_training(result)
    return results


def report_training(result: dict[str, Any]) -> None:
    model = result["model"]
    median = result["iteration_s"]
    overhead = result["overhead"]["interleaved"]
    state = result.get("state_bytes") or 0
    target = "target <= 5%: " + ("met" if overhead <= 0.05 else "MISSED")
    print(
        f"training {model['name']} ({model['parameters'] / 1e6:.1f}M parameters, "
        f"{state / 1e6:.1f} MB per rank), 4 ranks, median iteration: none "
        f"{1000 * median['none']:.1f} ms, interleaved {1000 * median['interleaved']:.1f} ms "
        f"({100 * overhead:+.1f}%)" + ("  " + target if model["name"] == "headline" else "")
    )
    if "floor" in result["overhead"]:
        # The same bytes with nothing of ours: one plain copy and one one-way send per save.
        floor = result["overhead"]["floor"]
        share = f"{overhead / floor:.2f}x the floor's" if floor > 0 else "n/a"
        floor_detail = result["details"].get("floor", {})
        print(
            f"  floor (one plain copy + one one-way send per save, no hash, no commit): "
            f"{1000 * median['floor']:.1f} ms ({100 * floor:+.1f}%); ours: {share} overhead"
            + (
                f"; floor CPU per iteration {1000 * floor_detail['cpu_per_iteration_s']:.1f} ms"
                f" per trainer, {1000 * floor_detail.get('store_cpu_per_save_s', 0.0):.1f} ms"
                " per store"
                if "cpu_per_iteration_s" in floor_detail
                else ""
            )
        )
    detail = result["details"].get("interleaved", {})
    plain = result["details"].get("none", {})
    if "cpu_per_iteration_s" in detail and "cpu_per_iteration_s" in plain:
        # With the cores busy training, checkpoint CPU time is added to the iteration.
        print(
            "  CPU per iteration (medians over ranks and stores): trainer process "
            f"{1000 * plain['cpu_per_iteration_s']:.1f} ms without checkpoints, "
            f"{1000 * detail['cpu_per_iteration_s']:.1f} ms interleaved; its node's store "
            f"{1000 * detail.get('store_cpu_per_save_s', 0.0):.1f} ms per save"
        )
    saves = max(int(detail.get("saves", 1)), 1)
    costs = detail.get("costs", {})
    if costs:
        print_costs("rank 0 training thread, per save", costs["training"], saves)
        print_costs("rank 0 sender thread, per save", costs["sender"], saves)
    if detail.get("store_costs"):
        # Node 0's store receives one replica per save (rank 3's, ring of 4 groups of 2).
        print_costs("node 0 store, per save", detail["store_costs"], saves)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=_positive, default=64)
    parser.add_argument("--repeats", type=_positive, default=5)
    parser.add_argument("--models", default="headline,tiny")
    parser.add_argument("--training-repeats", type=_positive, default=1)
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    models = []
    if not args.no_training:  # read before the micro-benchmarks: a typo costs no minutes
        try:
            models = [
                HEADLINE if name.strip() == "headline" else parse_model(name)
                for name in args.models.split(",")
                if name.strip()
            ]
        except ValueError as error:
            parser.error(f"--models: {error}")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results: dict[str, Any] = {"micro": micro(args.size_mb, args.repeats)}
    report_micro(results["micro"])
    if models:
        results["training"] = training(models, args.training_repeats)
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
