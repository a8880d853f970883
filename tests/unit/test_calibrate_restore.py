"""The calibration times a restore as the harness times a retrieval (benchmarks/calibrate.py):
from the last rank's start to the last rank's state, with each rank training once restored."""

from __future__ import annotations

import ast
from pathlib import Path

from running import rank_outputs, rank_scripts

RANK = """
import sys, time
import torch.distributed as dist
from benchmarks.calibrate import _engine_restore_fixed_s

rank, world, address = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
calls = []


class Costs:
    def __init__(self):
        self.copy_s = 0.0

    def snapshot(self):
        return {"restore: copy": {"s": self.copy_s, "calls": 1, "bytes": 0}}


class Restored:
    state = {"weights": 1}


class Engine:
    def __init__(self):
        self.capturer = type("Capturer", (), {"costs": Costs()})()

    def restore(self, plan, into):
        calls.append(("restore", plan.iteration, len(plan.sources)))
        if rank == 1:  # the last rank to have its state: 2.0 s, 1.5 s of it the copy
            time.sleep(2.0)
            self.capturer.costs.copy_s = 1.5
        return Restored()


class Trainer:
    state = {}

    def load_state(self, state):
        calls.append(("load", state["weights"]))

    def step(self):
        calls.append(("step",))


seconds = _engine_restore_fixed_s(Engine(), Trainer(), world, 7)
print(repr((seconds, calls)))
dist.destroy_process_group()
"""


def test_a_restore_is_timed_to_the_last_ranks_state_net_of_its_copy(tmp_path: Path) -> None:
    outputs = rank_outputs(rank_scripts(tmp_path, RANK, 2))
    results = [ast.literal_eval(output.strip().splitlines()[-1]) for output in outputs]
    seconds = [s for s, _ in results]
    # Every rank gives the same span: rank 0's own restore took no time, but the retrieval
    # ends when rank 1 has its state; rank 1's copy of the bytes (1.5 s) is left out. About
    # 0.5 s, less the ranks' skew leaving the barrier: the bounds leave 0.3 s for that skew
    # and 0.9 s for a late wake-up, and still exclude rank 0's own ~0 s and the 2.0 s with
    # the copy.
    assert seconds[0] == seconds[1]
    assert 0.2 < seconds[0] < 1.4
    # Each rank restores the committed iteration from every node's own memory, loads it, then
    # trains, as the harness's ranks do once they have their state.
    for _, calls in results:
        assert calls == [("restore", 7, 2), ("load", 1), ("step",)]


def test_restores_are_timed_in_rounds_each_with_a_new_engine_and_their_medians_kept() -> None:
    from benchmarks.calibrate import RESTORE_ROUNDS, _restore_rounds

    calls: list[tuple[str, ...]] = []
    # One slow restore of each kind among three (a moment of load): the medians drop it.
    times = {None: iter([0.030, 0.012, 0.014]), 3: iter([0.020, 0.050, 0.016])}

    class Engine:
        def __init__(self, number: int) -> None:
            self.number = number

        def close(self, abandon: bool) -> None:
            calls.append(("close", str(self.number), "abandon" if abandon else "plain"))

    built: list[Engine] = []

    def build() -> Engine:
        built.append(Engine(len(built)))
        return built[-1]

    def timed(engine: Engine, fetcher: int | None) -> float:
        calls.append(("restore", str(engine.number), "local" if fetcher is None else "peer"))
        return next(times[fetcher])

    engine, local, peer = _restore_rounds(build, timed, fetcher=3, rounds=3)
    assert RESTORE_ROUNDS >= 3
    assert (local, peer) == (0.014, 0.020)
    # Every restore has an engine of its own, built after the one before closed: as after a
    # failure (abandoned) before a local restore, plainly before a peer's; the last stays open.
    assert engine is built[-1] and len(built) == 6
    assert calls == [
        ("restore", "0", "local"),
        ("close", "0", "plain"),
        ("restore", "1", "peer"),
        ("close", "1", "abandon"),
        ("restore", "2", "local"),
        ("close", "2", "plain"),
        ("restore", "3", "peer"),
        ("close", "3", "abandon"),
        ("restore", "4", "local"),
        ("close", "4", "plain"),
        ("restore", "5", "peer"),
    ]


def test_restore_rounds_with_nothing_committed_give_no_figure() -> None:
    from benchmarks.calibrate import _restore_rounds

    class Engine:
        def close(self, abandon: bool) -> None:
            pass

    engine, local, peer = _restore_rounds(Engine, lambda engine, fetcher: None, fetcher=1)
    assert isinstance(engine, Engine) and (local, peer) == (None, None)
