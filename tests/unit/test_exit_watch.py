"""A node agent learns of a trainer's crash when the process begins to exit, not after the
kernel has torn it down (``real.agent.trainer_processes.exiting_status`` and the pool's watch).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from running import stand_in_pool

from real.agent import trainer_processes
from real.agent.trainer_processes import TrainerPool, exiting_status

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="the kernel's exit mark is read from /proc"
)

# A stand-in trainer: ready at once, then reads its agent's messages until the socket closes.
STAYING_TRAINER = """
import json, os, socket
sock = socket.socket(fileno=int(os.environ["GEMINI_AGENT_FD"]))
sock.sendall(json.dumps({"op": "ready"}).encode() + b"\\n")
while sock.recv(4096):
    pass
"""


def state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2]


def until(predicate, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("code", "expected"),
    [("import os; os.kill(os.getpid(), 9)", -signal.SIGKILL), ("raise SystemExit(3)", 3)],
)
def test_a_process_that_exits_with_a_failure_shows_its_status_before_it_is_reaped(
    code: str, expected: int
) -> None:
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        # Not reaped: a zombie keeps the mark and the status the kernel set at its exit's
        # start (a process in its teardown cannot be held there on purpose).
        until(lambda: state(child.pid) == "Z")
        assert exiting_status(child.pid) == expected
    finally:
        assert child.wait(10) == expected


def test_a_running_process_or_one_that_finished_cleanly_shows_no_failure() -> None:
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        until(lambda: state(finished.pid) == "Z")
        assert exiting_status(running.pid) is None
        assert exiting_status(finished.pid) is None  # a trainer that finished: waitpid's news
    finally:
        running.kill()
        assert running.wait(10) == -signal.SIGKILL
        assert finished.wait(10) == 0
    assert exiting_status(running.pid) is None  # gone


def staying_pool(tmp_path: Path, changed: threading.Event) -> TrainerPool:
    return stand_in_pool(tmp_path, STAYING_TRAINER, on_change=changed.set)


def test_the_pool_reports_a_trainer_that_began_to_exit_while_the_process_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed = threading.Event()
    pool = staying_pool(tmp_path, changed)
    try:
        (worker,) = pool.workers()
        assert pool.wait_ready(20.0, spares=False)
        pool.take_slot(0)
        pool.assign(1, {})
        # The kernel's mark, for this trainer only: the process itself runs on, as one whose
        # teardown has not ended yet (no socket closed, nothing for waitpid).
        marked = {worker.pid: -signal.SIGKILL}
        monkeypatch.setattr(trainer_processes, "exiting_status", marked.get)
        changed.clear()
        reports: dict[int, int] = {}
        until(lambda: bool(reports.update(pool.poll()[0]) or reports), 5.0)
        assert reports == {0: -signal.SIGKILL}
        assert changed.is_set()  # the agent was woken, not left to its next look
        assert worker.proc.poll() is None  # reported from the mark, not from waitpid
        assert worker.settled(1)  # an abort does not wait for it
        assert pool.poll() == ({}, [])  # once
        assert pool.pids() == {}
    finally:
        pool.stop(grace_s=1.0)
    until(lambda: worker.proc.returncode is not None)  # killed and reaped: nothing left behind


def test_killing_a_trainer_already_exiting_reaps_it_off_the_recovery_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = staying_pool(tmp_path, threading.Event())
    (worker,) = pool.workers()
    reapers: list[threading.Thread] = []
    reap = trainer_processes.Worker._reap

    def recorded(self: trainer_processes.Worker) -> None:
        reapers.append(threading.current_thread())
        reap(self)

    monkeypatch.setattr(trainer_processes.Worker, "_reap", recorded)
    try:
        worker.exiting = -signal.SIGKILL  # what the watch records
        worker.kill()
        until(lambda: worker.proc.returncode is not None)
        assert reapers and reapers[0] is not threading.current_thread()
    finally:
        pool.stop(grace_s=1.0)
