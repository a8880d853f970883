"""Training iteration time with per-iteration in-memory checkpoints, against none.

The real workload (``real.workload.Trainer``: the GPT decoder under DDP, gloo) runs on
``nodes x ranks_per_node`` processes, three ways in turn, ``repeats`` times:

- ``none``: no checkpoints;
- ``interleaved``: ``GeminiCheckpointer`` saving every iteration, replication profiled over the
  first iterations and then scheduled into the idle spans of DDP's all-reduces;
- ``blocking``: the same, but each save replicates and commits before training continues.

An iteration's time is the slowest rank's time from the start of its step to the return of
``save()``; the figure per mode is the median over the iterations after profiling and over the
repeats. Workers run ``python -m real.engine.bench_training '<json>'``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from real.engine.process import StoreProcess
from real.engine.protocol import make_token

MODES = ("none", "interleaved", "blocking")


def _scenario(config: dict[str, Any]) -> Any:
    from shared.scenario import Scenario

    return Scenario.model_validate(
        {
            "name": "bench-training",
            "cluster": {"nodes": config["nodes"], "accelerators_per_node": config["per_node"]},
            "model": {
                "layers": config["layers"],
                "hidden": config["hidden"],
                "heads": 4,
                "context": 64,
            },
            "training": {"iterations": config["iterations"], "batch_size_per_rank": 8},
            "checkpoint": {
                "replicas": 2,
                "profiling_iterations": config["profiling"],
                "traffic": "blocking" if config["mode"] == "blocking" else "interleaved",
            },
        }
    )


def worker(config: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist

    from real.workload.trainer import Trainer, TrainerConfig

    torch.set_num_threads(1)
    rank, world = config["rank"], config["world"]
    dist.init_process_group(
        "gloo", init_method=f"file://{config['pg']}", rank=rank, world_size=world
    )
    scenario = _scenario(config)
    trainer = Trainer(TrainerConfig.from_scenario(scenario), rank=rank, world_size=world)
    checkpointer = None
    if config["mode"] != "none":
        from real.engine import GeminiCheckpointer

        checkpointer = GeminiCheckpointer(
            scenario=scenario,
            rank=rank,
            world_size=world,
            node=rank // config["per_node"],
            local_rank=rank % config["per_node"],
            run_dir=config["folder"],
            store_addresses=config["addrs"],
            model=trainer.model,
        )
    times, saves = [], []
    dist.barrier()
    for iteration in range(1, config["iterations"] + 1):
        started = time.perf_counter()
        trainer.step()
        stepped = time.perf_counter()
        if checkpointer is not None:
            checkpointer.save(iteration, trainer.state())
        times.append(time.perf_counter() - started)
        saves.append(time.perf_counter() - stepped)
    skip = config["profiling"] + 2
    report: dict[str, Any] = {"times": times, "save_s": statistics.median(saves[skip:])}
    if checkpointer is not None:
        checkpointer.wait()
        report["profile"] = checkpointer.replication.profiler.summary()
        report["sent_bytes"] = checkpointer.replication.sent_bytes
        plan = checkpointer.replication.plan
        report["spill_bytes"] = None if plan is None else plan.spill_bytes
        report["checkpoint_bytes"] = None if plan is None else plan.checkpoint_bytes
        checkpointer.close()
    dist.barrier()
    dist.destroy_process_group()
    Path(config["out"]).write_text(json.dumps(report))


def _launch(mode: str, config: dict[str, Any], folder: Path) -> dict[str, Any]:
    token = make_token()
    stores = (
        [StoreProcess(node, token) for node in range(config["nodes"])] if mode != "none" else []
    )
    try:
        addrs = [store.start() for store in stores]
        world = config["nodes"] * config["per_node"]
        pg = folder / f"{mode}-{time.monotonic_ns()}.pg"
        processes = []
        for rank in range(world):
            full = {
                **config,
                "mode": mode,
                "rank": rank,
                "world": world,
                "pg": str(pg),
                "addrs": addrs,
                "folder": str(folder),
                "out": str(folder / f"{rank}.json"),
            }
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "real.engine.bench_training", json.dumps(full)],
                    env={**os.environ, "GEMINI_TOKEN": token, "OMP_NUM_THREADS": "1"},
                )
            )
        for process in processes:
            if process.wait(1800) != 0:
                raise RuntimeError(f"bench worker exited with {process.returncode}")
        reports = [json.loads((folder / f"{r}.json").read_text()) for r in range(world)]
    finally:
        for store in stores:
            store.stop()
    skip = config["profiling"] + 2
    slowest = [max(r["times"][i] for r in reports) for i in range(skip, config["iterations"])]
    return {
        "iteration_times": slowest,
        "detail": {k: v for k, v in reports[0].items() if k != "times"},
    }


def bench_training(
    nodes: int = 2,
    per_node: int = 2,
    iterations: int = 40,
    layers: int = 4,
    hidden: int = 128,
    profiling: int = 5,
    repeats: int = 2,
) -> dict[str, Any]:
    """Median iteration time per mode, and the overheads relative to no checkpoints."""
    config = {
        "nodes": nodes,
        "per_node": per_node,
        "iterations": iterations,
        "layers": layers,
        "hidden": hidden,
        "profiling": profiling,
    }
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gemini-bench-train-") as folder:
        for _ in range(repeats):
            for mode in MODES:
                result = _launch(mode, config, Path(folder))
                samples[mode].extend(result["iteration_times"])
                details[mode] = result["detail"]
    median = {mode: statistics.median(values) for mode, values in samples.items()}
    return {
        "ranks": nodes * per_node,
        "iterations": iterations,
        "repeats": repeats,
        "iteration_s": median,
        "overhead": {mode: median[mode] / median["none"] - 1 for mode in MODES[1:]},
        "details": details,
    }


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
