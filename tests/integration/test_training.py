"""Trainer processes on gloo: determinism, crash and restore with the baseline, FSDP2 state.

The proof of recovery is state, not logs: a job whose ranks are killed at an iteration and
restarted from the persistent baseline reaches the same final weights, bit for bit, as a job
that never failed (docs/design.md section 4; STYLE "Tests").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from real.runtime.processes import free_port
from real.trainer.inject import CrashPoint

REPO = Path(__file__).resolve().parents[2]

TINY_SCENARIO = """
name: tiny-train
targets: [real]
seed: 3
cluster: {nodes: 2}
model: {layers: 2, hidden: 32, heads: 4, context: 32}
training: {iterations: 8, batch_size_per_rank: 2, warmup_iterations: 2, parallelism: PARALLELISM}
checkpoint: {strategy: persistent, replicas: 1, baseline_every_iterations: 3}
"""


def run_ranks(
    world_size: int,
    args: list[str],
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
    module: list[str] | None = None,
) -> list[tuple[int, str]]:
    """Start ``world_size`` trainers (torchrun's environment) and wait: (exit code, output)."""
    port = free_port()
    processes = []
    for rank in range(world_size):
        rank_env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            **(env or {}),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, *(module or ["-m", "real.trainer.main"]), *args],
                env=rank_env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout_s)
            results.append((process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    return results


def write_scenario(folder: Path, parallelism: str) -> Path:
    path = folder / f"tiny-{parallelism}.yaml"
    path.write_text(TINY_SCENARIO.replace("PARALLELISM", parallelism))
    return path


def final_digests(run_dir: Path, world_size: int) -> set[str]:
    return {
        json.loads((run_dir / "final" / f"rank{r}.bin.json").read_text())["model_digest"]
        for r in range(world_size)
    }


def events(run_dir: Path, rank: int) -> list[dict[str, object]]:
    path = run_dir / "events" / f"trainer-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def train(scenario: Path, run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
    for code, output in run_ranks(2, [str(scenario), "--out", str(run_dir), *extra], env=env):
        assert code == 0, output


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Final model digests of uninterrupted 2-rank runs, DDP and FSDP2."""
    folder = tmp_path_factory.mktemp("reference")
    digests = {}
    for parallelism in ("ddp", "zero3"):
        run_dir = folder / parallelism
        train(write_scenario(folder, parallelism), run_dir, "--checkpointer", "none")
        (digest,) = final_digests(run_dir, 2)  # every rank holds the same model
        digests[parallelism] = digest
    return digests


def test_ddp_training_is_bitwise_deterministic(tmp_path: Path, reference: dict[str, str]) -> None:
    scenario = write_scenario(tmp_path, "ddp")
    train(scenario, tmp_path / "again", "--checkpointer", "none")
    assert final_digests(tmp_path / "again", 2) == {reference["ddp"]}
    # The digest sees a difference: one iteration fewer ends elsewhere. (DDP and FSDP2 may end
    # bitwise equal on 2 ranks, where a sum of two values is the same in either order.)
    train(scenario, tmp_path / "shorter", "--checkpointer", "none", "--iterations", "7")
    assert final_digests(tmp_path / "shorter", 2) != {reference["ddp"]}
    iteration_ends = [e for e in events(tmp_path / "again", 1) if e["kind"] == "iteration_end"]
    assert [e["iteration"] for e in iteration_ends] == list(range(1, 9))
    assert all(e["details"]["duration_s"] > 0 for e in iteration_ends)  # type: ignore[index]


@pytest.mark.parametrize("parallelism", ["ddp", "zero3"])
def test_restore_after_a_crash_reaches_the_uninterrupted_weights(
    tmp_path: Path, reference: dict[str, str], parallelism: str
) -> None:
    scenario, run_dir = write_scenario(tmp_path, parallelism), tmp_path / "run"
    crash = CrashPoint(iteration=5, phase="after_step", failure=0)
    results = run_ranks(2, [str(scenario), "--out", str(run_dir)], env=crash.env())
    assert [code for code, _ in results] == [-signal.SIGKILL] * 2
    assert not (run_dir / "final").exists()
    train(scenario, run_dir, env={"GEMINI_FAILURE": "0"})  # the same job, started again
    assert final_digests(run_dir, 2) == {reference[parallelism]}
    for rank in range(2):
        kinds = [(e["kind"], e["iteration"]) for e in events(run_dir, rank)]
        assert ("failure_injected", 5) in kinds
        assert ("state_restored", 3) in kinds and ("training_resumed", 4) in kinds
        restored = next(e for e in events(run_dir, rank) if e["kind"] == "state_restored")
        assert restored["details"] == {
            "tier": "persistent",
            "seconds": restored["details"]["seconds"],  # type: ignore[index]
            "source_node": None,
            "failure": 0,
        }
    persisted = {e["iteration"] for e in events(run_dir, 0) if e["kind"] == "persist_done"}
    assert persisted == {3, 6}


FSDP_ROUND_TRIP = """
import datetime, json, os, sys
import torch, torch.distributed as dist
from real.persistent.dcp import load_persistent, save_persistent
from real.engine.state import flatten_state, unflatten_state
from real.trainer.workload.model import GPTConfig
from real.trainer.workload.trainer import Trainer, TrainerConfig
from real.trainer.workload.weights import state_digest

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
                        rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
torch.set_num_threads(1)
config = TrainerConfig(model=GPTConfig(2, 32, 4, 32), parallelism="zero3", iterations=6,
                       warmup_iterations=2, batch_size_per_rank=2)
uninterrupted = Trainer(config, rank=rank, world_size=world)
for _ in range(6):
    uninterrupted.step()
interrupted = Trainer(config, rank=rank, world_size=world)
for _ in range(3):
    interrupted.step()
live = interrupted.state()
tensors, values = flatten_state(live)
shapes = {k: list(v.shape) for k, v in tensors.items()}
# What an in-memory engine stores and gives back: this rank's local shards as plain tensors.
local = {k: (v.to_local() if hasattr(v, "to_local") else v).detach().clone()
         for k, v in tensors.items()}
save_persistent(sys.argv[1], 3, live)  # DTensors: stored as global tensors
interrupted.step()  # the live tensors move on; the copies must not
resumed = Trainer(config, rank=rank, world_size=world)
resumed.load_state(unflatten_state(local, values))
# The persistent tier read back without a template (whole tensors; each rank keeps its part).
from_tier = Trainer(config, rank=rank, world_size=world)
from_tier.load_state(load_persistent(sys.argv[1], 3))
for _ in range(3):
    resumed.step()
    from_tier.step()
expected = state_digest(uninterrupted.model_state(full=True))
result = {
    "equal": state_digest(resumed.model_state(full=True)) == expected,
    "equal_from_tier": state_digest(from_tier.model_state(full=True)) == expected,
    "sharded": any(list(local[k].shape) != shapes[k] for k in local),
    "local_numel": sum(v.numel() for k, v in local.items() if k.startswith("model/")),
}
print("RESULT " + json.dumps(result))
from real.runtime.procgroup import leave_process_group
del uninterrupted, interrupted, resumed, from_tier
leave_process_group(together=True)
"""


def test_fsdp2_state_round_trips_bitwise(tmp_path: Path) -> None:
    results = run_ranks(2, [str(tmp_path / "tier")], module=["-c", FSDP_ROUND_TRIP])
    parsed = []
    for code, output in results:
        assert code == 0, output
        line = next(line for line in output.splitlines() if line.startswith("RESULT "))
        parsed.append(json.loads(line.removeprefix("RESULT ")))
    assert all(result["equal"] for result in parsed)
    assert all(result["equal_from_tier"] for result in parsed)
    assert all(result["sharded"] for result in parsed)  # each rank held only its shards


PER_RANK_COPIES = """
import datetime, json, os, sys
import torch, torch.distributed as dist
from real.persistent.dcp import load_persistent, save_persistent

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
                        rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
# A DDP model's state as each rank holds it: the same names on every rank, and values that
# differ (BatchNorm's running statistics are each rank's own until DDP's next broadcast).
state = {"model": {f"bn{i}.running_mean": torch.full((64,), 100.0 * rank + i) for i in range(8)}}
save_persistent(sys.argv[1], 5, state)
dist.barrier()  # rank 0 lists the checkpoint as complete after the save's own barrier
loaded = load_persistent(sys.argv[1], 5)
print("RESULT " + json.dumps({name: loaded["model"][name][0].item() for name in state["model"]}))
from real.runtime.procgroup import leave_process_group
leave_process_group(together=True)
"""


def test_the_persistent_tier_keeps_rank_0s_copy_of_what_every_rank_holds(tmp_path: Path) -> None:
    """Written once, a tensor every rank holds under one name comes from rank 0 (under DDP,
    the copy the next forward broadcasts), on every rank's restore; DCP's default spread the
    writes over the ranks, and a restore gave rank 0 rank 1's BatchNorm statistics."""
    results = run_ranks(2, [str(tmp_path / "tier")], module=["-c", PER_RANK_COPIES])
    for code, output in results:
        assert code == 0, output
        line = next(line for line in output.splitlines() if line.startswith("RESULT "))
        assert json.loads(line.removeprefix("RESULT ")) == {
            f"bn{i}.running_mean": float(i) for i in range(8)
        }


FSDP_WARMED = """
import datetime, json, os
import torch, torch.distributed as dist
from real.trainer.workload.model import GPTConfig
from real.trainer.workload.trainer import Trainer, TrainerConfig
from real.trainer.workload.weights import state_digest

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
torch.set_num_threads(1)
config = TrainerConfig(model=GPTConfig(2, 32, 4, 32), parallelism="zero3", iterations=6,
                       warmup_iterations=2, batch_size_per_rank=2)
rng = torch.get_rng_state()
if rank == 1:  # a warm spare beside a rank that never warmed
    Trainer.warm_sharding(config)
result = {"rng_kept": bool(torch.equal(rng, torch.get_rng_state())),
          "no_group_left": not dist.is_initialized()}
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
                        rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
try:
    Trainer.warm_sharding(config)
    result["refused_in_a_group"] = False
except RuntimeError:
    result["refused_in_a_group"] = True
digests = []
for _ in range(2):  # the first trainer of the process, then one built after it
    trainer = Trainer(config, rank=rank, world_size=world)
    for _ in range(3):
        trainer.step()
    trainer.state()
    digests.append(state_digest(trainer.model_state(full=True)))
    del trainer
result["same_weights"] = digests[0] == digests[1]
print("RESULT " + json.dumps(result))
from real.runtime.procgroup import leave_process_group
leave_process_group(together=True)
"""


def test_a_spare_warmed_for_fsdp2_trains_as_one_that_did_not() -> None:
    # Trainer.warm_sharding (a warm spare's wait) leaves no group, no RNG draw and no trace in
    # the FSDP2 training that follows, on the warmed rank and beside one that did not warm.
    results = run_ranks(2, [], module=["-c", FSDP_WARMED])
    for code, output in results:
        assert code == 0, output
        line = next(line for line in output.splitlines() if line.startswith("RESULT "))
        assert json.loads(line.removeprefix("RESULT ")) == {
            "rng_kept": True,
            "no_group_left": True,
            "refused_in_a_group": True,
            "same_weights": True,
        }


def test_bad_settings_fail_with_a_clear_message(tmp_path: Path) -> None:
    scenario = tmp_path / "no-interval.yaml"
    scenario.write_text(
        TINY_SCENARIO.replace("PARALLELISM", "ddp").replace(
            "strategy: persistent, replicas: 1, baseline_every_iterations: 3", "replicas: 1"
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "real.trainer.main",
            str(scenario),
            "--out",
            str(tmp_path / "x"),
            "--checkpointer",
            "persistent",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "checkpoint.baseline_every_iterations" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodel: {layers: 0}\n")
    done = subprocess.run(
        [sys.executable, "-m", "gemini_ckpt", "train", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "model.layers" in done.stderr
