"""The calibration's collective failure (``benchmarks.calibrate._collective_failure_at``): a
survivor that trains beside its all-reduce sees it fail once the vanished peer is gone, and a
collective that completes is no failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from running import stop_process

REPO = Path(__file__).parents[2]

# One rank of two; rank 1 vanishes (argv[2] == "vanish") as a lost node's process dies.
RANK = """
import datetime, json, os, sys, time
import torch, torch.distributed as dist
from benchmarks.calibrate import _collective_failure_at
rank, vanish = int(sys.argv[1]), sys.argv[2] == "vanish"
dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
dist.all_reduce(torch.zeros(1))  # both connected
if rank == 1 and vanish:
    time.sleep(0.3)  # the survivor's all-reduce is in flight by now
    print(json.dumps({"vanished": time.time()}), flush=True)
    os._exit(0)  # no goodbye to the group
if rank == 1:
    dist.all_reduce(torch.zeros(1))
    print(json.dumps({"done": True}), flush=True)
else:
    print(json.dumps({"failed_at": _collective_failure_at(bound_s=20.0)}), flush=True)
os._exit(0)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(mode: str) -> dict[str, object]:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "PYTHONPATH": str(REPO),
    }
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(rank), mode],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    got: dict[str, object] = {}
    try:
        for process in ranks:
            out, _ = process.communicate(timeout=90)
            got.update(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in ranks:
            stop_process(process, 5.0)
    return got


def test_the_survivors_all_reduce_fails_once_its_peer_has_vanished() -> None:
    got = _run("vanish")
    assert isinstance(got["failed_at"], float) and isinstance(got["vanished"], float)
    assert got["vanished"] <= got["failed_at"] < got["vanished"] + 10.0


def test_an_all_reduce_that_completes_is_no_failure() -> None:
    assert _run("stay") == {"failed_at": None, "done": True}
