"""The calibration's lost node (``benchmarks.calibrate._lost_node_rounds``): its agent, a trainer
and its warm spare started as fresh processes, trained with a forked survivor, then killed; the
survivor's all-reduce fails, the round times it and what the trainer held, and nothing of the
node is left. A node whose
process cannot start says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from running import stop_process

from real.runtime.processes import pid_alive

REPO = Path(__file__).parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"

# One round on 2 ranks of the scenario (argv[1], then overrides); prints the seconds, or
# the round's error, and the PIDs of the lost node's processes.
ROUND = """
import json, sys
from pathlib import Path
import benchmarks.calibrate as calibrate
started = []
build = calibrate._LostNode.__init__
def recorded(self, *args, **kwargs):
    build(self, *args, **kwargs)
    started.extend(p.pid for p in self.processes.values())
calibrate._LostNode.__init__ = recorded
calibrate._warm_up_torch()
options = calibrate.CalibrationOptions(scenario=Path(sys.argv[1]), overrides=tuple(sys.argv[2:]))
try:
    rounds = calibrate._lost_node_rounds(options, 2, rounds=1)
    out = {"seconds": [r.seconds for r in rounds], "held": [r.trainer_anon_bytes for r in rounds]}
except RuntimeError as error:
    out = {"error": str(error)}
print(json.dumps({**out, "pids": started}), flush=True)
"""


def _round(*overrides: str) -> dict[str, object]:
    process = subprocess.Popen(
        [sys.executable, "-c", ROUND, str(QUICKSTART), "cluster.nodes=2", *overrides],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        out, _ = process.communicate(timeout=240)
    finally:
        stop_process(process, 5.0)
    assert process.returncode == 0
    got: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return got


def _slot_files() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("gemini-calibrate-lost-*")}


def test_a_lost_nodes_round_times_the_survivors_failure_and_leaves_nothing() -> None:
    before = _slot_files()
    got = _round()  # the quickstart is Gemini's: the node's store and replicas die with it
    seconds = got["seconds"]
    assert isinstance(seconds, list) and len(seconds) == 1
    assert 0.0 < seconds[0] < 30.0
    # What the lost trainer held of its own as it was killed: an interpreter with torch and
    # the scenario's model, state and engine (about 300 MB here), never a forked rank's share.
    held = got["held"]
    assert isinstance(held, list) and len(held) == 1
    assert isinstance(held[0], int) and 100 << 20 < held[0] < 4 << 30
    pids = got["pids"]
    assert isinstance(pids, list) and len(pids) == 3  # the agent, the spare and the trainer
    assert not [pid for pid in pids if pid_alive(pid)]
    assert _slot_files() <= before


def test_a_lost_node_that_cannot_start_says_why() -> None:
    got = _round("cluster.nodes=0")  # valid for the parent's argv, invalid for the node
    error = got["error"]
    assert isinstance(error, str)
    assert "the lost node's spare ended" in error and "cluster.nodes" in error
    pids = got["pids"]
    assert isinstance(pids, list) and not [pid for pid in pids if pid_alive(pid)]
