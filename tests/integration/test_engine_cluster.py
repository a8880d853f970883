"""The engine across processes: node stores, trainers saving and restoring, kills, corruption.

Each test starts real node stores (``StoreProcess``) and trainer processes running this file as
a worker (``python test_engine_cluster.py '<json>'``): a worker saves deterministic states
(``make_state(iteration, rank)``), or restores and reports whether what came back is bitwise
the state of the iteration it names. Ranks restoring together form a gloo process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from real.engine.client import StoreClient
from real.engine.process import StoreProcess
from real.engine.protocol import make_token
from real.engine.shm import SHM_DIR, Slot

WORKER_TIMEOUT_S = 90


def make_state(iteration: int, rank: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1000 * iteration + rank)
    return {
        "model": {
            "w": torch.randn(384, 384, generator=generator),
            "b": torch.randn(384, generator=generator),
        },
        "optim": {
            "state": {
                0: {
                    "exp_avg": torch.randn(384, 384, generator=generator),
                    "step": torch.tensor(float(iteration)),
                }
            },
            "param_groups": [{"lr": 0.01, "params": [0]}],
        },
        "rng": torch.randint(0, 255, (5056,), dtype=torch.uint8, generator=generator),
        "data": {"position": 10 * iteration + rank},
        "iteration": iteration,
    }


def same_state(got: Any, want: Any) -> bool:
    if isinstance(want, torch.Tensor):
        return isinstance(got, torch.Tensor) and got.dtype == want.dtype and torch.equal(got, want)
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(same_state(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(same_state(g, w) for g, w in zip(got, want, strict=True))
        )
    return bool(got == want)


def same_objects(got: Any, live: Any) -> bool:
    """Whether every tensor of ``got`` is the very tensor at the same place in ``live``."""
    if isinstance(live, torch.Tensor):
        return got is live
    if isinstance(live, dict):
        return all(same_objects(got[k], v) for k, v in live.items())
    if isinstance(live, list):
        return all(same_objects(g, v) for g, v in zip(got, live, strict=True))
    return True


def worker(config: dict[str, Any]) -> None:
    """One trainer: optional restore, then saves; writes a JSON report."""
    import torch.distributed as dist

    from real.engine import GeminiCheckpointer
    from real.runtime.procgroup import leave_process_group
    from shared.scenario import Scenario

    rank, world = config["rank"], config["world"]
    if config.get("pg"):
        dist.init_process_group(
            "gloo", init_method=f"file://{config['pg']}", rank=rank, world_size=world
        )
    scenario = Scenario.model_validate(
        {
            "name": "engine-test",
            "cluster": {"nodes": config["nodes"], "accelerators_per_node": config["per_node"]},
            "checkpoint": {
                "replicas": config["replicas"],
                "profiling_iterations": 2,
                "traffic": config.get("traffic", "interleaved"),
                "commit": config.get("commit", "on_arrival"),
                "local_slots": config.get("local_slots", 2),
            },
        }
    )
    checkpointer = GeminiCheckpointer(
        scenario=scenario,
        rank=rank,
        world_size=world,
        node=rank // config["per_node"],
        local_rank=rank % config["per_node"],
        run_dir=config["run_dir"],
        store_addresses=config["addrs"],
        verify_local=config.get("verify_local"),
    )
    report: dict[str, Any] = {}
    if config.get("restore"):
        live = None
        if config.get("into"):
            # The live state: same layout, other values; one tensor non-contiguous (it cannot
            # take the socket's bytes directly: received aside, copied in once verified).
            live = make_state(0, rank)
            live["model"]["w"] = torch.zeros(384, 384).t()
        restored = checkpointer.restore(into=live)
        report["restored"] = (
            None
            if restored is None
            else {
                "iteration": restored.iteration,
                "tier": restored.tier,
                "source_node": restored.source_node,
                "bitwise": same_state(restored.state, make_state(restored.iteration, rank)),
            }
        )
        if live is not None and restored is not None:
            # Every tensor came back as the live tensor itself (holding the restored bytes:
            # "bitwise" above); the JSON values come back in the restored state.
            report["in_place"] = same_objects(restored.state, live)
    pause = config.get("pause")

    def hook(phase: str, iteration: int) -> None:
        if pause and (phase, iteration) == (pause["phase"], pause["iteration"]):
            Path(pause["marker"]).write_text(phase)
            time.sleep(WORKER_TIMEOUT_S)  # the test kills us here

    checkpointer.capturer.hook = checkpointer.replication.hook = hook
    for iteration in config.get("iterations", []):
        if iteration == config.get("tamper_iteration"):

            def flip(peer: int, offset: int, view: memoryview) -> bytes:
                changed = bytearray(view)
                changed[len(changed) // 2] ^= 1
                return bytes(changed)

            checkpointer.replication.tamper = flip
        checkpointer.save(iteration, make_state(iteration, rank))
        checkpointer.wait()
        checkpointer.replication.tamper = None
        report.setdefault("committed_after_save", []).append(checkpointer.last_committed)
    report["committed"] = checkpointer.last_committed
    checkpointer.close()
    Path(config["out"]).write_text(json.dumps(report))
    del checkpointer
    leave_process_group(together=True)


@dataclass
class Cluster:
    """Node stores and the worker launcher of one test."""

    folder: Path
    token: str
    stores: list[StoreProcess]
    prefix: str
    nodes: int
    per_node: int = 1
    replicas: int = 2

    @property
    def addrs(self) -> list[str]:
        return [s.address for s in self.stores]

    def replace_node(self, node: int) -> None:
        """A hardware failure: the node's store and memory are gone; a fresh one serves."""
        self.stores[node].stop()
        fresh = StoreProcess(node, self.token, prefix=f"{self.prefix}-r")
        fresh.start()
        self.stores[node] = fresh

    def start(self, rank: int, name: str, **config: Any) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.folder / f"{name}-rank{rank}.json"
        full = {
            "rank": rank,
            "world": self.nodes * self.per_node,
            "nodes": self.nodes,
            "per_node": self.per_node,
            "replicas": self.replicas,
            "addrs": self.addrs,
            "run_dir": str(self.folder),
            "out": str(out),
            **config,
        }
        log = open(self.folder / f"{name}-rank{rank}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, __file__, json.dumps(full)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GEMINI_TOKEN": self.token, "OMP_NUM_THREADS": "1"},
        )
        log.close()
        return process, out

    def run(self, name: str, ranks: list[int], **config: Any) -> list[dict[str, Any]]:
        if len(ranks) > 1 and config.get("restore"):
            config["pg"] = str(self.folder / f"{name}.pg")
        started = [self.start(rank, name, **config) for rank in ranks]
        reports = []
        for rank, (process, out) in zip(ranks, started, strict=True):
            code = process.wait(WORKER_TIMEOUT_S)
            log = (self.folder / f"{name}-rank{rank}.log").read_text()
            assert code == 0, f"{name} rank {rank} exited {code}:\n{log[-3000:]}"
            reports.append(json.loads(out.read_text()))
        return reports

    def slot_bytes(self, node: int, owner: int, iteration: int) -> bytes:
        """The data bytes of ``owner``'s committed slot of ``iteration`` on ``node``."""
        client = StoreClient(node, self.addrs[node], self.token)
        paths = client.call("slots", owner=owner)["paths"]
        client.close()
        for path in paths:
            slot = Slot.open(Path(path))
            state = slot.state()
            if state.committed and state.iteration == iteration:
                data = bytes(slot.data(state.data_len))
                slot.close()
                return data
            slot.close()
        raise AssertionError(f"node {node} holds no committed iteration {iteration} of {owner}")

    def corrupt(self, node: int, owner: int, iteration: int) -> None:
        client = StoreClient(node, self.addrs[node], self.token)
        for path in client.call("slots", owner=owner)["paths"]:
            slot = Slot.open(Path(path))
            if slot.state().iteration == iteration and slot.state().committed:
                slot.data()[slot.state().data_len // 3] ^= 0x01
            slot.close()
        client.close()

    def holdings(self, node: int, complete: bool = False) -> dict[int, list[int]]:
        client = StoreClient(node, self.addrs[node], self.token)
        try:
            return client.holdings(complete=complete)
        finally:
            client.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    token, prefix = make_token(), f"gemini-test-{uuid.uuid4().hex[:8]}"
    stores = [StoreProcess(node, token, prefix=prefix) for node in range(2)]
    try:
        for store in stores:
            store.start()
        yield Cluster(tmp_path, token, stores, prefix, nodes=2)
    finally:
        for store in stores:
            store.stop()
    assert not [name for name in os.listdir(SHM_DIR) if name.startswith(prefix)]


def test_replicas_equal_sources_and_restores_fall_through_tiers(cluster: Cluster) -> None:
    reports = cluster.run("save", [0, 1], iterations=[1, 2, 3])
    assert [r["committed"] for r in reports] == [3, 3]
    for owner in (0, 1):
        peer = 1 - owner
        assert cluster.slot_bytes(owner, owner, 3) == cluster.slot_bytes(peer, owner, 3)
    assert cluster.holdings(0) == {0: [2, 3], 1: [2, 3]}

    # Rank 0's local copy is corrupted: with local verification on, it restores iteration 3
    # from node 1's memory, streamed into its live tensors.
    cluster.corrupt(0, 0, 3)
    first = cluster.run("restore1", [0, 1], restore=True, into=True, verify_local=True)
    assert [r["restored"] for r in first] == [
        {"iteration": 3, "tier": "peer", "source_node": 1, "bitwise": True},
        {"iteration": 3, "tier": "local", "source_node": 1, "bitwise": True},
    ]
    assert [r["in_place"] for r in first] == [True, True]
    assert cluster.holdings(0)[0] == [2]  # the corrupted copy was invalidated

    # Node 1 is lost: node 0 holds rank 1's replicas, but its own copy of iteration 3 is gone,
    # so both ranks roll back together to iteration 2, into their live tensors.
    cluster.replace_node(1)
    second = cluster.run("restore2", [0, 1], restore=True, into=True)
    assert [r["restored"] for r in second] == [
        {"iteration": 2, "tier": "local", "source_node": 0, "bitwise": True},
        {"iteration": 2, "tier": "peer", "source_node": 0, "bitwise": True},
    ]
    assert [r["in_place"] for r in second] == [True, True]

    # Rank 1's last copy of iteration 2 (node 0's replica) is corrupted too: the read fails
    # verification, is invalidated, and with no iteration left for both ranks (and no
    # persistent checkpoint) both start from scratch, together.
    cluster.corrupt(0, 1, 2)
    third = cluster.run("restore3", [0, 1], restore=True)
    assert [r["restored"] for r in third] == [None, None]
    log = (cluster.folder / "restore3-rank1.log").read_text()
    assert "node 1 rank 1: iteration 2 from node 0's memory unusable: block" in log


def test_a_corrupted_chunk_is_refused_and_nothing_commits(cluster: Cluster) -> None:
    (report,) = cluster.run("tamper", [0], iterations=[1, 2, 3], tamper_iteration=3)
    assert report["committed"] == 2
    log = (cluster.folder / "tamper-rank0.log").read_text()
    assert "checksum mismatch" in log and "iteration 3 not committed" in log
    assert cluster.holdings(0) == {0: [2]}
    assert cluster.holdings(1) == {0: [2]}


@pytest.mark.parametrize("traffic", ["interleaved", "blocking"])
def test_next_iteration_end_counts_a_checkpoint_only_when_the_next_iteration_ends(
    cluster: Cluster, traffic: str
) -> None:
    reports = cluster.run(
        "save", [0, 1], iterations=[1, 2, 3], commit="next_iteration_end", traffic=traffic
    )
    # Iteration k is replicated during k+1 but commits only at save(k+1); the job ends before
    # iteration 4 does, so 3 stays prepared and never counts, here or on the peer.
    assert [r["committed_after_save"] for r in reports] == [[None, 1, 2], [None, 1, 2]]
    assert cluster.holdings(0) == {0: [2], 1: [2]}
    assert cluster.holdings(1) == {0: [2], 1: [2]}
    restored = cluster.run("restore", [0, 1], restore=True, commit="next_iteration_end")
    assert [r["restored"] for r in restored] == [
        {"iteration": 2, "tier": "local", "source_node": 0, "bitwise": True},
        {"iteration": 2, "tier": "local", "source_node": 1, "bitwise": True},
    ]


def kill_mid_checkpoint(cluster: Cluster, phase: str, **config: Any) -> list[dict[str, Any]]:
    """Rank 0 checkpoints 1, 2, 3 and is killed at ``phase`` of iteration 3, while rank 1
    checkpoints 1, 2, 3 whole; returns rank 1's report."""
    marker = cluster.folder / "paused"
    victim, _ = cluster.start(
        0,
        "victim",
        iterations=[1, 2, 3],
        pause={"phase": phase, "iteration": 3, "marker": str(marker)},
        **config,
    )
    survivor = cluster.run("survivor", [1], iterations=[1, 2, 3], **config)
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while not marker.exists():
        assert victim.poll() is None, (cluster.folder / "victim-rank0.log").read_text()
        assert time.monotonic() < deadline, "the victim never reached the pause"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    return survivor


@pytest.mark.parametrize(("phase", "restores"), [("capture", 2), ("replication", 3), ("commit", 3)])
def test_a_trainer_killed_mid_checkpoint_restores_what_every_rank_captured(
    cluster: Cluster, phase: str, restores: int
) -> None:
    """Rank 0 is killed while checkpointing iteration 3; rank 1 commits 3. Killed mid-capture,
    rank 0's copy of 3 is incomplete: both restore 2, the last commit. Killed once its capture
    was complete (while replicating, or about to commit), its node's memory still holds all of
    3: after the crash both restore 3 from local memory, though 3 never committed on rank 0.
    Then they checkpoint on."""
    survivor = kill_mid_checkpoint(cluster, phase)
    assert survivor[0]["committed"] == 3
    assert cluster.holdings(0)[0] == [2]  # committed
    assert cluster.holdings(0, complete=True)[0] == sorted({2, restores})
    restored = cluster.run("restore", [0, 1], restore=True, into=True, iterations=[4, 5])
    assert [r["restored"] for r in restored] == [
        {"iteration": restores, "tier": "local", "source_node": 0, "bitwise": True},
        {"iteration": restores, "tier": "local", "source_node": 1, "bitwise": True},
    ]
    assert [r["committed"] for r in restored] == [5, 5]
    assert cluster.holdings(1, complete=True) == {0: [4, 5], 1: [4, 5]}


def test_a_node_lost_mid_replication_restores_the_last_commit(cluster: Cluster) -> None:
    """Rank 0's node is lost while rank 0 replicates iteration 3: its complete copy of 3 was
    only in that node's memory, so both ranks restore 2, the last commit, rank 0 from its
    replica on node 1."""
    kill_mid_checkpoint(cluster, "replication")
    cluster.replace_node(0)
    restored = cluster.run("restore", [0, 1], restore=True, into=True)
    assert [r["restored"] for r in restored] == [
        {"iteration": 2, "tier": "peer", "source_node": 1, "bitwise": True},
        {"iteration": 2, "tier": "local", "source_node": 1, "bitwise": True},
    ]


def test_one_local_slot_restores_from_the_peers_after_a_crash_mid_capture(
    cluster: Cluster,
) -> None:
    """``checkpoint.local_slots: 1``: each rank's own checkpoint has one slot. Rank 0 is
    killed mid-capture of 3 (its slot torn) after rank 1 captured 3 over its own 2. Iteration
    2 is then only in the peers' replicas: both ranks restore it from there, bitwise, and
    checkpoint on. Each node holds 3 slots of state (own 1, replica 2), not 4."""
    survivor = kill_mid_checkpoint(cluster, "capture", local_slots=1)
    assert survivor[0]["committed"] == 3
    assert cluster.holdings(0, complete=True) == {0: [], 1: [2, 3]}
    assert cluster.holdings(1, complete=True) == {0: [1, 2], 1: [3]}
    restored = cluster.run(
        "restore", [0, 1], restore=True, into=True, iterations=[4, 5], local_slots=1
    )
    assert [r["restored"] for r in restored] == [
        {"iteration": 2, "tier": "peer", "source_node": 1, "bitwise": True},
        {"iteration": 2, "tier": "peer", "source_node": 0, "bitwise": True},
    ]
    assert [r["in_place"] for r in restored] == [True, True]
    assert [r["committed"] for r in restored] == [5, 5]
    assert cluster.holdings(0) == {0: [5], 1: [4, 5]}
    assert cluster.holdings(1) == {0: [4, 5], 1: [5]}
    for node in (0, 1):
        client = StoreClient(node, cluster.addrs[node], cluster.token)
        try:
            slots = [p for owner in (0, 1) for p in client.call("slots", owner=owner)["paths"]]
        finally:
            client.close()
        assert sum(path is not None for path in slots) == 3


def test_one_local_slot_and_two_copies_lose_memory_with_a_node_mid_replication(
    cluster: Cluster,
) -> None:
    """The price of ``local_slots: 1`` at m = 2: rank 0's node is lost while rank 0 replicates
    iteration 3. Rank 0's 2 was only on node 1 (its own slot held 3), and rank 1's 3 only on
    node 1 (its replica to node 0 is gone with the node, and its own 2 was overwritten): no
    iteration is left in memory for both ranks, and without a persistent tier they start over.
    With two local slots the same loss restores 2 (the test above)."""
    kill_mid_checkpoint(cluster, "replication", local_slots=1)
    cluster.replace_node(0)
    restored = cluster.run("restore", [0, 1], restore=True, local_slots=1)
    assert [r["restored"] for r in restored] == [None, None]


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
