"""How long a killed process's peer waits to see its connection close, by the process's
resident memory and the CPU contention beside it.

    .venv/bin/python benchmarks/teardown.py [--rss-mb 50 300 1000] [--busy 0 2 4] [--rounds 5]

A lost node is found by its survivors when its connections close, and the kernel closes a
killed process's files only after it has torn down its address space, which takes longer the
more pages the process owns and the less CPU it gets (docs/analysis.md, "A lost node's
collective failure timed with its processes"). Per resident size and number of busy
processes (each an interpreter spinning on one core), a child touches that much memory,
connects to this process over loopback TCP and is SIGKILLed; the time from the kill to the
end of the connection here is the figure (median and range of ``--rounds``). Every child and
spinner is ended by its owner, also on Ctrl-C, and by the kernel if this script is killed
outright (each child arms ``PR_SET_PDEATHSIG`` itself: ``ARMED``).

No library times this: it is one ``kill`` and one ``recv``, written here.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = r"""
import socket, sys, time
memory = bytearray(int(sys.argv[2]) * 1024 * 1024)
for at in range(0, len(memory), 4096):  # resident: every page touched
    memory[at] = 1
connection = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
connection.sendall(b"r")
time.sleep(600)  # until killed
"""


ARMED = r"""
import ctypes, os, signal, sys
prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux only
if prctl is not None:
    prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv.pop(1)):  # its parent ended before it was armed
    os._exit(1)
"""
"""What every child runs first: the kernel kills it once this process ends, so a measurement
killed outright leaves no orphan (armed by the child itself, with no ``preexec_fn``, so the
calibration may call ``teardown_s`` beside its threads)."""


def _owned(code: str, *args: str) -> subprocess.Popen[bytes]:
    """``python -c CODE ARGS``, SIGKILLed by the kernel if this process ends first."""
    return subprocess.Popen([sys.executable, "-c", ARMED + code, str(os.getpid()), *args])


SETTLE_S = 0.2
"""Pause between the child's ready byte and the kill, so its start-up is over."""


def teardown_s(rss_mb: int) -> float:
    """Seconds from SIGKILL of a child holding ``rss_mb`` MiB resident to the end of its
    loopback connection here."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        child = _owned(CHILD, str(port), str(rss_mb))
        try:
            server.settimeout(60.0)
            connection, _ = server.accept()
            with connection:
                if connection.recv(1) != b"r":
                    raise RuntimeError("the child closed before it was ready")
                time.sleep(SETTLE_S)
                began = time.monotonic()
                os.kill(child.pid, signal.SIGKILL)
                with suppress(ConnectionResetError):
                    connection.recv(1)
                return time.monotonic() - began
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()


SLOPE_SIZES_MB = (64, 512)
"""The two resident sizes whose teardowns ``seconds_per_gib`` compares: the smaller holds
about what an interpreter without torch does, the larger about what a harness node's trainer
and warm spare hold together."""


def seconds_per_gib(
    sizes_mb: tuple[int, int] = SLOPE_SIZES_MB,
    rounds: int = 3,
    measure: Callable[[int], float] = teardown_s,
) -> float:
    """How much later a killed process's connection closes per GiB it holds resident: the
    difference of the median teardowns (``measure``, ``rounds`` each) of the two sizes over
    the difference of their sizes; never negative (a noisy pair reads as no slope). The
    calibration's law of a lost node's collective failure takes its teardown rate from it
    (``analysis.calibration.fit_laws``)."""
    small, large = sizes_mb
    if not 0 <= small < large or rounds < 1:
        raise ValueError(f"need 0 <= small < large sizes and rounds >= 1, got {sizes_mb}, {rounds}")
    first = statistics.median(measure(small) for _ in range(rounds))
    second = statistics.median(measure(large) for _ in range(rounds))
    return max(0.0, (second - first) * 1024 / (large - small))


@contextmanager
def busy(count: int) -> Iterator[None]:
    """``count`` interpreters spinning beside the measurement, ended on leaving."""
    spinners = [_owned("while True: pass") for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def table(rss_mb: Sequence[int], spinning: Sequence[int], rounds: int) -> list[str]:
    """One line per (busy, resident size): the median and range of ``rounds`` teardowns."""
    lines = []
    for count in spinning:
        with busy(count):
            for size in rss_mb:
                times = [teardown_s(size) * 1000 for _ in range(rounds)]
                lines.append(
                    f"busy {count}  resident {size:5d} MiB  median {statistics.median(times):6.1f}"
                    f" ms  (range {min(times):.1f}-{max(times):.1f}, {rounds} rounds)"
                )
                print(lines[-1], flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rss-mb", type=int, nargs="+", default=[50, 300, 1000])
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    if options.rounds < 1 or min(options.rss_mb) < 0 or min(options.busy) < 0:
        parser.error("--rounds must be at least 1; --rss-mb and --busy at least 0")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    table(options.rss_mb, options.busy, options.rounds)
    return 0


if __name__ == "__main__":
    from gemini_ckpt.interrupts import run_script

    raise SystemExit(run_script(main))
