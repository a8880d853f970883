"""A trainer crash's detection, timed along the harness's own chain, beside whatever runs.

In the harness (docs/cluster.md, "Failure detection") a crashed trainer is found by its node
agent's exit watch, which reads the kernel's exit mark every ``EXIT_WATCH_S``
(``real.agent.trainer_processes.exiting_status``) and wakes the agent's loop; the loop writes
the exit record to the coordination store (``keys.exit_key``); the root agent, waiting on the
store's watch (``real.agent.root.WATCHED``), wakes, polls its ``FailureDetector`` and reads the
injected and handled failures it matches the exit against before it records the detection.
Every hop is a process or thread that must get a CPU once woken, so the chain takes longer the
more processes share the CPUs.

:class:`ExitChainProbe` runs that chain with the harness's pieces: an embedded coordination
store process, an exit watch and a loop thread in this process (as an agent's), and a watcher
process that waits, polls and reads as the root does. It kills a sleeping child at random
moments and times each kill to the watcher's verdict. ``benchmarks.calibrate`` runs it while
the calibration's ranks train (``exit_detection_s``). No library times a chain of our own
processes, hence this module.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

from real.coord import keys
from real.coord.kv import TOKEN_ENV
from shared.errors import KVError

DETECTED_PREFIX = "calibrate/detected/"
"""Where the watcher writes when it found each exit (``DETECTED_PREFIX<rank>`` = its time)."""
READY_KEY = "calibrate/watching"
"""The watcher writes it once it waits on the store: no kill comes before."""
GAP_S = (0.03, 0.12)
"""The pause before each kill, drawn uniformly: a crash comes at a random phase of the exit
watch, and the probe stays light beside what it measures."""
VICTIM_S = 30
"""How long a victim sleeps if nobody kills it: a probe whose process was killed outright
leaves none for longer. (No ``preexec_fn`` arms a parent-death signal: in a process with
threads the child can deadlock before it runs the program, and its parent with it.)"""
SLEEP = f"import time\ntime.sleep({VICTIM_S})"
"""A victim where no ``sleep`` program is found."""
VERDICT_TIMEOUT_S = 30.0
"""How long the watcher may take to start, and one kill to get its verdict, before the probe
gives up (``error``): on a loaded host a Python process's start alone can take seconds."""


class ExitChainProbe:
    """Kill, notice, report, detect, again and again, from :meth:`start` until :meth:`stop`.

    ``latencies_s()`` are the seconds from each kill to the watcher's verdict, as the harness
    times a crash from its injection to the root's ``failure_detected``.
    """

    def __init__(self) -> None:
        from real.coord.connect import connect_kv
        from real.coord.kvserver import StoreServer

        self._token = os.environ.get(TOKEN_ENV) or os.urandom(16).hex()
        self._server = StoreServer(token=self._token).start()
        self._watcher: subprocess.Popen[bytes] | None = None
        self._latencies: list[float] = []
        self._stop = threading.Event()
        self._noticed = threading.Event()
        self._victim: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        try:
            self._kv = connect_kv(self._server.url, token=self._token)
            env = {**os.environ, TOKEN_ENV: self._token}
            command = [sys.executable, "-m", "benchmarks.exit_chain", "--watch", self._server.url]
            self._watcher = subprocess.Popen(
                [*command, "--parent", str(os.getpid())],
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # no terminal's Ctrl-C: it ends when we end it
            )
        except BaseException:
            self._server.stop()
            raise

    def start(self) -> ExitChainProbe:
        for target, name in (
            (self._run, "exit-chain"),
            (self._watch_exits, "exit-chain-watch"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def latencies_s(self) -> list[float]:
        with self._lock:
            return list(self._latencies)

    def stop(self) -> list[float]:
        """End the probe and everything it started; the latencies measured. Idempotent: a
        second call, or a call after the probe's loop already saw a stop, ends whatever is
        still running and nothing more."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=VERDICT_TIMEOUT_S + 1.0)
        self._threads.clear()
        self._reap(kill=True)
        if self._watcher is not None:
            self._watcher.kill()
            self._watcher.wait(timeout=10)
            self._watcher = None
        self._kv.close()
        self._server.stop()
        return self.latencies_s()

    # -- the agent's side -----------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes]:
        sleeper = shutil.which("sleep")
        command = [sleeper, str(VICTIM_S)] if sleeper else [sys.executable, "-c", SLEEP]
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)

    def _reap(self, kill: bool) -> None:
        with self._lock:
            victim, self._victim = self._victim, None
        if victim is not None:
            if kill and victim.poll() is None:
                victim.kill()
            victim.wait(timeout=10)

    def _watch_exits(self) -> None:
        """The agent's exit watch: the victim's exit mark, every ``EXIT_WATCH_S``."""
        from real.agent.trainer_processes import EXIT_WATCH_S, exiting_status

        while not self._stop.wait(EXIT_WATCH_S):
            with self._lock:
                victim = self._victim
            noticed = self._noticed.is_set()
            if victim is not None and not noticed and exiting_status(victim.pid) is not None:
                self._noticed.set()  # wakes the agent's loop, as ``Worker.watch_exit``

    def _run(self) -> None:
        """The agent's loop (woken by its exit watch, it writes the exit record) and the
        kills, one at a time, each waiting for its verdict."""
        rank = 0
        try:
            if not self._wait_for(READY_KEY):
                if not self._stop.is_set():
                    raise RuntimeError(
                        f"the watcher did not start within {VERDICT_TIMEOUT_S:.0f} s"
                    )
                return
            while not self._stop.is_set():
                victim = self._spawn()
                self._noticed.clear()
                with self._lock:
                    self._victim = victim
                if self._stop.wait(random.uniform(*GAP_S)):
                    break
                killed = time.time()
                victim.kill()
                while not self._noticed.wait(0.5):
                    if self._stop.is_set():
                        return
                value = {
                    "node": 0,
                    "rank": rank,
                    "exitcode": -int(signal.SIGKILL),
                    "time": time.time(),
                    "attempt": 1,
                    "slot": 0,
                }
                self._kv.put(keys.exit_key(0, rank), keys.encode(value))
                detected = self._wait_for(f"{DETECTED_PREFIX}{rank}")
                if detected is None:
                    if self._stop.is_set():
                        return  # stopped while it waited: no verdict was missed
                    raise RuntimeError(
                        f"the watcher found no exit record within {VERDICT_TIMEOUT_S:.0f} s"
                    )
                with self._lock:
                    self._latencies.append(detected - killed)
                self._kv.delete(keys.exit_key(0, rank))
                self._reap(kill=False)
                rank += 1
        except BaseException as error:  # reported by the caller (``error``), never silent
            self.error = error

    def _wait_for(self, key: str) -> float | None:
        """The time the watcher wrote under ``key``; None after ``VERDICT_TIMEOUT_S`` or once
        the probe is stopped."""
        deadline = time.monotonic() + VERDICT_TIMEOUT_S
        cursor, _ = self._kv.watch([key], None, 0.0)
        while time.monotonic() < deadline and not self._stop.is_set():
            raw = self._kv.get(key)
            if raw is not None:
                return float(raw.decode())
            cursor, _ = self._kv.watch([key], cursor, 0.5)
        return None


def watch(url: str, parent: int | None = None) -> None:
    """The root's side: wait on the store's watch, poll the detector, read what the root
    matches an exit against, then say when each exit was found (``DETECTED_PREFIX``). Ends
    once ``parent`` is gone or the store is (it ends with the probe's process)."""
    from real.agent import jobkeys
    from real.agent.root import POLL_S, WATCHED
    from real.coord.connect import connect_kv
    from real.coord.detector import FailureDetector

    kv = connect_kv(url)
    detector = FailureDetector(kv, lease_timeout_s=3600.0, poll_s=POLL_S)
    try:
        cursor, _ = kv.watch(WATCHED, None, 0.0)
        kv.put(READY_KEY, repr(time.time()).encode())
        while parent is None or os.getppid() == parent:
            cursor, _ = kv.watch(WATCHED, cursor, POLL_S)
            for detection in detector.poll():
                # ``RootAgent._match``: the injected failures, less those handled.
                jobkeys.read_prefix(kv, jobkeys.HANDLED_PREFIX)
                jobkeys.read_prefix(kv, jobkeys.FAILURES_PREFIX)
                kv.put(f"{DETECTED_PREFIX}{detection.rank}", repr(time.time()).encode())
    except KVError:
        return  # the store ended: so did the probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--watch", metavar="URL", required=True, help="the store to watch")
    parser.add_argument("--parent", type=int, help="end once this process is gone")
    args = parser.parse_args(argv)
    watch(args.watch, args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
