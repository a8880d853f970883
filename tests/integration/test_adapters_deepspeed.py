"""DeepSpeed ZeRO 1, 2 and 3 through the adapter and the in-memory engine survive a killed rank.

Two nodes with one rank each (node stores as processes, gloo on CPU, ``DS_ACCELERATOR=cpu``).
To keep the default run lean (the first ``deepspeed.initialize`` of a process costs seconds),
one job trains four engines side by side, built by the example script's own functions
(``examples/deepspeed_train.py``): ZeRO 1, 2 and 3 in fp32, and ZeRO-2 in bf16 (where the fp32
masters must come back as saved, not rebuilt from the bf16 weights). Every iteration it
checkpoints the four adapter states as one state (``{"zero1": ..., "zero2-bf16": ...}``).
Rank 1 is SIGKILLed after the step of iteration 5 (``real.trainer.inject``), before its checkpoint;
the
surviving rank is stopped, as an agent would. The restarted job restores the newest iteration
both ranks hold in memory (4, or 3 when the replication of 4 was cut short), loads each engine
with ``gemini_ckpt.adapters.deepspeed.load_state_dict``, trains to iteration 8, then builds four
fresh engines and trains them 1..8 without a failure. Proof of recovery is state: for every
engine and rank, each tensor and value of the final state (module, fp32 master partition, Adam
state, scheduler, counters) is bitwise that of the failure-free engines. The restarted job also
writes each engine's state to the persistent tier (DCP), reads it back and loads it: the state
stays the same, bit for bit.

The example script's own ``main``, with ``gemini_ckpt.Checkpointer`` under torchrun (killed,
restarted by torchrun), is the slow variant.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from real.engine.process import StoreProcess
from real.engine.protocol import make_token
from real.runtime.processes import free_port, stop_process
from real.trainer.inject import CrashPoint

pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed (./setup.sh)")

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "deepspeed_train.py"
FINAL_LINE = re.compile(
    r"rank \d+: finished iteration \d+, loss [-\d.e+]+, state sha256 [0-9a-f]{64}"
)
# name: (ZeRO stage, bf16)
ENGINES = {"zero1": (1, False), "zero2": (2, False), "zero3": (3, False), "zero2-bf16": (2, True)}
ITERATIONS, CRASH_AT = 8, 5
TIMEOUT_S = 240


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("deepspeed_train", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(config: dict[str, Any]) -> None:
    """One rank: three engines, restore if there is a checkpoint, train, report digests."""
    import gc

    import torch

    from gemini_ckpt.adapters import deepspeed as ds_state
    from real.engine import GeminiCheckpointer
    from real.persistent.dcp import load_persistent, save_persistent
    from real.runtime.procgroup import leave_process_group
    from real.trainer.inject import crash_point_from_env, maybe_crash
    from shared.scenario import Scenario

    torch.set_flush_denormal(True)
    example = _example()
    example.init_distributed()
    rank = int(os.environ["RANK"])
    engines = {
        name: example.build_engine(stage, bf16=bf16) for name, (stage, bf16) in ENGINES.items()
    }
    scenario = Scenario.model_validate(
        {
            "name": "deepspeed-adapter",
            "cluster": {"nodes": 2, "accelerators_per_node": 1},
            "checkpoint": {"replicas": 2, "profiling_iterations": 2},
        }
    )
    checkpointer = GeminiCheckpointer(
        scenario=scenario,
        rank=rank,
        world_size=2,
        node=rank,
        local_rank=0,
        run_dir=config["run_dir"],
    )
    report: dict[str, Any] = {"restored": None}
    start = 1
    restored = checkpointer.restore()
    if restored is not None:
        for name, engine in engines.items():
            ds_state.load_state_dict(engine, restored.state[name])
        start = restored.iteration + 1
        report["restored"] = {"iteration": restored.iteration, "tier": restored.tier}
    crash = crash_point_from_env()
    for iteration in range(start, ITERATIONS + 1):
        for engine in engines.values():
            example.train_step(engine, iteration)
        maybe_crash(crash, iteration, rank, "after_step")
        state = {name: ds_state.state_dict(e, clone=False) for name, e in engines.items()}
        checkpointer.save(iteration, state)
    checkpointer.close()
    report["final"] = {
        name: example.state_digest(ds_state.state_dict(engine)) for name, engine in engines.items()
    }
    if restored is not None:
        # The persistent tier (DCP): each engine's state written, read back into its shape,
        # loaded into the engine; the engine's state must be what was written.
        report["persistent"] = {}
        token = os.environ["GEMINI_TOKEN"]
        for name, engine in engines.items():
            url = str(Path(config["run_dir"]) / "persistent" / name)
            save_persistent(url, ITERATIONS, ds_state.state_dict(engine, clone=False), key=token)
            # Rank 0 lists the checkpoint in the index after the other ranks' save returned.
            torch.distributed.barrier()
            read = load_persistent(url, ITERATIONS, ds_state.state_dict(engine), key=token)
            ds_state.load_state_dict(engine, read)
            report["persistent"][name] = example.state_digest(ds_state.state_dict(engine))
    del engines, restored
    reference = {
        name: example.build_engine(stage, bf16=bf16) for name, (stage, bf16) in ENGINES.items()
    }
    for iteration in range(1, ITERATIONS + 1):
        for engine in reference.values():
            example.train_step(engine, iteration)
    report["reference"] = {
        name: example.state_digest(ds_state.state_dict(engine))
        for name, engine in reference.items()
    }
    Path(config["report"]).write_text(json.dumps(report))
    del reference
    gc.collect()
    leave_process_group(together=True)


@contextlib.contextmanager
def _stores(nodes: int) -> Iterator[tuple[list[str], str]]:
    """``nodes`` node stores as processes; stopped, and their shared memory checked, at the end."""
    token, prefix = make_token(), f"gemini-test-{uuid.uuid4().hex[:8]}"
    processes = [StoreProcess(node, token, prefix=prefix) for node in range(nodes)]
    try:
        yield [process.start() for process in processes], token
    finally:
        for process in processes:
            process.stop()
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


@pytest.fixture
def stores() -> Iterator[tuple[list[str], str]]:
    with _stores(2) as started:
        yield started


def _launch(
    run_dir: Path, addrs: list[str], token: str, crash: dict[str, str] | None = None
) -> list[subprocess.Popen[bytes]]:
    port = free_port()
    processes = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": "1",
            "GEMINI_STORE_ADDRS": ",".join(addrs),
            "GEMINI_TOKEN": token,
            **(crash or {}),
        }
        env.pop("GEMINI_RUN_DIR", None)
        config = {"run_dir": str(run_dir), "report": str(run_dir / f"report-rank{rank}.json")}
        with open(run_dir / f"rank{rank}.log", "ab") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, __file__, json.dumps(config)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return processes


def _log(run_dir: Path, rank: int) -> str:
    return (run_dir / f"rank{rank}.log").read_text(errors="replace")[-4000:]


def test_zero_stages_restore_bitwise_after_a_killed_rank(
    stores: tuple[list[str], str], tmp_path: Path
) -> None:
    addrs, token = stores
    crash = CrashPoint(CRASH_AT, rank=1, phase="after_step", mode="kill").env()
    first = _launch(tmp_path, addrs, token, crash)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while first[1].poll() is None:
            assert time.monotonic() < deadline, f"rank 1 never crashed:\n{_log(tmp_path, 1)}"
            time.sleep(0.05)
        assert first[1].returncode == -9, _log(tmp_path, 1)  # SIGKILLed itself
    finally:
        for process in first:  # the agent stops the surviving rank
            stop_process(process, 10)
    second = _launch(tmp_path, addrs, token)
    try:
        for rank, process in enumerate(second):
            code = process.wait(TIMEOUT_S)
            assert code == 0, f"rank {rank} exited {code}:\n{_log(tmp_path, rank)}"
    finally:
        for process in second:
            stop_process(process, 10)
    for rank in range(2):
        report = json.loads((tmp_path / f"report-rank{rank}.json").read_text())
        # Rank 1 died before saving 5; its 4 committed if its replication finished in time.
        assert report["restored"] in ({"iteration": i, "tier": "local"} for i in (3, 4)), report
        for engine, (stage, _) in ENGINES.items():
            final, reference = report["final"][engine], report["reference"][engine]
            assert any(name.startswith("zero/optimizer/") for name in final)
            assert ("model/0.weight" in final) == (stage < 3)
            assert final == reference, f"rank {rank}, {engine}: state differs"
            assert report["persistent"][engine] == final, f"rank {rank}, {engine}: through DCP"


class _Engine:
    """Just enough of a DeepSpeed engine for the checks that come before any work."""

    def __init__(self, stage: int, elastic: bool = False) -> None:
        self.stage = stage
        self.optimizer = types.SimpleNamespace(elastic_checkpoint=elastic)

    def zero_optimization_stage(self) -> int:
        return self.stage


def test_refuses_states_it_cannot_restore_with_a_way_out() -> None:
    from gemini_ckpt.adapters import deepspeed as ds_state

    with pytest.raises(ValueError, match=r"stage 0.*gemini_ckpt\.adapters\.ddp"):
        ds_state.state_dict(_Engine(0))
    with pytest.raises(ValueError, match=r"elastic_checkpoint.*set it to false"):
        ds_state.load_state_dict(_Engine(2, elastic=True), {})
    with pytest.raises(ValueError, match=r"not taken by gemini_ckpt\.adapters\.deepspeed"):
        ds_state.load_state_dict(_Engine(1), {"model": {}})


@pytest.mark.slow
def test_example_script_resumes_under_torchrun(tmp_path: Path) -> None:
    """The example's ``main`` (``gemini_ckpt.Checkpointer``, ZeRO-3) under one torchrun with
    ``--max-restarts 1``: rank 1 killed at iteration 7, torchrun restarts both workers, they
    restore from the node's store daemon and end in the state of a job that never failed; the
    daemon ends with the job and leaves nothing behind."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    scratch = tmp_path / "tmp"  # torchrun's log folders (torchelastic_*) stay in the test's
    scratch.mkdir()
    shm_before = set(os.listdir("/dev/shm"))

    def torchrun(out: Path, crash: dict[str, str] | None = None) -> str:
        env = {
            **os.environ,
            "TMPDIR": str(scratch),
            "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": "1",
            "GEMINI_RUNTIME_DIR": str(runtime),
            **(crash or {}),
        }
        env.pop("GEMINI_RUN_DIR", None)
        command = [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"),
            *("--max-restarts", "1", "--monitor-interval", "0.2"),
            *("--master-port", str(free_port())),
            *(str(EXAMPLE), "--zero-stage", "3", "--iterations", "12", "--out", str(out)),
        ]
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr

    def finals(output: str) -> list[str]:
        # Matched anywhere, not per line: the two workers share torchrun's stdout, and one's
        # line can land before the other's newline.
        lines = sorted(FINAL_LINE.findall(output))
        assert len(lines) == 2, output[-3000:]
        return lines

    resumed = torchrun(tmp_path / "run", CrashPoint(7, rank=1).env())
    assert "injected crash at iteration 7" in resumed
    restored = re.findall(r"rank \d+: restored iteration \d+ \((\w+)\)", resumed)
    assert restored == ["local", "local"], resumed[-3000:]
    unbroken = torchrun(tmp_path / "reference")
    assert "restored iteration" not in unbroken
    assert finals(resumed) == finals(unbroken)
    # The daemon ends with its torchrun agent, removing its discovery file and slot files.
    deadline = time.monotonic() + 30
    while list(runtime.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(runtime.iterdir()) == []
    left = {n for n in set(os.listdir("/dev/shm")) - shm_before if n.startswith("gemini-d")}
    assert left == set()


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))


TWO_ATTEMPTS = """
import os, sys
sys.path.insert(0, sys.argv[1])
os.environ.update(DS_ACCELERATOR="cpu", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                  MASTER_ADDR="127.0.0.1")
import deepspeed_train as example
from real.runtime.procgroup import leave_process_group
from real.runtime.processes import free_port

import deepspeed, torch
from gemini_ckpt.adapters import deepspeed as ds_state

kept = None  # a module kept across attempts: refused by the adapter in the second
for attempt in (1, 2):  # a survivor's: the group of the first is gone when the second begins
    os.environ["MASTER_PORT"] = str(free_port())
    example.init_distributed()
    engine = example.build_engine(2)
    example.train_step(engine, 1)
    ds_state.state_dict(engine)
    print(f"attempt {attempt} trained", flush=True)
    kept = kept or torch.nn.Linear(4, 4)
    again, *_ = deepspeed.initialize(
        model=kept, optimizer=torch.optim.AdamW(kept.parameters(), lr=0.1),
        config=example.deepspeed_config(2),
    )
    try:
        ds_state.state_dict(again)
        print(f"attempt {attempt} kept module taken", flush=True)
    except ValueError as error:
        print(f"attempt {attempt} kept module refused: {error}", flush=True)
    del engine, again
    leave_process_group(together=False)
"""


def test_a_survivor_builds_a_deepspeed_engine_again_in_a_new_group(tmp_path: Path) -> None:
    """DeepSpeed caches its world group at module level; after a failure our teardown drops
    the groups, and a survivor's next ``deepspeed.initialize`` broadcast over the cached, dead
    one ("Group ... is not registered") and died, so a spare took its rank. A module kept from
    the earlier attempt is refused by the adapter: its first engine's hooks stay on it."""
    script = tmp_path / "two_attempts.py"
    script.write_text(TWO_ATTEMPTS)
    done = subprocess.run(
        [sys.executable, str(script), str(REPO / "examples")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stdout.splitlines() if line.startswith("attempt ")]
    assert said[:3] == [
        "attempt 1 trained",
        "attempt 1 kept module taken",
        "attempt 2 trained",
    ], done.stderr[-3000:]
    # A module an earlier attempt's engine wrapped keeps that engine's ZeRO hooks: refused.
    assert said[3].startswith("attempt 2 kept module refused: this engine's module was wrapped")
