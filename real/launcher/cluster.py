"""The emulated cluster's processes, owned by the launcher.

``local`` mode: every node is a node agent process (in its own session, so the node's agent and
store form one process group) on loopback, with its own ports; the trainers an agent starts
lead their own sessions and are recorded in ``<run_dir>/pids/<node_id>.json``. The launcher owns
all of it: the coordination store (embedded TCPStore process, or etcd), the agents, and the
replacement agents it starts when the root's cloud operator orders one (``replacements/``).

Failing a node (``kill_node``) is what a hardware failure does: every process of the node dies
at once (SIGKILL: no clean-up runs) and its shared memory goes (the slot files of its store,
named ``<job>-<node_id>-*`` in ``/dev/shm``). ``freeze_node`` emulates a network partition in
``local`` mode: the node's processes are stopped (SIGSTOP), unreachable but not dead, until the
launcher fences them (``kill_node``) once the root has replaced the node.

``teardown`` always runs (success, error, Ctrl-C): SIGTERM to every agent (which stops its
trainers and removes its slot files), a timed wait, SIGKILL to whatever is left (agents' groups
and every trainer ever recorded), then to any trainer of the run still alive until none is
(``end_stray_trainers``: a killed agent's newest spare, or a trainer still tearing down), the
coordination store stopped, and every slot file with the job's prefix removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from real.agent import jobkeys
from real.coord import keys
from real.coord.connect import connect_kv
from real.coord.kv import KeyValueStore
from real.engine.shm import SHM_DIR
from real.runtime.env import (
    GEMINI_AGENT_FD,
    GEMINI_HOLD_DIR,
    GEMINI_RUN_DIR,
    GEMINI_RUN_T0,
    GEMINI_TOKEN,
)
from real.trainer.inject import hold_folder
from shared.scenario import Scenario

log = logging.getLogger(__name__)


class LocalCluster:
    """The processes of one emulated cluster.

    Args:
        scenario: the parsed scenario.
        scenario_path: its file (agents and trainers read it again, with ``overrides``).
        overrides: ``key=value`` scenario overrides.
        run_dir: the run's folder.
        strategy: gemini or persistent.
        t0: the run's start, wall seconds.

    ``resume`` (set before ``start``): the job's first attempt resumes from the persistent
    tier's newest checkpoint (``gemini-ckpt real --resume``); by default the agents start it
    from scratch, whatever a ``cluster.storage.url`` shared with other runs holds.
    """

    resume = False

    def __init__(
        self,
        scenario: Scenario,
        scenario_path: Path,
        overrides: tuple[str, ...],
        run_dir: Path,
        strategy: str,
        t0: float,
    ) -> None:
        self.scenario, self.scenario_path, self.overrides = scenario, scenario_path, overrides
        self.run_dir, self.strategy, self.t0 = run_dir, strategy, t0
        self.token = secrets.token_hex(16)
        self.job = f"gemini-{uuid.uuid4().hex[:8]}"
        self.agents: dict[int, subprocess.Popen[bytes]] = {}
        self.slots: dict[int, int | None] = {}
        self.started_replacements: set[int] = set()
        self.kv_server: Any = None
        self.kv_url = ""
        self.kv: KeyValueStore | None = None
        self.frozen: set[int] = set()

    # -- start ------------------------------------------------------------------------------

    def start(self) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.kv_url = self._start_kv()
        self.kv = connect_kv(self.kv_url)
        cluster = self.scenario.cluster
        # Ids: the job's nodes 0..N-1, the standby agents next, then any node the cluster
        # must start later (the root hands those ids out from here).
        self.kv.put(jobkeys.NEXT_NODE_ID_KEY, str(cluster.nodes + cluster.standby_nodes).encode())
        for slot in range(cluster.nodes):
            self.start_agent(slot, slot)
        for node_id in range(cluster.nodes, cluster.nodes + cluster.standby_nodes):
            self.start_agent(node_id, None)

    def _start_kv(self) -> str:
        if self.scenario.real.store == "etcd":
            from real.coord.etcd_server import EtcdServer

            self.kv_server = EtcdServer(log_path=self.run_dir / "logs" / "etcd.log").start()
        else:
            from real.coord.kvserver import StoreServer

            self.kv_server = StoreServer().start()
        return f"{self.kv_server.url}/{self.job}"

    def agent_command(self, node_id: int, slot: int | None) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "real.agent",
            str(self.scenario_path),
            "--kv",
            self.kv_url,
            "--node-id",
            str(node_id),
            *(["--standby"] if slot is None else ["--slot", str(slot)]),
            "--run-dir",
            str(self.run_dir),
            "--strategy",
            self.strategy,
            "--job",
            self.job,
            "--parent-pid",
            str(os.getpid()),
            "--no-summary",  # summarized by the launcher (real.launcher.run)
            *([] if self.resume else ["--no-resume"]),
        ]
        for override in self.overrides:
            command += ["--set", override]
        return command

    def agent_env(self) -> dict[str, str]:
        return {
            **os.environ,
            GEMINI_TOKEN: self.token,
            GEMINI_RUN_T0: repr(self.t0),
            GEMINI_RUN_DIR: str(self.run_dir),
            GEMINI_HOLD_DIR: str(hold_folder(self.run_dir)),  # the injector's (its _arm)
            "OMP_NUM_THREADS": "1",
        }

    def spawn(
        self, command: list[str], log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` in a session of its own, output appended to logs/<log_name>.log."""
        output = open(self.run_dir / "logs" / f"{log_name}.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            output.close()

    def start_agent(self, node_id: int, slot: int | None) -> None:
        """Start node ``node_id``'s agent in ``slot``, or as a standby agent (None); its own
        session, so one process group."""
        self.agents[node_id] = self.spawn(
            self.agent_command(node_id, slot), f"agent-{node_id}", self.agent_env()
        )
        self.slots[node_id] = slot
        log.info(
            "node %d (%s): agent started, pid %d",
            node_id,
            "standby" if slot is None else f"slot {slot}",
            self.agents[node_id].pid,
        )

    def start_due_replacements(self) -> list[int]:
        """Start the agents the cloud operator ordered whose ``ready_at`` has come."""
        assert self.kv is not None
        started = []
        for key, order in jobkeys.read_prefix(self.kv, jobkeys.REPLACEMENTS_PREFIX).items():
            node_id = int(key)
            if order.get("standby"):  # a live standby agent takes the slot itself
                continue
            if node_id in self.started_replacements or time.time() < float(order["ready_at"]):
                continue
            self.started_replacements.add(node_id)
            self.start_agent(node_id, int(order["slot"]))
            started.append(node_id)
        return started

    # -- state ------------------------------------------------------------------------------

    def attempt(self) -> dict[str, Any] | None:
        assert self.kv is not None
        return jobkeys.read_json(self.kv, jobkeys.ATTEMPT_KEY)

    def members(self) -> dict[int, int]:
        record = self.attempt()
        if record is None:
            return {slot: slot for slot in range(self.scenario.cluster.nodes)}
        return jobkeys.members_of(record)

    def leader(self) -> int | None:
        """The node id of the root agent now."""
        assert self.kv is not None
        raw = self.kv.get(keys.LEADER_KEY)
        return None if raw is None else int(keys.decode(raw)["node"])

    def pids(self, node_id: int) -> dict[str, Any]:
        path = self.run_dir / "pids" / f"{node_id}.json"
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def trainer_pid(self, node_id: int, rank: int) -> int | None:
        pid = self.pids(node_id).get("trainers", {}).get(str(rank))
        return None if pid is None else int(pid)

    # -- failing ----------------------------------------------------------------------------

    def kill_trainer(self, node_id: int, rank: int) -> bool:
        """SIGKILL one trainer (a software failure); False if it was not running."""
        pid = self.trainer_pid(node_id, rank)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def kill_node(self, node_id: int) -> None:
        """A hardware failure: every process of the node at once, then its shared memory."""
        self.kill_nodes([node_id])

    def kill_nodes(
        self, node_ids: Sequence[int], signalled: Callable[[], None] | None = None
    ) -> None:
        """Several nodes lost at once: every process of every one of them is killed before
        any is reaped (an agent takes tens of milliseconds to exit; nodes killed one after
        another would fail that much apart, and the survivors could find the first lost while
        the next still answered), then their shared memory is removed. ``signalled`` is
        called once every process has its SIGKILL, before the reaping."""
        agents = {n: self.agents.get(n) for n in node_ids}
        for node_id, agent in agents.items():
            if agent is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(agent.pid, signal.SIGKILL)  # the agent and its store
            for pid in self._trainer_pids(node_id):
                self._kill_trainer_group(pid, signal.SIGKILL)
        if signalled is not None:
            signalled()
        for node_id, agent in agents.items():
            if agent is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    agent.wait(10.0)
            self.frozen.discard(node_id)
            self.remove_shm(f"{self.job}-{node_id}-")

    def freeze_node(self, node_id: int) -> None:
        """A partition in local mode: the node's processes stop answering (SIGSTOP)."""
        agent = self.agents.get(node_id)
        if agent is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(agent.pid, signal.SIGSTOP)
        for pid in self._trainer_pids(node_id):
            self._kill_trainer_group(pid, signal.SIGSTOP)
        self.frozen.add(node_id)

    def partition_node(self, node_id: int) -> None:
        """A network partition: local mode freezes the node; ``tick`` fences it once replaced."""
        self.freeze_node(node_id)

    def tick(self) -> None:
        """Periodic duties: start due replacements, fence frozen nodes that were replaced."""
        self.start_due_replacements()
        if self.frozen:
            members = set(self.members().values())
            for node_id in list(self.frozen):
                if node_id not in members:
                    log.warning("node %d: replaced; fencing (killing) it", node_id)
                    self.kill_node(node_id)

    def _trainer_pids(self, node_id: int) -> list[int]:
        record = self.pids(node_id)
        return sorted(
            {int(p) for p in record.get("all_trainers", [])}
            | {int(p) for p in record.get("trainers", {}).values()}
        )

    def _kill_trainer_group(self, pid: int, signum: int) -> None:
        """Signal a trainer we started (checked by :func:`trainer_of`, so a recycled pid of
        someone else's process is never touched) and its process group."""
        if trainer_of(pid, self.run_dir):
            _kill_group(pid, signum)

    def remove_shm(self, prefix: str) -> int:
        removed = 0
        for path in SHM_DIR.glob(f"{prefix}*"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        return removed

    # -- teardown ---------------------------------------------------------------------------

    def alive_agents(self) -> list[int]:
        return [n for n, p in self.agents.items() if p.poll() is None]

    def wait_agents(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.alive_agents() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.alive_agents()

    def teardown(self, grace_s: float = 10.0) -> None:
        """Stop everything this cluster started; safe to call more than once."""
        for node_id in list(self.frozen):
            self.kill_node(node_id)
        for agent in self.agents.values():
            if agent.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(agent.pid, signal.SIGTERM)
        self.wait_agents(grace_s)
        for node_id, agent in self.agents.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(agent.pid, signal.SIGKILL)
            for pid in self._trainer_pids(node_id):
                self._kill_trainer_group(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(10.0)
        end_stray_trainers(self.run_dir)
        if self.kv is not None:
            self.kv.close()
            self.kv = None
        if self.kv_server is not None:
            self.kv_server.stop()
            self.kv_server = None
        self.remove_shm(f"{self.job}-")


def trainer_of(pid: int, run_dir: Path) -> bool:
    """Whether process ``pid`` is a trainer of the run in ``run_dir``: the built-in trainer's
    command line runs ``real.trainer.main`` with that folder; a script of the user's
    (``training.entrypoint``), whose command line is its own, was started by an agent with
    that folder in ``GEMINI_RUN_DIR`` and its agent's socket in ``GEMINI_AGENT_FD`` (the
    environment it started with, ``/proc/PID/environ``: readable for our own processes)."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    folder = str(run_dir).encode()
    if folder in arguments and b"real.trainer.main" in arguments:
        return True
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{GEMINI_RUN_DIR}={run_dir}".encode() in environment and any(
        variable.startswith(f"{GEMINI_AGENT_FD}=".encode()) for variable in environment
    )


def stray_trainers(run_dir: Path) -> list[int]:
    """Trainer processes of the run in ``run_dir`` still alive (:func:`trainer_of`). A killed
    agent's spare that it started just before it died (not yet in its pids file) outlives it
    until it notices; one killed by its PID still tears its memory down for tens of
    milliseconds. Neither is the launcher's child (an agent started it), so neither can be
    waited for."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and trainer_of(int(entry.name), run_dir)
    ]


def end_stray_trainers(run_dir: Path, timeout_s: float = 10.0) -> list[int]:
    """SIGKILL :func:`stray_trainers` (each with its process group) until none is left, or
    ``timeout_s``; returns those still alive then (logged), so that a run does not return
    while a process it started still runs."""
    deadline = time.monotonic() + timeout_s
    while left := stray_trainers(run_dir):
        if time.monotonic() >= deadline:
            log.warning("trainers %s of %s did not exit after SIGKILL", left, run_dir)
            return left
        for pid in left:
            _kill_group(pid, signal.SIGKILL)
        time.sleep(0.02)
    return []


def _kill_group(pid: int, signum: int) -> None:
    """Signal a trainer and its process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)
