"""The cluster recipe of docs/cluster.md, run on one machine, with no launcher.

Every process is started the way a real cluster starts it: the key-value store
(``python -m real.coord.kvserver``), one ``gemini-ckpt agent --slot i`` per node and two
``gemini-ckpt agent --standby``, all with the job's secret in ``GEMINI_TOKEN`` and nothing else
in common but the scenario, whose ``training.entrypoint`` is the user's own script
(``examples/ddp_train.py``, which checkpoints with ``from gemini_ckpt import Checkpointer``).
Failures come from outside and are recorded nowhere (no ``failures/<i>`` key, no injector):
first a trainer is SIGKILLed, later a whole node (its agent and store, its trainers and spares,
its ``/dev/shm`` slot files). The proof is state: the script's final weights equal, tensor for
tensor and bit for bit, those of a failure-free torchrun run of the same script. The lost node's
place goes to a standby agent; a client without the job's secret is refused by the running
key-value store and node stores; nothing is left behind.

The same run in ``netns`` mode (root only, ``-m netns``): the key-value store and every node
in a network namespace of their own behind a bridge the test creates, each agent on its own
address (``--host``); a lost node also loses its link.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from real.agent import jobkeys
from real.coord import keys
from real.coord.connect import connect_kv
from real.coord.kv import KeyValueStore
from real.engine.client import StoreClient
from real.launcher.netns import ip, netns_available
from shared.errors import KVError, ProtocolError
from shared.summary import read_summary

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ddp_train.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
NODES, STANDBY = 2, 2
# Standby agents take ids the root never hands out itself (it numbers nodes it orders from
# scratch from N up), as docs/cluster.md advises.
STANDBY_IDS = [1000 + i for i in range(STANDBY)]
# The example's steps take milliseconds: enough iterations that both failures strike while it
# trains (each is triggered by polling the trainers' events, then needs a recovery).
ITERATIONS = 400
CRASH_AFTER, NODE_LOSS_AFTER = 40, 30  # iterations before each failure (the second: resumed)
DEADLINE_S = 420.0

pytestmark = pytest.mark.timeout(600)


def scenario_file(folder: Path, out: Path) -> Path:
    document = {
        "name": "cluster-recipe",
        "targets": ["real"],
        "seed": 0,
        "cluster": {
            "nodes": NODES,
            "accelerators_per_node": 1,
            "standby_nodes": STANDBY,
            "replacement_s": 0.2,
        },
        "training": {
            "iterations": ITERATIONS,
            "entrypoint": [str(EXAMPLE), f"--iterations={ITERATIONS}", f"--out={out}"],
        },
        "checkpoint": {"strategy": "gemini", "replicas": 2, "placement": "group"},
        "detection": {"heartbeat_interval_s": 0.25, "lease_timeout_s": 3.0},
    }
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def poll(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """``condition()``'s first true value, polled every 20 ms; fails the test on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def leader(kv: KeyValueStore) -> int | None:
    """The node id of the root agent, or None before the first election."""
    try:
        return keys.decode(kv.get(keys.LEADER_KEY) or b"{}").get("node")
    except KVError:
        return None


def read_events(folder: Path, pattern: str) -> list[dict[str, Any]]:
    events = []
    for path in sorted(folder.glob(pattern)):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line being written
                events.append(json.loads(line))
    return events


@dataclass
class Namespaces:
    """netns mode: one network namespace per machine (the key-value store's and each node's),
    joined to a bridge of the test's own by veth pairs; deleted by :meth:`teardown`."""

    short: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    created: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)  # namespace -> its bridge-side veth

    @property
    def bridge(self) -> str:
        return f"gr{self.short}"

    @property
    def subnet(self) -> str:
        number = int(self.short, 16)
        return f"10.{100 + number % 150}.{(number // 150) % 250}"

    def start(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self, name: str, index: int) -> tuple[str, str, str]:
        """Namespace ``gr<id>-<name>`` at ``<subnet>.<index>``: (namespace, address, device)."""
        namespace = f"{self.bridge}-{name}"
        outside, inside = f"o{self.short}{name}"[:15], f"i{self.short}{name}"[:15]
        ip("netns", "add", namespace)
        self.created.append(namespace)
        # No name server here: a resolver that fails at once (TCPStore resolves names).
        etc = Path("/etc/netns") / namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self.links[namespace] = outside
        ip("link", "set", inside, "netns", namespace)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        address = f"{self.subnet}.{index}"
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inside)
        for device in (inside, "lo"):
            ip("-n", namespace, "link", "set", device, "up")
        ip("-n", namespace, "route", "add", "default", "via", f"{self.subnet}.1")
        return namespace, address, inside

    def link_down(self, namespace: str) -> None:
        ip("link", "set", self.links[namespace], "down", check=False)

    def teardown(self) -> None:
        for outside in self.links.values():
            ip("link", "del", outside, check=False)
        for namespace in reversed(self.created):
            ip("netns", "del", namespace, check=False)
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)
        ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        return [line for line in (names + links).splitlines() if self.short in line]


@dataclass
class Cluster:
    """The processes of one job, each started as an independent process; stopped by PID.
    With ``network``, every machine is a network namespace of its own."""

    folder: Path
    scenario: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    job: str = field(default_factory=lambda: f"recipe-{uuid.uuid4().hex[:8]}")
    kv_server: subprocess.Popen[bytes] | None = None
    kv_url: str = ""
    agents: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    seen_pids: set[int] = field(default_factory=set)
    t0: float = field(default_factory=time.time)  # the run's start, one for every process
    network: Namespaces | None = None
    namespaces: dict[int, str] = field(default_factory=dict)  # node id -> its namespace

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    def env(self) -> dict[str, str]:
        (self.folder / "tmp").mkdir(exist_ok=True)
        return {
            **os.environ,
            "GEMINI_TOKEN": self.token,
            "GEMINI_RUN_T0": repr(self.t0),
            "OMP_NUM_THREADS": "1",
            "TMPDIR": str(self.folder / "tmp"),  # whatever a killed process leaves, stays here
        }

    def machine(self, name: str, index: int) -> tuple[list[str], str, dict[str, str]]:
        """Where a machine's processes run: (command prefix, its address, extra variables)."""
        if self.network is None:
            return [], "127.0.0.1", {}
        namespace, address, device = self.network.add(name, index)
        # Gloo picks its interface from the host name, which resolves to loopback here.
        return ["ip", "netns", "exec", namespace], address, {"GLOO_SOCKET_IFNAME": device}

    def spawn(self, command: list[str], name: str, extra: dict[str, str]) -> Any:
        with open(self.run_dir / "logs" / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                command,
                env={**self.env(), **extra},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # an agent and its node store: one process group
            )

    def start(self) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self.network is not None:
            self.network.start()
        port_file = self.folder / "kv.port"
        prefix, host, extra = self.machine("ctl", 2)
        command = [sys.executable, "-m", "real.coord.kvserver", f"--host={host}"]
        self.kv_server = self.spawn(
            [*prefix, *command, f"--port-file={port_file}"],
            "kv",
            extra,
        )
        port = poll(lambda: port_file.exists() and port_file.read_text().strip(), "the kv port")
        self.kv_url = f"tcpstore://{host}:{port}/{self.job}"
        # The last slot's agent starts alone and becomes the root, so the node lost later (one
        # that does not run the root) is slot 0's: rank 0 then restarts in a fresh process
        # while rank 1 survives in place, the harder case (DDP's wrap broadcasts rank 0's
        # parameters over the survivor's before the restored state is loaded).
        first = NODES - 1
        self.start_agent(first, ["--slot", str(first)], 10 + first)
        kv = self.kv()
        try:
            poll(lambda: leader(kv) == first, f"node {first} to lead")
        finally:
            kv.close()
        for slot in range(NODES - 1):
            self.start_agent(slot, ["--slot", str(slot)], 10 + slot)
        for number, node_id in enumerate(STANDBY_IDS):
            self.start_agent(node_id, ["--standby"], 10 + NODES + number)

    def start_agent(self, node_id: int, place: list[str], index: int) -> None:
        prefix, host, extra = self.machine(f"n{node_id}", index)
        if prefix:
            self.namespaces[node_id] = prefix[-1]
        command = [
            *prefix,
            *(sys.executable, "-m", "gemini_ckpt", "agent", str(self.scenario)),
            *("--kv", self.kv_url, "--node-id", str(node_id), *place, "--host", host),
            *("--run-dir", str(self.run_dir), "--job", self.job),
        ]
        self.agents[node_id] = self.spawn(command, f"agent-{node_id}", extra)

    def kv(self) -> KeyValueStore:
        return connect_kv(self.kv_url, token=self.token)

    def pids(self, node_id: int) -> dict[str, Any]:
        """The agent's ``<run_dir>/pids/<node_id>.json``; every pid seen is remembered."""
        try:
            record = json.loads((self.run_dir / "pids" / f"{node_id}.json").read_text())
        except (OSError, ValueError):
            return {}
        self.seen_pids |= {int(p) for p in record.get("all_trainers", [])}
        self.seen_pids |= {int(p) for p in record.get("trainers", {}).values()}
        self.seen_pids |= {int(record[k]) for k in ("agent", "store") if record.get(k)}
        return dict(record)

    def ours(self, pid: int) -> bool:
        """Whether ``pid`` is alive and one of this job's (its command line or environment
        names the job's folder), so a recycled pid is never signalled."""
        needle = str(self.folder).encode()
        try:
            return needle in Path(f"/proc/{pid}/cmdline").read_bytes() or (
                needle in Path(f"/proc/{pid}/environ").read_bytes()
            )
        except OSError:
            return False

    def kill(self, pid: int) -> None:
        if self.ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def kill_node(self, node_id: int) -> None:
        """The loss of a machine: every process of the node at once, then its memory."""
        record = self.pids(node_id)
        if self.network is not None:
            self.network.link_down(self.namespaces[node_id])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.agents[node_id].pid, signal.SIGKILL)  # the agent and its store
        trainers = {*record.get("trainers", {}).values(), *record.get("spares", [])}
        for pid in sorted({*trainers, *record.get("all_trainers", [])}):
            self.kill(int(pid))
        self.agents[node_id].wait(30)
        for path in Path("/dev/shm").glob(f"{self.job}-{node_id}-*"):
            path.unlink()

    def alive(self) -> list[int]:
        """Every process of the job still running (agents, stores, trainers, spares)."""
        pids = {p.pid for p in self.agents.values() if p.poll() is None} | self.seen_pids
        return sorted(pid for pid in pids if self.ours(pid))

    def shm(self) -> list[str]:
        return sorted(p.name for p in Path("/dev/shm").glob(f"{self.job}-*"))

    def stop(self) -> None:
        """Teardown, by PID: SIGTERM the agents (they stop their trainers and stores), then
        SIGKILL whatever is left, then the key-value store; remove the job's slot files."""
        for node_id in list(self.agents):
            self.pids(node_id)
        for process in self.agents.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.agents.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
        for process in self.agents.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        for pid in self.alive():
            self.kill(pid)
        if self.kv_server is not None:
            self.kv_server.terminate()
            try:
                self.kv_server.wait(10)
            except subprocess.TimeoutExpired:
                self.kv_server.kill()
                self.kv_server.wait(10)
        for path in Path("/dev/shm").glob(f"{self.job}-*"):
            with contextlib.suppress(OSError):
                path.unlink()
        if self.network is not None:
            self.network.teardown()


def last_iteration(cluster: Cluster) -> int:
    ends = read_events(cluster.run_dir / "events", "trainer-rank*.jsonl")
    return max((e["iteration"] for e in ends if e["kind"] == "iteration_end"), default=0)


def attempt(kv: KeyValueStore) -> dict[str, Any]:
    return jobkeys.read_json(kv, jobkeys.ATTEMPT_KEY) or {}


def running(kv: KeyValueStore, number: int) -> Callable[[], bool]:
    def check() -> bool:
        record = jobkeys.read_json(kv, jobkeys.ATTEMPT_KEY) or {}
        return record.get("attempt") == number and record.get("state") == "running"

    return check


def reference_run(folder: Path) -> Path:
    """The same script, failure-free, under plain torchrun (two ranks, as in the job)."""
    out = folder / "reference"
    runtime = folder / "runtime"
    runtime.mkdir()
    scratch = folder / "tmp"  # torchrun's own torchelastic_* log folders
    scratch.mkdir()
    completed = subprocess.run(
        [
            *(str(TORCHRUN), "--standalone", "--nnodes=1", "--nproc-per-node=2"),
            *(str(EXAMPLE), f"--iterations={ITERATIONS}", f"--out={out}"),
        ],
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "GEMINI_RUNTIME_DIR": str(runtime),
            "TMPDIR": str(scratch),
        },
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out / "final.pt"


@dataclass
class Outcome:
    """What the recipe run showed, for the tests below."""

    cluster: Cluster
    reference: Path
    weights: Path
    crashed: dict[str, Any] = field(default_factory=dict)
    lost: dict[str, Any] = field(default_factory=dict)
    auth: dict[str, Any] = field(default_factory=dict)
    exit_codes: dict[int, int | None] = field(default_factory=dict)
    alive_after: list[int] = field(default_factory=list)
    shm_after: list[str] = field(default_factory=list)


def check_auth(cluster: Cluster, kv: KeyValueStore, found: dict[str, Any]) -> None:
    """A client with the wrong secret, against the running job's stores (the refusal itself is
    tested in depth by test_coord_auth.py and test_engine_store.py)."""
    wrong = secrets.token_hex(16)
    registration = jobkeys.read_json(kv, f"{jobkeys.STORES_PREFIX}0") or {}
    address = str(registration["address"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GEMINI_TOKEN", wrong)
        try:
            with connect_kv(cluster.kv_url) as stranger:  # the handshake refuses it
                stranger.put("stranger", b"x")
                found["kv"] = "served"
        except KVError as error:
            found["kv"] = f"refused: {error}"
    try:
        StoreClient(0, address, wrong, 10.0).call("ping")
        found["store"] = "served"
    except (ProtocolError, ConnectionError) as error:
        found["store"] = f"refused: {error}"
    # The same requests with the job's secret are served (so the refusals are the secret's).
    with connect_kv(cluster.kv_url, token=cluster.token) as member:
        found["kv_with_token"] = member.get(jobkeys.ATTEMPT_KEY)
        found["stranger_key"] = member.get("stranger")
    client = StoreClient(0, address, cluster.token, 10.0)
    found["store_with_token"] = client.call("ping").get("node")
    client.close()


@pytest.fixture(scope="module", params=["local", pytest.param("netns", marks=pytest.mark.netns)])
def recipe(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    """The run, on loopback (``local``) or with every machine in a network namespace of its
    own (``netns``: root only)."""
    network = None
    if request.param == "netns":
        why = netns_available()
        if why is not None:
            pytest.skip(why)
        network = Namespaces()
    folder = tmp_path_factory.mktemp(f"recipe-{request.param}")
    reference = reference_run(folder)
    weights = folder / "weights"
    cluster = Cluster(folder, scenario_file(folder, weights), network=network)
    outcome = Outcome(cluster, reference, weights / "final.pt")
    try:
        cluster.start()
        kv = cluster.kv()
        poll(running(kv, 1), "attempt 1")
        check_auth(cluster, kv, outcome.auth)

        # 1. A trainer dies (SIGKILL from outside): its node's warm spare takes the rank.
        poll(lambda: last_iteration(cluster) >= CRASH_AFTER, f"iteration {CRASH_AFTER}")
        before = {n: cluster.pids(n) for n in range(NODES)}
        crashed = int(before[1]["trainers"]["1"])
        cluster.kill(crashed)
        outcome.crashed = {"pid": crashed, "before": before, "at": last_iteration(cluster)}
        poll(running(kv, 2), "attempt 2")
        poll(
            lambda: all(cluster.pids(n).get("attempt") == 2 for n in range(NODES)),
            "both nodes in attempt 2",
        )
        outcome.crashed["after"] = {n: cluster.pids(n) for n in range(NODES)}

        # 2. Later, a whole node that does not run the root: agent, store, trainers, spares
        # and slot files, all at once.
        resumed_from = outcome.crashed["at"]
        poll(
            lambda: last_iteration(cluster) >= resumed_from + NODE_LOSS_AFTER,
            "training after the first recovery",
        )
        members = jobkeys.members_of(attempt(kv))
        victim = next(node for node in members.values() if node != leader(kv))
        outcome.lost = {"node": victim, "slot": next(s for s, n in members.items() if n == victim)}
        cluster.kill_node(victim)
        poll(running(kv, 3), "attempt 3")
        outcome.lost["members"] = jobkeys.members_of(attempt(kv))

        # The job ends by itself: every agent exits once the attempt record is finished.
        poll(
            lambda: all(p.poll() is not None for p in cluster.agents.values()),
            "every agent to exit",
        )
        outcome.exit_codes = {n: p.returncode for n, p in cluster.agents.items()}
        outcome.lost["record"] = attempt(kv)
        outcome.lost["failure_records"] = kv.get_prefix(jobkeys.FAILURES_PREFIX)
        for node_id in cluster.agents:
            cluster.pids(node_id)
        # Agents stop their trainers and stores before they exit; the last may take a moment.
        deadline = time.monotonic() + 30
        while cluster.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        outcome.alive_after = cluster.alive()
        outcome.shm_after = cluster.shm()
        kv.close()
        yield outcome
    finally:
        cluster.stop()
        assert cluster.alive() == [] and cluster.shm() == []
        assert network is None or network.leftovers() == []


def test_job_finishes_with_the_failure_free_weights(recipe: Outcome) -> None:
    assert recipe.lost["record"]["state"] == "finished", recipe.lost["record"]
    codes = recipe.exit_codes
    assert codes.pop(recipe.lost["node"]) == -signal.SIGKILL
    assert codes == dict.fromkeys(codes, 0), codes
    # Both survivor cases happened: rank 0 kept its process after the crash, rank 1 after the
    # node loss (with rank 0 in a fresh process: see Cluster.start).
    assert recipe.lost["slot"] == 0
    resumed = [
        (e["rank"], e["details"]["in_process"])
        for e in read_events(recipe.cluster.run_dir / "events", "trainer-*.jsonl")
        if e["kind"] == "process_group_ready"
    ]
    assert sorted(resumed) == [(0, False), (0, False), (0, True), (1, False), (1, False), (1, True)]
    reference = torch.load(recipe.reference)
    final = torch.load(recipe.weights)
    assert reference.keys() == final.keys()
    for name, tensor in reference.items():
        assert torch.equal(tensor, final[name]), name


def test_failures_classified_from_observation(recipe: Outcome) -> None:
    """Nothing recorded either failure; the root saw a trainer exit while its node lived
    (software) and a node whose agent was gone (hardware), and nothing else."""
    cluster = recipe.cluster
    assert recipe.lost["failure_records"] == {}
    detected = [
        e
        for e in read_events(cluster.run_dir / "events", "agent-*.jsonl")
        if e["kind"] == "failure_detected"
    ]
    assert [(e["node"], e["details"]["failure_kind"]) for e in detected] == [
        (1, "software"),
        (recipe.lost["slot"], "hardware"),
    ], detected
    assert detected[0]["details"]["detected_by"] == "exit"
    assert all(e["details"]["failure"] >= 1000 for e in detected)  # unscheduled: real ones


def test_the_root_summarizes_the_run(recipe: Outcome) -> None:
    """The job's end leaves its results in the run folder, as ``gemini-ckpt real`` does for its
    emulated cluster: the merged events and the summary, a record per failure the root saw."""
    run_dir = recipe.cluster.run_dir
    summary = read_summary(run_dir / "summary.json")
    assert (summary.source, summary.scenario, summary.strategy) == (
        "real",
        "cluster-recipe",
        "gemini",
    )
    assert summary.extra["mode"] == "cluster"
    assert [(f.kind, f.nodes, f.tier) for f in summary.failures] == [
        ("software", (1,), "local"),
        ("hardware", (recipe.lost["slot"],), "peer"),
    ], summary.failures
    assert all(f.complete and f.downtime_s > 0 for f in summary.failures), summary.failures
    merged = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert sum(e["kind"] == "failure_detected" for e in merged) == 2
    assert not list(run_dir.glob(".*.partial"))


def test_crashed_rank_taken_by_a_warm_spare_survivor_keeps_its_process(recipe: Outcome) -> None:
    before, after = recipe.crashed["before"], recipe.crashed["after"]
    spare = int(after[1]["trainers"]["1"])
    assert spare != recipe.crashed["pid"]
    assert spare in before[1]["spares"]  # started before the crash: warm
    assert after[0]["trainers"]["0"] == before[0]["trainers"]["0"]  # recovered in process


def test_lost_node_replaced_by_a_standby_agent(recipe: Outcome) -> None:
    cluster = recipe.cluster
    slot = recipe.lost["slot"]
    replacement = recipe.lost["members"][slot]
    assert replacement in STANDBY_IDS
    requested = [
        e
        for e in read_events(cluster.run_dir / "events", "agent-*.jsonl")
        if e["kind"] == "replacement_requested"
    ]
    assert [(e["node"], e["details"]["source"], e["details"]["node_id"]) for e in requested] == [
        (slot, "standby", replacement)
    ]
    # The standby agent's own trainer trained the slot's rank in the last attempt.
    record = json.loads((cluster.run_dir / "pids" / f"{replacement}.json").read_text())
    assert [a["attempt"] for a in record["assignments"]] == [3]


def test_a_client_without_the_secret_is_refused(recipe: Outcome) -> None:
    auth = recipe.auth
    assert auth["kv"].startswith("refused"), auth
    assert auth["store"].startswith("refused"), auth
    assert auth["kv_with_token"] is not None and auth["store_with_token"] == 0, auth
    assert auth["stranger_key"] is None, auth


def test_nothing_left_behind(recipe: Outcome) -> None:
    assert recipe.alive_after == [] and recipe.shm_after == []
