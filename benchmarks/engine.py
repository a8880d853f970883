"""Micro-benchmarks of the engine, each measured side by side with its baseline in one run.

- **capture**: ``Capturer.capture`` of a state into its slot, against a plain ``copy_`` of the
  same tensors into preallocated (already touched) tensors: the ratio of throughputs (goal
  >= 0.8).
- **replication**: one replica (``put_begin``, chunks hashed while sent and while received,
  ``put_end`` with the sealed manifest and the receiver's verdict, ``commit``) to a store
  process, against the same bytes sent raw over a connection to the same store process (op
  ``sink``: received into plain memory).
- **restore**: verified restore from local memory, against ``torch.distributed.checkpoint``
  loading the same state from disk (the files are fresh, so mostly from the page cache: a
  favourable case for DCP).
- **memory**: the store memory one node needs per rank (own two slots plus the two replica
  slots of each peer's rank it holds), as a fraction of the node's memory.

Every figure is the median of ``repeats`` runs, engine and baseline back to back; ratios are
medians of the per-pair ratios (robust to other jobs changing the machine's load).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from real.engine.capture import Capturer
from real.engine.client import StoreClient
from real.engine.process import StoreProcess
from real.engine.protocol import make_token, send_frame
from real.engine.replication import ReplicationManager
from real.engine.restore import read_local
from real.engine.shm import node_memory_bytes
from real.engine.store import NodeStore
from shared.placement import plan_placement
from shared.scenario import Scenario

MB = 1 << 20


def make_state(total_bytes: int, tensors: int = 32) -> dict[str, Any]:
    """A model-like state of about ``total_bytes`` float32 bytes in ``tensors`` tensors."""
    per = max(total_bytes // tensors // 4, 1)
    return {"model": {f"layer{i}": torch.randn(per) for i in range(tensors)}, "iteration": 1}


Measurement = tuple[float, float]  # (wall seconds, CPU seconds)


def _median_pair(
    engine: Callable[[], Measurement], baseline: Callable[[], Measurement], repeats: int
) -> dict[str, float]:
    """Medians of engine and baseline times, and of the per-pair ratios baseline / engine.

    Each pair runs back to back (alternating which goes first), so a machine whose load changes
    during the run still gives fair wall-clock ratios; the CPU-time ratio (the work done, in
    every process involved) is the steadier figure on a machine shared with other jobs.
    """
    engine(), baseline()  # warm-up: allocations, page faults, connections
    pairs = []
    for turn in range(repeats):
        if turn % 2:
            b = baseline()
            e = engine()
        else:
            e = engine()
            b = baseline()
        pairs.append((e, b))
    med = statistics.median
    return {
        "engine_s": med(e[0] for e, _ in pairs),
        "baseline_s": med(b[0] for _, b in pairs),
        "ratio": med(b[0] / e[0] for e, b in pairs),
        "cpu_ratio": med(b[1] / e[1] for e, b in pairs),
    }


def _measure(action: Callable[[], Any], remote: StoreClient | None = None) -> Measurement:
    """Wall and CPU time of ``action`` (this process, plus the ``remote`` store's process)."""
    remote_before = remote.stats()["cpu_s"] if remote is not None else 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    action()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if remote is not None:
        cpu += remote.stats()["cpu_s"] - remote_before
    return wall, cpu


def bench_micro(size_mb: int = 256, repeats: int = 5) -> dict[str, Any]:
    """Capture, replication, restore and memory figures for a state of ``size_mb`` MiB."""
    token = make_token()
    state = make_state(size_mb * MB)
    nbytes = sum(t.numel() * 4 for t in state["model"].values())
    results: dict[str, Any] = {"state_bytes": nbytes, "repeats": repeats}
    local = NodeStore(0, token).start()
    remote = StoreProcess(1, token)
    remote.start()
    client = StoreClient(0, local.address, token)
    capturer = Capturer(client, owner=0)
    try:
        # Capture vs plain copy.
        targets = {k: torch.empty_like(t).fill_(0) for k, t in state["model"].items()}

        def plain_copy() -> Measurement:
            return _measure(lambda: [targets[k].copy_(t) for k, t in state["model"].items()])

        results["capture"] = _ratio(
            nbytes,
            _median_pair(lambda: _measure(lambda: capturer.capture(1, state)), plain_copy, repeats),
        )

        # Replication vs raw TCP to the same store process.
        scenario = Scenario.model_validate(
            {"name": "bench", "cluster": {"nodes": 2}, "checkpoint": {"replicas": 2}}
        )
        manager = ReplicationManager(
            scenario, plan_placement(2, 2), 0, 0, capturer, [local.address, remote.address], token
        )
        captured = capturer.capture(1, state)
        manager._finish(captured, flushing=True)  # seal + one full replica + commit
        raw_client = StoreClient(1, remote.address, token)
        remote_stats = StoreClient(1, remote.address, token)
        data = captured.slot.data(captured.nbytes)

        def replicate() -> Measurement:
            again = capturer.capture(2, state)
            manifest = again.manifest.to_bytes()  # the layout: hashed while sent, sealed after

            def send() -> None:
                manager._send(1, again, manifest, None, True, [])
                manager._client(1).commit(0, again.iteration)

            return _measure(send, remote_stats)

        def raw_tcp() -> Measurement:
            def send() -> None:
                send_frame(raw_client.sock, {"op": "sink"}, data)
                raw_client.sock.recv(65536)

            return _measure(send, remote_stats)

        results["replication"] = _ratio(captured.nbytes, _median_pair(replicate, raw_tcp, repeats))
        remote_stats.close()
        raw_client.close()
        manager.close()

        # Restore from local memory vs DCP load from disk.
        capturer.remap()
        committed = [s.state().iteration for s in capturer.slots if s and s.state().committed]
        iteration = max(committed)
        results["restore"] = _restore(capturer, iteration, state, repeats)

        # Memory: own slots (node 0) plus the replica slots a peer holds (node 1).
        stats = StoreClient(1, remote.address, token)
        replica_bytes = stats.stats()["memory_bytes"]
        stats.close()
        per_rank = local.memory_bytes() + replica_bytes
        results["memory"] = {
            "bytes_per_rank": per_rank,
            "per_state_byte": per_rank / nbytes,
            "node_memory_bytes": node_memory_bytes(),
            "fraction_of_node": per_rank / node_memory_bytes(),
        }
    finally:
        capturer.close()
        client.close()
        local.stop()
        remote.stop()
    return results


def _restore(
    capturer: Capturer, iteration: int, state: dict[str, Any], repeats: int
) -> dict[str, float]:
    from torch.distributed.checkpoint.state_dict_loader import load
    from torch.distributed.checkpoint.state_dict_saver import save

    with tempfile.TemporaryDirectory(prefix="gemini-bench-dcp-") as folder:
        path = Path(folder) / "ckpt"
        save({"model": state["model"]}, checkpoint_id=str(path), no_dist=True)

        def engine() -> Measurement:
            return _measure(lambda: read_local(capturer.slots, 0, iteration))

        def dcp_load() -> Measurement:
            # Fresh tensors, as the engine returns (and as the persistent tier's load does).
            def load_fresh() -> None:
                fresh = {"model": {k: torch.empty_like(t) for k, t in state["model"].items()}}
                load(fresh, checkpoint_id=str(path), no_dist=True)

            return _measure(load_fresh)

        pair = _median_pair(engine, dcp_load, repeats)
    return {
        "local_s": pair["engine_s"],
        "dcp_s": pair["baseline_s"],
        "speedup": pair["ratio"],
        "cpu_speedup": pair["cpu_ratio"],
    }


def _ratio(nbytes: int, pair: dict[str, float]) -> dict[str, float]:
    return {
        "engine_gbyte_s": nbytes / pair["engine_s"] / 1e9,
        "baseline_gbyte_s": nbytes / pair["baseline_s"] / 1e9,
        "ratio": pair["ratio"],
        "cpu_ratio": pair["cpu_ratio"],
    }
