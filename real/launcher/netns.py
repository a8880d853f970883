"""``netns`` mode: every node its own network namespace and address, behind a bridge.

Layout (root, Linux; every name carries the job's short id, so runs never collide)::

    root namespace:  bridge gk<id>  10.<a>.<b>.1/24   (the launcher reaches everything here)
    gk<id>-ctl:      the coordination store (embedded TCPStore process, or etcd) 10.<a>.<b>.2
    gk<id>-st:       the persistent storage, an S3 endpoint (rclone serve s3) 10.<a>.<b>.3,
                     when rclone and s3fs are installed (else a folder in the run directory)
    gk<id>-n<node>:  node <node>'s agent, store and trainers, 10.<a>.<b>.<10 + node>

Each namespace is joined to the bridge by a veth pair. The node links carry token-bucket
limits (``tc qdisc ... tbf``) at ``cluster.network_bandwidth_gbit_s`` in both directions (the
node side shapes what it sends, the bridge side what it receives); the storage link is limited
to ``cluster.storage.bandwidth_gbit_s``. netem is absent on our machines, so latency is not
emulated. A hardware failure also takes the node's link down; a network partition takes only
the link down (the processes live on, unreachable, until the launcher fences them once the
root has replaced the node). Teardown deletes the namespaces (their veths go with them) and
the bridge, after the processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from real.launcher.cluster import LocalCluster
from real.runtime.processes import stop_process

log = logging.getLogger(__name__)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; CalledProcessError names the command and its stderr."""
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True)


def netns_available() -> str | None:
    """None when netns mode can run here, else why not."""
    if os.geteuid() != 0:
        return "netns mode needs root"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "netns mode needs iproute2 (ip, tc)"
    probe = f"gkprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as error:
        return f"cannot create network namespaces: {error}"
    ip("netns", "del", probe, check=False)
    return None


OWNERS = Path("/run/gemini-ckpt/netns")
"""One file per emulated cluster's network set-up, named by its bridge, holding its owner's
PID and start time: a set-up whose owner is gone (killed outright, so it could not tear down)
is removed by the next netns cluster to start (``sweep_orphans``)."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat, field 22): with the
    PID it names one process, whatever later process reuses the PID; None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(record: Path) -> bool:
    try:
        pid, started = record.read_text().split()
        return _start_time(int(pid)) == started
    except (OSError, ValueError):
        return False


def sweep_orphans(owners: Path = OWNERS) -> list[str]:
    """Remove the network set-ups (namespaces, their veth pairs, the bridge and its route,
    their /etc/netns folders) of emulated clusters whose owner process is gone; the bridges
    removed. Only set-ups recorded in ``owners`` are touched: ours."""
    if not owners.is_dir():
        return []
    listed = ip("netns", "list", check=False).stdout.split()
    removed = []
    for record in sorted(owners.iterdir()):
        if _owner_alive(record):
            continue
        bridge = record.name
        for namespace in [n for n in listed if n.startswith(f"{bridge}-")]:
            ip("netns", "del", namespace, check=False)  # its veth pairs go with it
            shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)
        ip("link", "del", bridge, check=False)  # its route goes with it
        record.unlink(missing_ok=True)
        removed.append(bridge)
    if removed:
        log.warning(
            "removed the network set-up of %d emulated cluster(s) whose owner was killed "
            "before it could tear down: %s",
            len(removed),
            ", ".join(removed),
        )
    return removed


def storage_secret(token: str) -> str:
    """The S3 endpoint's secret key: derived from the job's token, never a part of it."""
    return hmac.new(token.encode(), b"gemini-s3-secret", hashlib.sha256).hexdigest()[:32]


def rclone_env(key: str, secret: str, config: Path) -> dict[str, str]:
    """``rclone serve s3``'s environment: the S3 credentials in their ``RCLONE_<FLAG>`` form of
    ``--auth-key`` (CSV-quoted), never on the command line where ps would show them; its config
    file ``config``, which it never writes (it needs none; without it rclone made
    ``~/.config/rclone`` in the user's home)."""
    return {**os.environ, "RCLONE_AUTH_KEY": f'"{key},{secret}"', "RCLONE_CONFIG": str(config)}


def rclone_command(rclone: str, address: str, folder: Path) -> list[str]:
    """``rclone serve s3`` on ``address:9000`` for ``folder``; the credentials are not in it
    (``RCLONE_AUTH_KEY`` in its environment)."""
    return [rclone, "serve", "s3", "--addr", f"{address}:9000", str(folder)]


class NetnsCluster(LocalCluster):
    """``LocalCluster`` whose nodes, store and storage live in their own namespaces."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        short = self.job.split("-")[-1][:5]
        self.short = short
        rng = random.Random(short)
        self.subnet = f"10.{rng.randrange(100, 250)}.{rng.randrange(0, 250)}"
        self.bridge = f"gk{short}"
        self.namespaces: list[str] = []
        self.links: dict[str, str] = {}  # namespace -> its bridge-side veth
        self.storage_process: subprocess.Popen[bytes] | None = None
        self.kv_process: subprocess.Popen[bytes] | None = None
        self.storage_overrides: tuple[str, ...] = ()
        self.storage_env: dict[str, str] = {}

    # -- network ----------------------------------------------------------------------------

    def _namespace(self, name: str, host_index: int, rate_gbit_s: float | None) -> str:
        """Create namespace ``gk<id>-<name>`` joined to the bridge; return its address."""
        namespace = f"gk{self.short}-{name}"
        outside, inside = f"g{self.short}{name}"[:15], f"i{self.short}{name}"[:15]
        ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        # No name server is reachable from our namespaces, and TCPStore resolves names
        # (getnameinfo) before connecting: a resolver that fails at once instead of timing out
        # (``ip netns exec`` mounts /etc/netns/<ns>/* over /etc/*).
        etc = Path("/etc/netns") / namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self.links[namespace] = outside
        ip("link", "set", inside, "netns", namespace)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        address = f"{self.subnet}.{host_index}"
        ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inside)
        ip("-n", namespace, "link", "set", inside, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "route", "add", "default", "via", f"{self.subnet}.1")
        if rate_gbit_s is not None:
            rate = f"{max(1, int(rate_gbit_s * 1000))}mbit"
            burst = f"{max(64, int(rate_gbit_s * 1e9 / 8 / 250 / 1024))}kb"  # ~4 ms of traffic
            for device, where in ((inside, ["-n", namespace]), (outside, [])):
                subprocess.run(
                    ["tc", *where, "qdisc", "add", "dev", device, "root", "tbf", "rate", rate,
                     "burst", burst, "latency", "50ms"],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
        return address

    def link_down(self, node_id: int) -> None:
        outside = self.links.get(f"gk{self.short}-n{node_id}")
        if outside is not None:
            ip("link", "set", outside, "down", check=False)

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        sweep_orphans()
        OWNERS.mkdir(parents=True, exist_ok=True)
        (OWNERS / self.bridge).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        super().start()

    def _start_kv(self) -> str:
        address = self._namespace("ctl", 2, None)
        if self.scenario.real.store == "etcd":
            client, peer = f"http://{address}:2379", f"http://{address}:2380"
            data = self.run_dir / "etcd-data"
            command = [
                "etcd", "--name=gemini", f"--data-dir={data}",
                f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=gemini={peer}", "--log-level=warn",
            ]  # fmt: skip
            self.kv_process = self._popen_in(f"gk{self.short}-ctl", command, "etcd")
            self._wait_kv(f"etcd://{address}:2379")
            # Reachable from the host through the run's bridge: no client without the job's
            # secret (the user's password is derived from it, as in local mode).
            from real.coord.etcd_server import enable_auth

            enable_auth(client, self.token)
            url = f"etcd://gemini@{address}:2379"
        else:
            command = [
                sys.executable, "-m", "real.coord.kvserver", f"--host={address}", "--port=29500",
                f"--parent-pid={os.getpid()}",
            ]  # fmt: skip
            self.kv_process = self._popen_in(f"gk{self.short}-ctl", command, "kvserver")
            url = f"tcpstore://{address}:29500"
            self._wait_kv(url)
        self._start_storage()
        return f"{url}/{self.job}"

    def _wait_kv(self, url: str, timeout_s: float = 60.0) -> None:
        from real.coord.connect import connect_kv
        from shared.errors import KVError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                connect_kv(url, timeout_s=2.0).close()
                return
            except (KVError, OSError):
                if time.monotonic() > deadline or (
                    self.kv_process is not None and self.kv_process.poll() is not None
                ):
                    raise
                time.sleep(0.2)

    def _start_storage(self) -> None:
        """rclone serve s3 in the storage namespace, when rclone and s3fs are installed."""
        rclone = shutil.which("rclone") or shutil.which(
            "rclone", path=str(Path(sys.executable).parent)
        )
        try:
            import s3fs  # noqa: F401
        except ImportError:
            rclone = None
        if rclone is None or self.scenario.cluster.storage.url:
            return
        address = self._namespace("st", 3, self.scenario.cluster.storage.bandwidth_gbit_s)
        folder = self.run_dir / "s3"
        (folder / "gemini").mkdir(parents=True, exist_ok=True)
        key, secret = f"k{self.short}", storage_secret(self.token)
        self.storage_process = self.spawn(
            ["ip", "netns", "exec", f"gk{self.short}-st", *rclone_command(rclone, address, folder)],
            "rclone",
            rclone_env(key, secret, self.run_dir / "logs" / "rclone.conf"),
        )
        self.storage_overrides = (f"cluster.storage.url=s3://gemini/{self.job}",)
        self.storage_env = {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": f"http://{address}:9000",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        }

    def _popen_in(self, namespace: str, command: list[str], name: str) -> subprocess.Popen[bytes]:
        return self.spawn(["ip", "netns", "exec", namespace, *command], name)

    def start_agent(self, node_id: int, slot: int | None) -> None:
        namespace = f"gk{self.short}-n{node_id}"
        address = self._namespace(
            f"n{node_id}", 10 + node_id, self.scenario.cluster.network_bandwidth_gbit_s
        )
        command = [*self.agent_command(node_id, slot), "--host", address]
        for override in self.storage_overrides:
            command += ["--set", override]
        self.agents[node_id] = self.spawn(
            ["ip", "netns", "exec", namespace, *command],
            f"agent-{node_id}",
            # Gloo picks its interface from the host name, which resolves to loopback here.
            {
                **self.agent_env(),
                **self.storage_env,
                "GLOO_SOCKET_IFNAME": f"i{self.short}n{node_id}"[:15],
            },
        )
        self.slots[node_id] = slot

    # -- failures ---------------------------------------------------------------------------

    def kill_nodes(
        self, node_ids: Sequence[int], signalled: Callable[[], None] | None = None
    ) -> None:
        for node_id in node_ids:  # every link first: no packet leaves a lost node
            self.link_down(node_id)
        super().kill_nodes(node_ids, signalled)

    def partition_node(self, node_id: int) -> None:
        """The node's link goes down; its processes live on until fenced."""
        self.link_down(node_id)
        self.frozen.add(node_id)

    def teardown(self, grace_s: float = 10.0) -> None:
        try:
            super().teardown(grace_s)
        finally:
            for process in (self.storage_process, self.kv_process):
                if process is not None:
                    stop_process(process, 5.0)
            for outside in self.links.values():
                ip("link", "del", outside, check=False)  # the pair goes with it
            self.links.clear()
            for namespace in reversed(self.namespaces):
                ip("netns", "del", namespace, check=False)
                shutil.rmtree(Path("/etc/netns") / namespace, ignore_errors=True)
            self.namespaces.clear()
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("link", "del", self.bridge, check=False)
            (OWNERS / self.bridge).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the folders go once no set-up is left
                OWNERS.rmdir()
                OWNERS.parent.rmdir()
