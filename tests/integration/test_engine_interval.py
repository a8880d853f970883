"""End to end: the Gemini engine checkpointing every k iterations (``checkpoint.interval``) and
replicating compressed chunks (``checkpoint.compression``) recovers to the right state.

Two nodes with one rank each, node stores as processes, the tiny GPT under DDP on gloo, as in
``test_engine_recovery.py``. Rank 1 is SIGKILLed after the step of iteration 8; the survivor is
stopped, as the agent would. The restarted ranks restore a checkpointed iteration and train to
the end. Proof of recovery is state: the final weights equal those of a run without failures
(the same scenario, so the same k), and the restored iteration is one the gate let through.

- ``interval: 3``: only iterations 3, 6, 9, ... are captured (the gate skips the others).
- ``interval: adaptive`` on a link configured at 2 Mbit/s: one iteration's idle time cannot
  carry the copy, so the ranks agree on a k > 1 once the profile is complete, and every chunk
  crosses the network compressed (``compression: on``). After a hardware failure of node 1,
  rank 1 restores from node 0's replica, which arrived compressed and was decoded into the
  slot: the bitwise digest shows the round trip was exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from running import survivor_of_a_crash

# The same launcher, store fixture and proofs (pytest puts this folder on sys.path).
from test_engine_recovery import (
    TIMEOUT_S,
    _digest,
    _finish,
    _launch,
    stores,
)

from real.engine.process import StoreProcess

__all__ = ["stores"]  # the fixture, shared

SCENARIO = """
name: engine-interval
targets: [real]
seed: 3
cluster: {nodes: 2, accelerators_per_node: 1, network_bandwidth_gbit_s: BANDWIDTH}
model: {layers: 1, hidden: 32, heads: 2, context: 32}
training: {iterations: 12, batch_size_per_rank: 2, warmup_iterations: 2}
checkpoint: {strategy: gemini, replicas: 2, placement: group, profiling_iterations: 2,
             interval: INTERVAL, compression: COMPRESSION}
"""


def _events(out: Path, kind: str) -> list[dict[str, Any]]:
    return [
        event
        for path in sorted((out / "events").glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if f'"{kind}"' in line
        for event in [json.loads(line)]
        if event["kind"] == kind
    ]


def _crash_then_recover(
    tmp_path: Path,
    stores: tuple[list[StoreProcess], str],
    text: str,
    lost_nodes: list[int],
) -> tuple[Path, Path, list[int]]:
    """Reference run, a run whose rank 1 dies after iteration 8, and its recovery. Returns the
    scenario, the run folder and the iterations rank 0 captured before the crash."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(text)
    reference = tmp_path / "reference"
    expected = _digest(
        _finish(_launch(scenario, reference, "none", ["127.0.0.1:1"] * 2, "x"), reference)
    )
    processes, token = stores
    addrs = [p.address for p in processes]
    out = tmp_path / "run"
    crash = {
        "GEMINI_CRASH_AT_ITERATION": "8",
        "GEMINI_CRASH_RANK": "1",
        "GEMINI_CRASH_PHASE": "after_step",
    }
    survivor_of_a_crash(_launch(scenario, out, "gemini", addrs, token, crash), TIMEOUT_S)
    captured = sorted(e["iteration"] for e in _events(out, "ckpt_captured") if e["rank"] == 0)
    for node in lost_nodes:
        processes[node].stop()
        processes[node] = StoreProcess(node, token, prefix=f"{processes[node].prefix}-new")
        addrs[node] = processes[node].start()
    final = _finish(_launch(scenario, out, "gemini", addrs, token), out)
    assert _digest(final) == expected
    return scenario, out, captured


def _restored(out: Path) -> list[tuple[int, int, str]]:
    return sorted(
        (e["rank"], e["iteration"], e["details"]["tier"])
        for e in _events(out, "state_restored")
        if e["rank"] is not None
    )


def test_fixed_interval_skips_saves_and_recovers(
    stores: tuple[list[StoreProcess], str], tmp_path: Path
) -> None:
    text = (
        SCENARIO.replace("BANDWIDTH", "16").replace("INTERVAL", "3").replace("COMPRESSION", "off")
    )
    _, out, captured = _crash_then_recover(tmp_path, stores, text, lost_nodes=[])
    # Before the crash only 3 and 6 were checkpoints; 6 commits only if its replication (in
    # the spans of iterations 7 and 8) finished before rank 1 died.
    assert captured == [3, 6]
    found = _restored(out)
    assert found in ([(0, i, "local"), (1, i, "local")] for i in (3, 6))
    # After the restore the interval counts from the restored iteration: i + 3, i + 6, ...
    iteration = found[0][1]
    after = sorted(
        e["iteration"]
        for e in _events(out, "ckpt_captured")
        if e["rank"] == 0 and e["iteration"] > 8
    )
    assert after == [i for i in range(iteration + 3, 13, 3) if i > 8]


def test_adaptive_interval_with_compression_recovers_bitwise(
    stores: tuple[list[StoreProcess], str], tmp_path: Path
) -> None:
    text = (
        SCENARIO.replace("BANDWIDTH", "0.002")
        .replace("INTERVAL", "adaptive")
        .replace("COMPRESSION", "on")
    )
    _, out, captured = _crash_then_recover(tmp_path, stores, text, lost_nodes=[1])
    changes = [e for e in _events(out, "ckpt_interval_changed") if e["rank"] == 0]
    assert changes and changes[0]["details"]["interval"] > 1
    assert changes[0]["details"]["previous"] == 1
    # Every checkpoint before the first change was captured; after it, iterations were skipped.
    first_change = changes[0]["iteration"]
    assert [i for i in captured if i <= first_change] == list(range(1, first_change + 1))
    assert len(captured) < 8
    compression = _events(out, "ckpt_compression")
    assert compression and all(e["details"]["enabled"] for e in compression)
    # Node 1 was lost: rank 1 restored its shard from node 0's memory, where it had arrived
    # compressed; rank 0 from its own.
    found = _restored(out)
    (iteration,) = {i for _, i, _ in found}
    assert iteration in captured
    assert [(r, tier) for r, _, tier in found] == [(0, "local"), (1, "peer")]


def test_young_persistence_starts_after_the_first_failure(
    stores: tuple[list[StoreProcess], str], tmp_path: Path
) -> None:
    # No failure process, so no prior: the first run persists nothing. The restarted ranks have
    # seen one failure within seconds: Young's interval for a state that uploads in a fraction
    # of a millisecond is below one iteration, so every checkpoint from then on is persisted.
    text = (
        SCENARIO.replace("BANDWIDTH", "16")
        .replace("INTERVAL", "1")
        .replace("COMPRESSION", "off")
        .replace("compression: off}", "compression: off, persist_interval: young}")
    )
    _, out, captured = _crash_then_recover(tmp_path, stores, text, lost_nodes=[])
    persisted = sorted(e["iteration"] for e in _events(out, "persist_done") if e["rank"] == 0)
    (restored,) = {i for _, i, _ in _restored(out)}
    assert captured  # the first run checkpointed ...
    assert persisted and min(persisted) > restored  # ... but persisted only after the restore
    assert persisted[-1] == 12
