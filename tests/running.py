"""What the tests find running on this machine, and the rank scripts they start."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from real.agent.trainer_processes import TrainerPool, TrainerSpec
from real.runtime.processes import free_port, stop_process


def store_daemons(runtime: Path) -> list[str]:
    """PIDs of the node store daemons whose runtime folder is ``runtime``."""
    found = subprocess.run(
        ["pgrep", "-f", f"real.engine.daemon.*{runtime}"], capture_output=True, text=True
    )
    return found.stdout.split()


def rank_scripts(folder: Path, source: str, world: int, *extra: str) -> list[subprocess.Popen[str]]:
    """``source`` written to ``folder`` and started once per rank, as ``python rank.py RANK
    WORLD tcp://127.0.0.1:PORT *extra`` (stdout piped): the ranks of one gloo job."""
    script = folder / "rank.py"
    script.write_text(source)
    address = f"tcp://127.0.0.1:{free_port()}"
    return [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(world), address, *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]


def rank_outputs(ranks: list[subprocess.Popen[str]], timeout_s: float = 120) -> list[str]:
    """Every rank's output once it exited 0 (each is killed at the end either way)."""
    try:
        outputs = [process.communicate(timeout=timeout_s)[0] for process in ranks]
    finally:
        for process in ranks:
            process.kill()
            process.wait()
    for rank, (process, output) in enumerate(zip(ranks, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank}: {output}"
    return outputs


# The end of a stand-in trainer's program (``stand_in_pool``), once it has said "ready": for
# each attempt assigned, it says it trains again there ("resumed") once the file ``restored``
# exists (its restore); anything but an assignment ends it. Needs json, os, time, ``sock`` and
# ``restored``.
SERVE_ATTEMPTS = """
for line in sock.makefile():
    message = json.loads(line)
    if message["op"] != "assign":
        break
    while not os.path.exists(restored):
        time.sleep(0.01)
    sock.sendall(json.dumps({"op": "resumed", "attempt": message["attempt"]}).encode() + b"\\n")
"""


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll ``predicate`` until it holds; the test fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def stand_in_pool(
    folder: Path,
    program: str,
    *arguments: str,
    spares: str = "later",
    on_change: Callable[[], None] | None = None,
    warm_spares: int = 1,
) -> TrainerPool:
    """A node agent's pool of one rank whose trainers run ``python -c program *arguments``:
    stand-ins that speak the agent's protocol on ``GEMINI_AGENT_FD``; ``warm_spares`` spares
    are kept (``recovery.warm_spares``)."""
    spec = TrainerSpec(
        scenario=folder / "scenario.yaml",
        overrides=(),
        run_dir=folder,
        checkpointer="gemini",
        world_size=1,
        per_node=1,
        entrypoint=(sys.executable, "-c", program, *arguments),
        spares=warm_spares,
    )
    return TrainerPool(spec, node_id=0, env={}, spares=spares, on_change=on_change)


def survivor_of_a_crash(ranks: list[subprocess.Popen[str]], timeout_s: float) -> None:
    """Wait until rank 1 crashed (an injected crash: a non-zero exit), stop rank 0 as its agent
    would, and reap both whatever happened."""
    try:
        deadline = time.monotonic() + timeout_s
        while ranks[1].poll() is None:
            assert time.monotonic() < deadline, "rank 1 never crashed"
            time.sleep(0.05)
        assert ranks[1].returncode != 0
        ranks[0].kill()  # the agent stops the surviving trainer
        ranks[0].wait(30)
    finally:
        for process in ranks:
            stop_process(process, 10)


def ends_with_its_owner(owner: subprocess.Popen[Any], pid: int, timeout_s: float = 10.0) -> bool:
    """SIGKILL ``owner`` (nothing of it runs any cleanup) and tell whether process ``pid``,
    which it started, ends within ``timeout_s``; one still running then is killed."""
    owner.kill()
    owner.wait(timeout_s)
    deadline = time.monotonic() + timeout_s
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _running(pid):
        return True
    os.kill(pid, signal.SIGKILL)
    return False


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def live_descendants() -> dict[tuple[int, float], psutil.Process]:
    """{(pid, start time): process} of every process below this one that still runs (a zombie
    has ended; only its exit status waits to be read). A pid may be reused; a pid and its start
    time name one process."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE:
                found[(child.pid, child.create_time())] = child
    return found
