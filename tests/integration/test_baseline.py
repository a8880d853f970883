"""The persistent tier with several ranks: the baseline checkpointer and background persisting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from real.runtime.processes import free_port

REPO = Path(__file__).resolve().parents[2]

PRELUDE = """
import datetime, json, os, sys, time
import torch, torch.distributed as dist
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
                        rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
url = sys.argv[1]

def state(iteration):
    # "model" is the same on every rank (stored once); "mine" differs per rank.
    return {"model": {"w": torch.full((64,), float(iteration))},
            "mine": {"tag": torch.tensor([rank * 1000 + iteration])},
            "iteration": iteration, "note": f"rank {rank}"}
"""

BASELINE = (
    PRELUDE
    + """
from real.persistent.baseline import PersistentCheckpointer
checkpointer = PersistentCheckpointer(url, 3, lambda: state(0))
result = {"first": checkpointer.restore()}
for iteration in range(1, 8):
    checkpointer.save(iteration, state(iteration))
restored = checkpointer.restore()
result["first"] = None if result["first"] is None else result["first"].iteration
result.update(iteration=restored.iteration, tier=restored.tier,
              w=restored.state["model"]["w"].tolist()[:2],
              tag=int(restored.state["mine"]["tag"]), note=restored.state["note"])
print("RESULT " + json.dumps(result), flush=True)
from real.runtime.procgroup import leave_process_group
del checkpointer
leave_process_group(together=True)
"""
)

BACKGROUND = (
    PRELUDE
    + """
from real.persistent.persister import BackgroundPersister
from real.persistent.dcp import load_persistent
persister = BackgroundPersister(url, keep=None)
for iteration in range(1, 13):
    if rank == 1:
        time.sleep(0.02)  # one rank runs behind: the ranks must still agree on what to write
    persister.submit(iteration, state(iteration))
persister.close(60)
dist.barrier()
index = json.load(open(os.path.join(url, "index.json")))
written = [e["iteration"] for e in index["complete"]]
checks = []
for iteration in written:
    loaded = load_persistent(url, iteration, state(0))
    checks.append(loaded["model"]["w"].eq(iteration).all().item()
                  and int(loaded["mine"]["tag"]) == rank * 1000 + iteration
                  and loaded["note"] == f"rank {rank}")
print("RESULT " + json.dumps({"written": written, "checks": checks, "errors": persister.errors,
                              "last": persister.last_persisted}), flush=True)
from real.runtime.procgroup import leave_process_group
del persister
leave_process_group(together=True)
"""
)


def run_two_ranks(script: str, url: Path) -> list[dict[str, object]]:
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(url)],
            env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_PORT": str(port)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=120)
            assert process.returncode == 0, output
            line = next(x for x in output.splitlines() if x.startswith("RESULT "))
            results.append(json.loads(line.removeprefix("RESULT ")))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    return results


def test_baseline_saves_every_k_and_every_rank_restores_its_own_state(tmp_path: Path) -> None:
    results = run_two_ranks(BASELINE, tmp_path / "tier")
    for rank, result in enumerate(results):
        assert result["first"] is None  # nothing to restore at the start
        assert result["iteration"] == 6 and result["tier"] == "persistent"
        assert result["w"] == [6.0, 6.0]
        assert result["tag"] == rank * 1000 + 6 and result["note"] == f"rank {rank}"
    index = json.loads((tmp_path / "tier" / "index.json").read_text())
    assert [e["iteration"] for e in index["complete"]] == [3, 6]


def test_background_persisters_of_all_ranks_write_the_same_checkpoints(tmp_path: Path) -> None:
    first, second = run_two_ranks(BACKGROUND, tmp_path / "tier")
    assert first["written"] == second["written"]
    written = first["written"]
    assert isinstance(written, list) and written[-1] == 12  # the newest is always written
    assert all(first["checks"]) and all(second["checks"])  # type: ignore[arg-type]
    assert first["errors"] == second["errors"] == []
    assert first["last"] == second["last"] == 12
