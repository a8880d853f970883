"""Training iteration time with per-iteration in-memory checkpoints, against none.

The real workload (``real.trainer.workload.Trainer``: the GPT decoder of a ``BenchModel`` size under
DDP, gloo) runs on
``nodes x ranks_per_node`` processes, three ways in turn, ``repeats`` times:

- ``none``: no checkpoints;
- ``interleaved``: ``GeminiCheckpointer`` saving every iteration, replication profiled over the
  first iterations and then scheduled into the idle spans of DDP's all-reduces;
- ``blocking``: the same, but each save replicates and commits before training continues;
- ``floor`` (asked for by name): the least any in-memory checkpoint replicated to a peer must do,
  ``FloorCheckpointer``: one plain copy of the state per iteration and one one-way send of its
  bytes to the next node's store; its overhead is what this machine charges for the bytes alone.

An iteration's time is the slowest rank's time from the start of its step to the return of
``save()``; the figure per mode is the median over the iterations after profiling and over the
repeats. Workers run ``python -m benchmarks.engine_training '<json>'``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from real.engine.client import StoreClient
from real.engine.process import StoreProcess
from real.engine.protocol import make_token, recv_frame, send_frame
from real.runtime.env import GEMINI_TOKEN

MODES = ("none", "interleaved", "blocking")
ALL_MODES = (*MODES, "floor")


class FloorCheckpointer:
    """The floor of a per-iteration checkpoint replicated to one peer, for the benchmark.

    ``save()`` copies every tensor of the state into one of two plain host buffers (the
    engine's two slots), one ``copy_`` per tensor, and hands the buffer to a thread that
    sends its bytes to the peer store's raw-TCP ``sink`` (plain memory there). No hash, no
    manifest, no round trip but the sink's reply, no commit: any design that keeps a
    checkpoint in host memory and a copy on another node moves at least these bytes. A save
    waits only while the buffer it needs is still being sent (the send before the previous
    one).
    """

    def __init__(self, client: StoreClient) -> None:
        self.client = client
        self.buffers: list[Any] = []
        self.views: list[dict[str, Any]] = []
        self.free = [threading.Event(), threading.Event()]
        for event in self.free:
            event.set()
        self.pending: list[int] = []  # buffers saved and not yet sent, oldest first
        self.ready = threading.Condition()
        self.closing = False
        self.sent_bytes = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._send_loop, name="floor-sender", daemon=True)
        self.thread.start()
        self.saves = 0

    def _layout(self, tensors: dict[str, Any]) -> None:
        import torch

        offsets, total = {}, 0
        for key, tensor in tensors.items():
            offsets[key] = total
            total += -(-tensor.numel() * tensor.element_size() // 64) * 64  # 64-byte aligned
        for _ in range(2):
            flat = torch.zeros(total, dtype=torch.uint8)  # zero-filled: pages touched
            self.buffers.append(flat)
            self.views.append(
                {
                    key: flat[offsets[key] : offsets[key] + t.numel() * t.element_size()]
                    .view(t.dtype)
                    .view(t.shape)
                    for key, t in tensors.items()
                }
            )

    def save(self, iteration: int, state: dict[str, Any]) -> None:
        from real.engine.state import flatten_state

        if self.error is not None:
            raise RuntimeError("floor sender failed") from self.error
        tensors, _ = flatten_state(state)
        if not self.buffers:
            self._layout(tensors)
        index = self.saves % 2
        self.free[index].wait()
        self.free[index].clear()
        views = self.views[index]
        for key, tensor in tensors.items():
            views[key].copy_(tensor.detach())
        with self.ready:
            self.pending.append(index)
            self.ready.notify()
        self.saves += 1

    def _send_loop(self) -> None:
        while True:
            with self.ready:
                while not self.pending and not self.closing:
                    self.ready.wait()
                if not self.pending:
                    return
                index = self.pending.pop(0)
            try:
                if self.error is None:
                    payload = memoryview(self.buffers[index].numpy())
                    send_frame(self.client.sock, {"op": "sink"}, payload)
                    reply = recv_frame(self.client.sock)[0]
                    if not reply.get("ok"):
                        raise RuntimeError(f"sink refused: {reply}")
                    self.sent_bytes += len(payload)
            except BaseException as error:  # reported by the next save() or wait()
                self.error = error
            finally:
                self.free[index].set()

    def wait(self) -> None:
        """Until every save so far has been sent."""
        for event in self.free:
            event.wait()
        if self.error is not None:
            raise RuntimeError("floor sender failed") from self.error

    def close(self) -> None:
        self.wait()
        with self.ready:
            self.closing = True
            self.ready.notify()
        self.thread.join()
        self.client.close()


@dataclass(frozen=True)
class BenchModel:
    """A model size for the training benchmark.

    Attributes:
        name: label in the printout.
        layers, hidden, heads, context: the GPT decoder's shape.
        batch: sequences per rank per iteration.
        iterations: iterations per run (larger models: fewer).
    """

    name: str
    layers: int
    hidden: int
    heads: int
    context: int
    batch: int
    iterations: int

    @property
    def parameters(self) -> int:
        h = self.hidden
        return self.layers * (12 * h * h + 13 * h) + (256 + self.context) * h + 2 * h


# tiny: the tests' scale (~0.1 s per iteration with 4 ranks on 2 cores); medium: ~1 s per
# iteration there; demo: the design's (docs/design.md section 6) ~20M-parameter demo model (~7 s per
# iteration there).
MODELS: dict[str, BenchModel] = {
    "tiny": BenchModel("tiny", 4, 128, 4, 64, 8, 40),
    "medium": BenchModel("medium", 4, 256, 4, 128, 8, 20),
    "demo": BenchModel("demo", 8, 448, 8, 256, 8, 12),
}


def parse_model(text: str) -> BenchModel:
    """A preset name (``tiny``, ``medium``, ``demo``) or ``LAYERSxHIDDENxCONTEXT[/BATCH]``."""
    text = text.strip()
    if text in MODELS:
        return MODELS[text]
    try:
        shape, _, batch = text.partition("/")
        layers, hidden, context = (int(v) for v in shape.split("x"))
        return BenchModel(text, layers, hidden, 4, context, int(batch or 8), 20)
    except ValueError:
        raise ValueError(
            f"model {text!r}: use one of {sorted(MODELS)} or LAYERSxHIDDENxCONTEXT[/BATCH], "
            "e.g. 4x256x128/8"
        ) from None


def _scenario(config: dict[str, Any]) -> Any:
    from shared.scenario import Scenario

    return Scenario.model_validate(
        {
            "name": "bench-training",
            "cluster": {"nodes": config["nodes"], "accelerators_per_node": config["per_node"]},
            "model": {
                "layers": config["layers"],
                "hidden": config["hidden"],
                "heads": config["heads"],
                "context": config["context"],
            },
            "training": {
                "iterations": config["iterations"],
                "batch_size_per_rank": config["batch"],
            },
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

    from real.runtime.procgroup import leave_process_group
    from real.trainer.workload.trainer import Trainer, TrainerConfig

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    rank, world = config["rank"], config["world"]
    dist.init_process_group(
        "gloo", init_method=f"file://{config['pg']}", rank=rank, world_size=world
    )
    scenario = _scenario(config)
    trainer = Trainer(TrainerConfig.from_scenario(scenario), rank=rank, world_size=world)
    checkpointer: Any = None
    if config["mode"] == "floor":
        peer = (rank // config["per_node"] + 1) % config["nodes"]
        checkpointer = FloorCheckpointer(
            StoreClient(peer, config["addrs"][peer], os.environ[GEMINI_TOKEN])
        )
    elif config["mode"] != "none":
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
    skip = untimed(config["profiling"])
    cpu_began = time.process_time()
    dist.barrier()
    for iteration in range(1, config["iterations"] + 1):
        if iteration == skip + 1:
            cpu_began = time.process_time()  # every thread of this process: training, sender
        started = time.perf_counter()
        trainer.step()
        stepped = time.perf_counter()
        if checkpointer is not None:
            checkpointer.save(iteration, trainer.state())
        times.append(time.perf_counter() - started)
        saves.append(time.perf_counter() - stepped)
    timed = max(1, config["iterations"] - skip)
    report: dict[str, Any] = {
        "times": times,
        "save_s": statistics.median(saves[skip:]),
        "cpu_per_iteration_s": (time.process_time() - cpu_began) / timed,
    }
    if isinstance(checkpointer, FloorCheckpointer):
        checkpointer.close()
        report["saves"] = len(saves)
        report["sent_bytes"] = checkpointer.sent_bytes
    elif checkpointer is not None:
        checkpointer.wait()
        report["saves"] = len(saves)
        report["costs"] = {
            "training": checkpointer.capturer.costs.snapshot(),
            "sender": checkpointer.replication.costs.snapshot(),
        }
        report["profile"] = checkpointer.replication.profiler.summary()
        report["sent_bytes"] = checkpointer.replication.sent_bytes
        plan = checkpointer.replication.plan
        report["spill_bytes"] = None if plan is None else plan.spill_bytes
        report["checkpoint_bytes"] = None if plan is None else plan.checkpoint_bytes
        checkpointer.close()
    del trainer, checkpointer
    leave_process_group(together=True)
    Path(config["out"]).write_text(json.dumps(report))


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) a live process has used; Linux's /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _launch(mode: str, config: dict[str, Any], folder: Path) -> dict[str, Any]:
    token = make_token()
    stores = (
        [StoreProcess(node, token) for node in range(config["nodes"])] if mode != "none" else []
    )
    try:
        addrs = [store.start() for store in stores]
        pids = [store.process.pid for store in stores if store.process is not None]
        store_cpu = [_cpu_s(pid) for pid in pids]
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
                    [sys.executable, "-m", "benchmarks.engine_training", json.dumps(full)],
                    env={**os.environ, GEMINI_TOKEN: token, "OMP_NUM_THREADS": "1"},
                )
            )
        for process in processes:
            if process.wait(1800) != 0:
                raise RuntimeError(f"bench worker exited with {process.returncode}")
        reports = [json.loads((folder / f"{r}.json").read_text()) for r in range(world)]
        # Whole run over its saves: a store is idle until the first replica arrives.
        store_cpu = [
            (_cpu_s(pid) - began) / config["iterations"]
            for pid, began in zip(pids, store_cpu, strict=True)
        ]
        store_costs = []
        for node, address in enumerate(addrs):
            client = StoreClient(node, address, token)
            store_costs.append(client.stats().get("costs", {}))
            client.close()
    finally:
        for store in stores:
            store.stop()
    skip = untimed(config["profiling"])
    slowest = [max(r["times"][i] for r in reports) for i in range(skip, config["iterations"])]
    detail = {k: v for k, v in reports[0].items() if k != "times"}
    detail["cpu_per_iteration_s"] = statistics.median(r["cpu_per_iteration_s"] for r in reports)
    if stores:
        detail["store_costs"] = store_costs[0]
        detail["store_cpu_per_save_s"] = statistics.median(store_cpu)
    return {"iteration_times": slowest, "detail": detail}


PROFILING = 5
"""Iterations that profile the idle spans before checkpoints start (``bench_training``)."""


def untimed(profiling: int = PROFILING) -> int:
    """The first iterations of a run, not timed: the profile's, then two of warm-up."""
    return profiling + 2


def bench_training(
    nodes: int = 2,
    per_node: int = 2,
    iterations: int | None = None,
    model: BenchModel = MODELS["tiny"],
    profiling: int = PROFILING,
    repeats: int = 2,
    modes: tuple[str, ...] = MODES,
) -> dict[str, Any]:
    """Median iteration time per mode, and the overheads relative to no checkpoints.

    ``iterations``: per run (default: the model's); the first ``untimed(profiling)`` are not
    timed.

    Raises:
        ValueError: ``iterations`` leaves none to time.
    """
    if iterations is not None and iterations <= untimed(profiling):
        raise ValueError(
            f"{iterations} iterations leave none to time: the first {untimed(profiling)} "
            "profile the idle spans and warm up"
        )
    config = {
        "nodes": nodes,
        "per_node": per_node,
        "iterations": iterations or model.iterations,
        "layers": model.layers,
        "hidden": model.hidden,
        "heads": model.heads,
        "context": model.context,
        "batch": model.batch,
        "profiling": profiling,
    }
    if "none" not in modes or any(mode not in ALL_MODES for mode in modes):
        raise ValueError(f"modes must include 'none' and come from {ALL_MODES}, got {modes}")
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gemini-bench-train-") as folder:
        for _ in range(repeats):
            for mode in modes:
                result = _launch(mode, config, Path(folder))
                samples[mode].extend(result["iteration_times"])
                details[mode] = result["detail"]
    median = {mode: statistics.median(values) for mode, values in samples.items()}
    return {
        "model": {**asdict(model), "parameters": model.parameters},
        "state_bytes": details.get("interleaved", {}).get("checkpoint_bytes"),
        "ranks": nodes * per_node,
        "iterations": config["iterations"],
        "repeats": repeats,
        "iteration_s": median,
        "overhead": {mode: median[mode] / median["none"] - 1 for mode in modes if mode != "none"},
        "details": details,
    }


def model_memory(model: BenchModel, per_node: int, replicas: int = 2) -> dict[str, Any]:
    """Checkpoint memory one node needs for ``model``: each rank's training state (after one
    step, so Adam's moments exist) times 2 slots (committed, in progress) for itself and 2 for
    each of the ``replicas - 1`` peers' ranks it holds, times the ranks per node."""
    import torch

    from real.engine.shm import node_memory_bytes
    from real.engine.state import flatten_state
    from real.trainer.workload.trainer import Trainer, TrainerConfig

    torch.set_flush_denormal(True)
    config = {
        "nodes": max(2, replicas),
        "per_node": 1,
        "layers": model.layers,
        "hidden": model.hidden,
        "heads": model.heads,
        "context": model.context,
        "batch": 1,  # the state does not depend on the batch; one sequence keeps this quick
        "iterations": 1,
        "profiling": 1,
        "mode": "none",
    }
    trainer = Trainer(TrainerConfig.from_scenario(_scenario(config)), rank=0, world_size=1)
    trainer.step()
    tensors, _ = flatten_state(trainer.state())
    state_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    node_bytes = state_bytes * 2 * replicas * per_node
    total = node_memory_bytes()
    return {
        "model": model.name,
        "parameters": model.parameters,
        "state_bytes_per_rank": state_bytes,
        "ranks_per_node": per_node,
        "node_bytes": node_bytes,
        "node_memory_bytes": total,
        "fraction_of_node": node_bytes / total,
    }


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
