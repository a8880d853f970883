"""The trainer processes of one node: long-lived, recovered in process, backed by warm spares.

A node agent keeps, per local rank, one **active** trainer and ``recovery.warm_spares`` **warm
spares** (one by default), all started ahead of need (``python -m real.trainer.main``,
interpreter up, torch imported, an optimizer step taken once), waiting on a socket the agent
created and the trainer inherited
(:mod:`real.trainer.inprocess`). For each attempt of the job the agent **assigns** the attempt to
the
active trainer of every local rank (rank, world, rendezvous, stores, restore plan). When the
root stops an attempt, the agent **aborts** it: survivors leave their failed collectives and
**park**, keeping their model and optimizer for the next attempt. A trainer that died, or has
not parked within ``detection.abort_timeout_s`` (stuck in a collective gloo cannot abort), is
killed and replaced by a spare; a new spare starts in the background once the node's trainers
train again. So a crash or a replacement node pays no process start, and survivors pay no
restart at all.

Environment of each trainer: ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GEMINI_AGENT_FD``,
``GEMINI_TOKEN``, ``GEMINI_RUN_DIR``, ``GEMINI_RUN_T0``, ``OMP_NUM_THREADS=1``; each assignment
adds ``GEMINI_NODE`` and ``GROUP_RANK`` (the node's slot: a standby node learns it only when it
takes a lost node's place), ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` (the rendezvous store slot 0's agent keeps listening) with
``GEMINI_RDZV_PREFIX`` (the attempt's own keys there, so a restart never reads a previous
attempt's stale addresses, pytorch#135712), ``GEMINI_STORE_ADDRS`` and ``GEMINI_RESTORE_PLAN``.
No secret is on a command line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from real.runtime.env import (
    GEMINI_AGENT_FD,
    GEMINI_NODE,
    GEMINI_RDZV_PREFIX,
    GEMINI_RESTORE_PLAN,
    GEMINI_SCENARIO,
    GEMINI_SCENARIO_SET,
    GEMINI_STORE_ADDRS,
)
from real.runtime.processes import last_line, resident_bytes

if TYPE_CHECKING:
    from shared.scenario import Scenario

log = logging.getLogger(__name__)
TRAINER_NICENESS = 5
# A spare started while the job trains warms up (python, torch, model, a step: seconds of CPU)
# below the trainers, so that it takes no CPU they want: on a GPU node the CPU has room for it,
# on the emulated cluster of a few cores it would stretch every iteration for seconds after
# each failure. Once warm (it then only waits) or once it takes a rank, it is raised back to
# TRAINER_NICENESS: only where the agent may raise a priority (CAP_SYS_NICE or RLIMIT_NICE),
# else it warms at TRAINER_NICENESS from the start.
BACKGROUND_NICENESS = 19
SPARE_RAISE_BOUND_S = 30.0
"""How long a standby node that took a slot keeps its spares warming in the background when its
trainers never say that their first attempt there resumed training (``TrainerPool.take_slot``):
a trainer of the user's own that restores without our ``Checkpointer``."""
CAP_SYS_NICE = 23
EXIT_WATCH_S = 0.01
"""How often a node agent looks for a trainer of the running attempt that has begun to exit
(``exiting_status``): half of it, on average, is added to a crash's detection."""
PF_EXITING = 0x4
"""The kernel's flag of a task that has begun to exit (``include/linux/sched.h``)."""


def exiting_status(pid: int) -> int | None:
    """The exit status of process ``pid`` once it has begun to exit with a non-zero one, as
    ``Popen.returncode`` gives it (negative: the signal that killed it); None while it runs,
    when it exits with 0, or when it cannot be read (not Linux, gone, no permission).

    A process that dies first marks itself exiting (``PF_EXITING``) and records its status,
    then tears down its memory and only then closes its files and tells its parent. The
    teardown of a trainer (torch alone maps over 200 MB; a GPU node adds its CUDA context) took
    15-60 ms on our 2-core machine, and its peers' collectives and its agent's ``waitpid``
    learn nothing before its end. The flag is in ``/proc/PID/stat`` at once (``proc(5)``: field
    9, ``flags``; field 52, ``exit_code``, in ``waitpid``'s form). Nothing a library offers
    reports this moment without tracing the process (``PTRACE_EVENT_EXIT``), which would stop
    it on every signal and keep debuggers out, so the agent polls for it. An exit with status
    0 (a trainer that finished) is left to ``waitpid``: it is no failure to hurry for.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count after it.
    fields = text[text.rfind(b")") + 2 :].split()
    try:
        flags, status = int(fields[9 - 3]), int(fields[52 - 3])
    except (IndexError, ValueError):
        return None
    if not flags & PF_EXITING or status == 0:
        return None
    return -(status & 0x7F) if status & 0x7F else status >> 8


def may_raise_priority() -> bool:
    """Whether this process may lower another's niceness to ``TRAINER_NICENESS``."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or soft >= 20 - TRAINER_NICENESS:
        return True
    try:
        status = Path("/proc/self/status").read_text()
        effective = int(status.split("CapEff:")[1].split()[0], 16)
    except (OSError, IndexError, ValueError):
        return False
    return bool(effective >> CAP_SYS_NICE & 1)


def set_autogroup_niceness(pid: int, niceness: int) -> bool:
    """Give the session of ``pid`` (a trainer leads its own) the scheduling weight of
    ``niceness``. With the kernel's autogroups (``/proc/sys/kernel/sched_autogroup_enabled``,
    on by default in many distributions) every session is scheduled as one group, and a
    process's own niceness ranks it only within its session: a trainer in a session of its
    own would otherwise weigh as much as an agent, whatever its niceness. False where the
    kernel has no autogroups, the process is gone, or the change is not allowed."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{niceness}\n")
    except FileNotFoundError:
        return False
    except OSError as error:
        log.warning("could not set trainer %d's session to niceness %d: %s", pid, niceness, error)
        return False
    return True


def set_niceness(pid: int, niceness: int) -> bool:
    """Set every thread of ``pid``, and its session's autogroup, to ``niceness`` (Linux keeps
    a niceness per thread); False if the process is gone or the change is not allowed."""
    set_autogroup_niceness(pid, niceness)
    try:
        tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tasks = [pid]
    try:
        for task in tasks:
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, task, niceness)
    except (PermissionError, ProcessLookupError) as error:
        log.warning("could not set trainer %d to niceness %d: %s", pid, niceness, error)
        return False
    return True


@dataclass(frozen=True)
class TrainerSpec:
    """What every trainer of the job runs (the same on every node).

    Attributes:
        scenario: the scenario file.
        overrides: ``key=value`` overrides of the scenario.
        run_dir: the run's folder.
        checkpointer: gemini or persistent.
        world_size: ranks in the job.
        per_node: ranks per node.
        timeout_s: collective timeout of the trainers, s.
        abort_timeout_s: a trainer that has not parked this long after an abort is killed, s.
        spares: warm spare processes kept per local rank.
        entrypoint: the user's trainer (``training.entrypoint``); None: the built-in one.
    """

    scenario: Path
    overrides: tuple[str, ...]
    run_dir: Path
    checkpointer: str
    world_size: int
    per_node: int
    timeout_s: float = 120.0
    abort_timeout_s: float = 2.0
    spares: int = 1
    entrypoint: tuple[str, ...] | None = None

    @classmethod
    def of_scenario(
        cls, path: Path, overrides: Sequence[str], parsed: Scenario, run_dir: Path
    ) -> TrainerSpec:
        """The trainers of the scenario at ``path`` (with ``overrides``; ``parsed``: it
        loaded) for a run in ``run_dir``."""
        return cls(
            scenario=path.resolve(),
            overrides=tuple(overrides),
            run_dir=run_dir.resolve(),
            checkpointer=parsed.checkpoint.strategy,
            world_size=parsed.cluster.ranks,
            per_node=parsed.cluster.accelerators_per_node,
            abort_timeout_s=parsed.detection.abort_timeout_s,
            spares=parsed.recovery.warm_spares,
            timeout_s=parsed.detection.collective_timeout_s,
            entrypoint=(
                None if parsed.training.entrypoint is None else tuple(parsed.training.entrypoint)
            ),
        )

    def command(self, niceness: int = TRAINER_NICENESS) -> list[str]:
        # Below the agents and stores: a node's heartbeat, probe answers and replica traffic
        # must not starve while its trainers import torch or train.
        nice = ["nice", "-n", str(niceness)]
        if self.entrypoint is not None:
            program = list(self.entrypoint)
            if program[0].endswith(".py"):
                program = [sys.executable, *program]
            return [*nice, *program]
        arguments = [
            *nice,
            sys.executable,
            "-m",
            "real.trainer.main",
            str(self.scenario),
            "--out",
            str(self.run_dir),
            "--checkpointer",
            self.checkpointer,
            "--timeout-s",
            str(self.timeout_s),
        ]
        for override in self.overrides:
            arguments += ["--set", override]
        return arguments


class Worker:
    """One trainer process and the agent's end of its socket.

    States (its last message): ``starting``, ``ready`` (warm, unassigned), ``joined`` (in the
    process group of ``attempt``), ``failed``/``parked`` (left a failed attempt), ``done``
    (finished ``attempt``), ``retired``; whether it still runs is its exit code's business.
    """

    def __init__(
        self,
        spec: TrainerSpec,
        name: str,
        local_rank: int,
        env: Mapping[str, str],
        on_change: Callable[[], None] | None = None,
        background: bool = False,
    ):
        self.local_rank = local_rank
        # Warming up below the trainers until warm or needed (BACKGROUND_NICENESS).
        self.background = background
        self._on_change = on_change
        parent, child = socket.socketpair()
        self._sock = parent
        self._lock = threading.Condition()
        self.state = "starting"
        self.attempt = 0  # the attempt this worker was last assigned
        self.reported: int | None = None  # the attempt its last joined/parked/done names
        self.resumed: int | None = None  # the last attempt it said it trains in (restored)
        self.error: str | None = None
        # Its exit status once it has begun to exit (``watch_exit``), before it is reaped.
        self.exiting: int | None = None
        self.started_at = time.time()
        self.ready_at: float | None = None
        logs = spec.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"trainer-{name}-l{local_rank}-{time.time_ns()}.log"
        worker_env = {
            **os.environ,
            **env,
            # The job's scenario, for the public Checkpointer in a user's trainer.
            GEMINI_SCENARIO: str(spec.scenario),
            GEMINI_SCENARIO_SET: "\n".join(spec.overrides),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(spec.per_node),
            GEMINI_AGENT_FD: str(child.fileno()),
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONFAULTHANDLER": "1",  # a crash in native code leaves its stack in the log
        }
        niceness = BACKGROUND_NICENESS if background else TRAINER_NICENESS
        with open(self.log_path, "ab") as output:
            self.proc = subprocess.Popen(
                spec.command(niceness),
                env=worker_env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=(child.fileno(),),
                start_new_session=True,  # its own process group: killed with its children
            )
        child.close()
        set_autogroup_niceness(self.pid, niceness)  # its own session: see there
        self._reader = threading.Thread(target=self._read, name=f"worker-{self.pid}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def _read(self) -> None:
        buffer = b""
        with contextlib.suppress(OSError, ValueError):
            while data := self._sock.recv(65536):
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._handle(json.loads(line))
        # The process ended (its socket closed as it exited): reap it, so that its exit code
        # is there when the waiters and the agent look (bounded: a process that closed the
        # socket and lives on is seen by the agent's next look instead).
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1.0)
        with self._lock:
            self._lock.notify_all()
        if self._on_change is not None:
            self._on_change()

    def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        with self._lock:
            if op == "ready":  # at the trainers' priority before anyone sees it ready
                self.foreground()
                self.state, self.ready_at = "ready", time.time()
            elif op in ("joined", "failed", "parked", "done", "retired"):
                self.state, self.reported = op, int(message["attempt"])
                self.error = message.get("error")
            elif op == "resumed":  # its restore is over: it trains (``report_resumed``)
                self.resumed = int(message["attempt"])
            self._lock.notify_all()
        if self._on_change is not None:
            self._on_change()

    def foreground(self) -> None:
        """Raise a spare warming up in the background to the trainers' priority."""
        if self.background:
            self.background = False
            set_niceness(self.pid, TRAINER_NICENESS)

    def send(self, op: str, **fields: Any) -> bool:
        line = json.dumps({"op": op, **fields}, separators=(",", ":")).encode() + b"\n"
        try:
            self._sock.sendall(line)
            return True
        except OSError:
            return False

    def assign(self, attempt: int, env: Mapping[str, str]) -> None:
        with self._lock:
            self.attempt = attempt
        self.send("assign", attempt=attempt, env=dict(env))

    def exitcode(self) -> int | None:
        """Its exit status once it ended or began to exit with a failure; else None."""
        code = self.proc.poll()
        return code if code is not None else self.exiting

    def watch_exit(self) -> bool:
        """Look whether the process has begun to exit with a failure (``exiting_status``); if
        so, record its status and tell the waiters and the agent at once. True if this call
        found it."""
        if self.exiting is not None or self.proc.returncode is not None:
            return False
        status = exiting_status(self.pid)
        if status is None:
            return False
        with self._lock:
            self.exiting = status
            self._lock.notify_all()
        if self._on_change is not None:
            self._on_change()
        return True

    def settled(self, attempt: int) -> bool:
        """Whether this worker has left ``attempt`` (parked, done, never joined, or dead)."""
        with self._lock:
            if self.exitcode() is not None:
                return True
            if self.attempt != attempt:
                return True
            return self.reported == attempt and self.state in ("parked", "done", "retired")

    def wait_until(self, predicate: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.exitcode() is not None:
                    return bool(predicate())
                # Every message and the process's end notify; the slice bounds a missed one.
                self._lock.wait(min(remaining, 0.25))
            return True

    def rss_bytes(self) -> int | None:
        """Resident memory of the process (Linux: VmRSS, the sum of its parts), or None."""
        held = resident_bytes(self.pid)
        return None if held is None else sum(held.values())

    def dump_stacks(self) -> None:
        """Ask the trainer to write every thread's stack to its log (before it is killed)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGUSR1)
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the trainer and its children; reap it (one already exiting: in the
        background, so that its teardown does not hold up the recovery)."""
        kill_pids([self.pid])
        if self.exiting is not None and self.proc.returncode is None:
            threading.Thread(target=self._reap, name=f"reap-{self.pid}", daemon=True).start()
        else:
            self._reap()
        with contextlib.suppress(OSError):
            self._sock.close()

    def _reap(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.wait(10.0)

    def stop(self, grace_s: float) -> None:
        """Ask it to finish, wait ``grace_s``, then kill."""
        if self.proc.poll() is None:
            self.send("finish")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        self.kill()


class TrainerPool:
    """The trainers of one node; owned by the node agent.

    Args:
        spec: the job's trainer settings.
        node_id: the node's id (names the trainers' logs).
        env: variables common to every trainer of the node (token, run folder, clock).
        spares: when the spares start: ``"now"``, at the trainers' priority (a node of the
            job); ``"background"``, now but below the trainers' priority, warming from the CPU
            the job leaves idle (a standby node: nothing needs them yet, but a rank it takes
            may fail again soon after its takeover, and a spare started only then warms up
            during training, for more than 8 s beside four ranks on 2 cores); ``"later"``, once
            the first attempt trains (``_top_up_once_resumed``).
        on_change: called (from a reader thread) whenever a trainer reports or ends, so the
            agent acts at once instead of at its next look.

    Attributes:
        slot: the node's place in the job; set before the first assignment (a standby node
            gets it when it takes a lost node's place).
    """

    def __init__(
        self,
        spec: TrainerSpec,
        node_id: int,
        env: Mapping[str, str],
        spares: str = "now",
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if spares not in ("now", "background", "later"):  # before any process starts
            raise ValueError(f"spares must be 'now', 'background' or 'later', got {spares!r}")
        self.spec, self.node_id, self.env = spec, node_id, dict(env)
        self.on_change = on_change
        self.slot = -1
        self._raise_spares_at: float | None = None  # see take_slot
        self._top_up_at: float | None = None  # see _top_up_once_resumed
        self.processes_started = 0  # every trainer process this pool started (pids file)
        self.active: dict[int, Worker] = {}
        self.spares: dict[int, list[Worker]] = {r: [] for r in range(spec.per_node)}
        self.attempt = 0
        self.exitcodes: dict[int, int] = {}  # rank -> exit code, reported once
        self.done: set[int] = set()
        self._env: dict[str, str] = {}
        self._background = may_raise_priority()
        self._closed = threading.Event()
        for local_rank in range(spec.per_node):
            self.active[local_rank] = self._start(local_rank)
        if spares != "later":
            self._top_up(background=spares == "background")
        if Path("/proc/self/stat").exists():  # Linux: else only waitpid tells
            threading.Thread(
                target=self._watch_exits, name=f"exit-watch-{node_id}", daemon=True
            ).start()

    def _watch_exits(self) -> None:
        """Every ``EXIT_WATCH_S``, look whether a trainer of the running attempt has begun to
        exit with a failure, so that the agent reports the crash before the kernel has torn
        the process down (``exiting_status``). Its cost: one read of ``/proc/PID/stat`` per
        active trainer per period."""
        while not self._closed.wait(EXIT_WATCH_S):
            for worker in list(self.active.values()):
                if worker.attempt:
                    worker.watch_exit()

    def _top_up(self, background: bool = True) -> None:
        """Start spares until every local rank has ``spec.spares`` live ones; ``background``:
        while the job trains (below the trainers, where the agent may raise them back)."""
        for local_rank in range(self.spec.per_node):
            alive = [w for w in self.spares[local_rank] if w.exitcode() is None]
            while len(alive) < self.spec.spares:
                alive.append(self._start(local_rank, background=background))
            self.spares[local_rank] = alive

    def _start(self, local_rank: int, background: bool = False) -> Worker:
        background = background and self._background
        self.processes_started += 1
        worker = Worker(
            self.spec,
            f"node{self.node_id}",
            local_rank,
            self.env,
            self.on_change,
            background=background,
        )
        log.info(
            "node %d: trainer for local rank %d started (pid %d%s)",
            self.node_id,
            local_rank,
            worker.pid,
            f", warming up at niceness {BACKGROUND_NICENESS}" if background else "",
        )
        return worker

    def take_slot(self, slot: int) -> None:
        """Give the node its place in the job (a standby node: when it takes a lost node's).

        A standby node's spares warm below the trainers while it waits; from here on they back
        ranks of the job, which may fail again soon after the takeover. A training job leaves
        the background next to no CPU (4 ranks on 2 cores: 1.4 s of CPU in 24 s), so they are
        raised to the trainers' priority, or the next failure of such a rank found its spare
        still importing torch and every rank waited for it (1.3-1.8 s of restart instead of
        0.1-0.2 s in the recovery benchmark). But not before the node's trainers have
        restored and train again (``report_resumed``; at most ``SPARE_RAISE_BOUND_S``): raised
        at the takeover, two such spares took a core of two from the recovery they were not
        part of (a group of two nodes lost, 4 ranks on 2 cores: 0.26 s of CPU in the 0.31 s
        from the restart to the restored state; the restore from storage took 0.21 s, and
        0.14-0.17 s with them held back)."""
        self.slot = slot
        if any(w.background for ws in self.spares.values() for w in ws):
            self._raise_spares_at = time.monotonic() + SPARE_RAISE_BOUND_S

    def _raise_spares_once_resumed(self) -> None:
        """The end of ``take_slot``'s wait: every active trainer resumed in the current
        attempt (or the bound passed, or there is nothing left to raise)."""
        if self._raise_spares_at is None:
            return
        if self._resumed() or time.monotonic() >= self._raise_spares_at:
            self._raise_spares_at = None
            for worker in (w for ws in self.spares.values() for w in ws):
                worker.foreground()

    def _resumed(self) -> bool:
        """Every active trainer said it trains again in the current attempt."""
        return self.attempt > 0 and all(w.resumed == self.attempt for w in self.active.values())

    def _top_up_once_resumed(self) -> None:
        """Start the spares that replace those taken, once this node's trainers train again.

        A spare's start is seconds of CPU (python, torch, the job's modules), and the
        recovery that took a spare runs on the same cores: started at the assignment, the new
        process competes with the ranks that join, rebuild and restore. Held back until they
        train, a crash's downtime in the recovery benchmark went from a median of 0.19 to 0.18
        s and from 0.22 to 0.18 s (restart 0.10 to 0.10 s and 0.12 to 0.09 s) in two runs of
        12 crashes a side (2026-12-05, docs/results.md). So it waits until every active
        trainer says it resumed in the current attempt (``report_resumed``), or
        ``SPARE_RAISE_BOUND_S`` for a trainer that never says (a script without our
        ``Checkpointer``); ``poll`` starts it then. A rank that fails again before that takes
        another warm spare if it has one (``recovery.warm_spares``), else a process started on
        the spot (``_promote``)."""
        bound = time.monotonic() + SPARE_RAISE_BOUND_S
        self._top_up_at = bound if self._top_up_at is None else min(self._top_up_at, bound)
        self._top_up_when_resumed()

    def _top_up_when_resumed(self) -> None:
        if self._top_up_at is None:
            return
        if self._resumed() or time.monotonic() >= self._top_up_at:
            self._top_up_at = None
            self._top_up()

    def rank(self, local_rank: int) -> int:
        return self.slot * self.spec.per_node + local_rank

    def wait_ready(
        self, timeout_s: float, stop: threading.Event | None = None, spares: bool = True
    ) -> bool:
        """Wait until every active trainer (and, with ``spares``, every spare) is warm; False
        on timeout, or within a quarter second of ``stop`` being set (a Ctrl-C while the
        trainers import torch)."""
        deadline = time.monotonic() + timeout_s

        def stopped() -> bool:
            return stop is not None and stop.is_set()

        for worker in self.workers() if spares else list(self.active.values()):
            remaining = max(0.0, deadline - time.monotonic())
            if not worker.wait_until(
                lambda w=worker: w.state != "starting" or stopped(), remaining
            ):
                return False
            if stopped():
                return False
        return True

    def start_failure(self) -> str | None:
        """Why a trainer ended before it was warm (a wrong entrypoint, an import error in the
        script): its local rank, pid, exit status and the last line of its log; None when
        none did."""
        for worker in self.workers():
            code = worker.exitcode()
            if worker.state == "starting" and code is not None:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                return (
                    f"trainer for local rank {worker.local_rank} (pid {worker.pid}) {how} "
                    f"before it was warm; its log {worker.log_path} ends: "
                    f"{last_line(worker.log_path) or '(empty)'}"
                )
        return None

    def workers(self) -> list[Worker]:
        return [*self.active.values(), *(w for ws in self.spares.values() for w in ws)]

    def assign(self, attempt: int, env: Mapping[str, str]) -> dict[int, bool]:
        """Give ``attempt`` to a live trainer per local rank; ``{rank: came from a spare}``."""
        if self.slot < 0:
            raise RuntimeError("an attempt for a node without a slot")
        self.attempt = attempt
        self.done.clear()
        self.exitcodes.clear()
        fresh: dict[int, bool] = {}
        for local_rank in range(self.spec.per_node):
            worker = self.active.get(local_rank)
            fresh[self.rank(local_rank)] = False
            if worker is None or worker.exitcode() is not None:
                self._retire(local_rank)
                worker = self._promote(local_rank)
                fresh[self.rank(local_rank)] = True
            worker.assign(attempt, self._rank_env(local_rank, env))
        self._env = dict(env)
        self._top_up_once_resumed()
        return fresh

    def _rank_env(self, local_rank: int, env: Mapping[str, str]) -> dict[str, str]:
        return {
            **env,
            "RANK": str(self.rank(local_rank)),
            "WORLD_SIZE": str(self.spec.world_size),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(self.spec.per_node),
            "GROUP_RANK": str(self.slot),
            GEMINI_NODE: str(self.slot),
        }

    def _replace_retired(self) -> None:
        """A trainer told to start from scratch after it had trained retires (its objects
        hold the old run's state): a fresh spare takes the same attempt before it is joined."""
        for local_rank, worker in list(self.active.items()):
            if worker.state == "retired" and worker.reported == self.attempt:
                log.info(
                    "node slot %d: rank %d starts from scratch in a fresh process",
                    self.slot,
                    self.rank(local_rank),
                )
                self._retire(local_rank)
                self._promote(local_rank).assign(
                    self.attempt, self._rank_env(local_rank, self._env)
                )
                self._top_up_once_resumed()

    def _promote(self, local_rank: int) -> Worker:
        """A spare of ``local_rank`` becomes active, a warm one first (a cold start if none is
        alive); its replacement starts later (``_top_up_once_resumed``)."""
        spares = [w for w in self.spares[local_rank] if w.exitcode() is None]
        self.spares[local_rank] = spares
        if spares:
            worker = next((w for w in spares if w.state != "starting"), spares[0])
            spares.remove(worker)
            worker.foreground()  # still warming up, maybe: it is on the recovery's path now
            log.info(
                "node slot %d: %s spare (pid %d) takes local rank %d",
                self.slot,
                "warm" if worker.state != "starting" else "warming",
                worker.pid,
                local_rank,
            )
        else:
            log.warning("node slot %d: no warm spare for local rank %d", self.slot, local_rank)
            worker = self._start(local_rank)
        self.active[local_rank] = worker
        return worker

    def _retire(self, local_rank: int) -> None:
        worker = self.active.pop(local_rank, None)
        if worker is not None:
            worker.kill()

    def abort(self, attempt: int) -> list[int]:
        """Make every trainer leave ``attempt``; kill those that do not park in time.

        Returns:
            The ranks whose trainers were killed (stuck) or had died.
        """
        for worker in self.active.values():
            if worker.attempt == attempt and worker.exitcode() is None:
                worker.send("abort", attempt=attempt)
        deadline = time.monotonic() + self.spec.abort_timeout_s
        lost = []
        for local_rank, worker in list(self.active.items()):
            remaining = max(0.0, deadline - time.monotonic())
            if not worker.wait_until(lambda w=worker: w.settled(attempt), remaining):
                worker.dump_stacks()
                log.warning(
                    "node slot %d: trainer rank %d (pid %d) did not leave attempt %d in %.1f s; "
                    "killing it (a spare takes its place)",
                    self.slot,
                    self.rank(local_rank),
                    worker.pid,
                    attempt,
                    self.spec.abort_timeout_s,
                )
                self._retire(local_rank)
                lost.append(self.rank(local_rank))
            elif worker.exitcode() is not None:
                self._retire(local_rank)
                lost.append(self.rank(local_rank))
        return lost

    def poll(self) -> tuple[dict[int, int], list[int]]:
        """What changed since the last call: trainers of the current attempt that exited
        (``{rank: exit code}``, negative for a signal) and ranks that finished it."""
        self._replace_retired()
        self._raise_spares_once_resumed()
        self._top_up_when_resumed()
        exited, finished = {}, []
        for local_rank, worker in self.active.items():
            rank = self.rank(local_rank)
            code = worker.exitcode()
            done = worker.state == "done" and worker.reported == self.attempt
            if code == 0 and done:  # finished its part, then ended (a plain training loop)
                self.exitcodes.setdefault(rank, code)
            elif code is not None and rank not in self.exitcodes and worker.attempt:
                self.exitcodes[rank] = code
                exited[rank] = code
            if (
                (code is None or code == 0)
                and worker.state == "done"
                and worker.reported == self.attempt
                and rank not in self.done
            ):
                self.done.add(rank)
                finished.append(rank)
        return exited, finished

    def parked_after_failure(self) -> dict[int, str]:
        """Trainers of the current attempt that left it on their own (a collective failed):
        ``{rank: error}``; the first sign of a peer's failure."""
        return {
            self.rank(local_rank): worker.error or "collective failed"
            for local_rank, worker in self.active.items()
            if worker.state in ("failed", "parked") and worker.reported == self.attempt
        }

    def pids(self) -> dict[int, int]:
        """``{rank: pid}`` of the active trainers."""
        return {self.rank(r): w.pid for r, w in self.active.items() if w.exitcode() is None}

    def started(self) -> dict[int, tuple[int, float]]:
        """``{rank: (pid, wall time its process started)}`` of the active trainers."""
        return {self.rank(r): (w.pid, w.started_at) for r, w in self.active.items()}

    def spare_pids(self) -> list[int]:
        return [w.pid for ws in self.spares.values() for w in ws if w.exitcode() is None]

    def stop(self, grace_s: float = 5.0) -> None:
        """Finish every trainer and spare (``finish``, grace, then SIGKILL); reap all.

        One still starting (importing torch) holds nothing and cannot read the message yet:
        it is killed at once rather than waited for (a Ctrl-C during a cluster's start)."""
        self._closed.set()
        workers = self.workers()
        for worker in workers:
            if worker.state == "starting":
                worker.kill()
            elif worker.exitcode() is None:
                worker.send("finish")
        deadline = time.monotonic() + grace_s
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            worker.kill()
        self.active.clear()
        self.spares = {r: [] for r in range(self.spec.per_node)}


def trainer_env(record: Mapping[str, Any]) -> dict[str, str]:
    """The variables an attempt record gives every trainer of the attempt."""
    env = {
        "MASTER_ADDR": str(record["master_addr"]),
        "MASTER_PORT": str(record["master_port"]),
        GEMINI_STORE_ADDRS: ",".join(record["stores"]),
    }
    if record.get("rendezvous_prefix"):
        env[GEMINI_RDZV_PREFIX] = str(record["rendezvous_prefix"])
    plan = record.get("plan")
    env[GEMINI_RESTORE_PLAN] = "" if plan is None else json.dumps(plan, separators=(",", ":"))
    return env


def kill_pids(pids: Sequence[int]) -> None:
    """SIGKILL each pid's process group (trainers lead their own), then the pid itself."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
