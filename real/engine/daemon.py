"""The node store as a daemon, for training scripts run by plain torchrun (no gemini-ckpt agent).

Under torchrun a failure restarts every worker process (``--max-restarts``), so the checkpoint
memory of a node cannot live in a worker. The node's first local rank starts a store daemon
(``python -m real.engine.daemon``) in a session of its own; the daemon outlives worker restarts
and ends with the job: it watches torchrun's agent process (the workers' parent) and, once that
is gone, stops its store, which removes its slot files from ``/dev/shm``, and its discovery file.

Finding each other: the daemon writes ``<runtime dir>/gemini-<job>-n<node>.json`` (mode 0600:
it holds the job's secret) with its address; the workers of a node read it, and the job's ranks
agree on one secret and learn every node's store address through the default process group
(one all-gather of fixed-size byte tensors each: no pickle), so nothing depends on torchrun's
rendezvous store keeping old keys (pytorch#135712). The secret travels to the daemon in its
environment, never on a command line.

This is the torchrun counterpart of the node agent's store (``real.engine.process``): same store,
owned by the node rather than by an agent.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from real.engine.store import TOKEN_ENV, NodeStore
from real.runtime.env import GEMINI_RUNTIME_DIR
from real.runtime.processes import pid_alive

log = logging.getLogger(__name__)
START_TIMEOUT_S = 60.0


def runtime_dir() -> Path:
    """Where discovery files live: ``GEMINI_RUNTIME_DIR``, ``XDG_RUNTIME_DIR``, else /tmp."""
    return Path(os.environ.get(GEMINI_RUNTIME_DIR) or os.environ.get("XDG_RUNTIME_DIR") or "/tmp")


def discovery_file(run_id: str, node: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)[:64]
    return runtime_dir() / f"gemini-{safe}-n{node}.json"


def read_discovery(path: Path) -> dict[str, str] | None:
    """The daemon's record if the file exists and its daemon is alive, else None."""
    try:
        record = json.loads(path.read_text())
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {str(k): str(v) for k, v in record.items()}


@dataclass
class NodeStores:
    """Every node's store address (node order) and the job's secret, as this rank sees them.

    ``standalone``: no torchrun (one process started by hand): the daemon watches the script's
    parent, the shell. ``daemon_pid``: this node's daemon, on the node's first local rank (else
    None); ``path``: its discovery file.
    """

    addresses: list[str]
    token: str
    standalone: bool = False
    daemon_pid: int | None = None
    path: Path | None = None


def job_key(*parts: object) -> str:
    """A short digest of what tells this job from another on the same host (the script, the
    run folder): part of the daemon's discovery name (``node_stores``)."""
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()[:12]


def node_stores(node: int, local_rank: int, per_node: int, job: str = "") -> NodeStores:
    """Agree on the job's secret, make sure this node's daemon runs, learn every address.

    The daemon is found by its discovery file, named by the job: torchrun's run id and its
    agent process (the workers' parent, the same across worker restarts), or without torchrun
    the shell (the script's parent: a rerun from it restores from memory), and ``job``
    (``job_key`` of the script and the run folder). torchrun's run id alone is ``none`` for
    every ``torchrun --nproc-per-node N``: a second job on the host took the first one's
    daemon, its secret and its checkpoints, and restored another job's state.

    Collective over the default process group: call on every rank at the same point.

    Raises:
        RuntimeError: the daemon did not start, or serves another secret.
    """
    torchrun_id = os.environ.get("TORCHELASTIC_RUN_ID")
    parent = os.getppid()
    # The short, distinguishing parts first: the name is cut at 64 characters.
    run_id = f"{parent}-{torchrun_id}" if torchrun_id else f"pid{parent}"
    path = discovery_file(f"{job}-{run_id}" if job else run_id, node)
    existing = read_discovery(path)
    # Every rank offers its node daemon's secret if one runs, else a fresh one; the first
    # running daemon's wins (a restart keeps the job's secret), else rank 0's fresh one.
    offers = _all_gather_text(existing["token"] if existing else "")
    fresh = _all_gather_text(secrets.token_hex(16))
    token = next((t for t in offers if t), fresh[0])
    address = ""
    if local_rank == 0:
        if existing is not None and existing["token"] != token:
            raise RuntimeError(
                f"the store daemon of node {node} ({path}) serves another job's secret; stop "
                f"it (pid {existing['pid']}) or give this job another --rdzv-id"
            )
        if existing is None:
            existing = start_daemon(path, node, token, watch_pid=os.getppid())
        address = existing["address"]
    by_node = _all_gather_text(address)[::per_node]
    if not all(by_node):
        raise RuntimeError(f"no store address from some node: {by_node}")
    pid = int(existing["pid"]) if local_rank == 0 and existing is not None else None
    return NodeStores(by_node, token, torchrun_id is None, pid, path)


TEXT_BYTES = 256


def _all_gather_text(text: str) -> list[str]:
    """Every rank's short ASCII ``text``, in rank order, as raw bytes (no pickle)."""
    import torch
    import torch.distributed as dist

    raw = text.encode("ascii")
    if len(raw) > TEXT_BYTES:
        raise ValueError(f"{text[:40]!r}... is longer than {TEXT_BYTES} bytes")
    mine = torch.zeros(TEXT_BYTES, dtype=torch.uint8)
    mine[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return [bytes(t.tolist()).rstrip(b"\0").decode("ascii") for t in everyone]


def start_daemon(path: Path, node: int, token: str, watch_pid: int) -> dict[str, str]:
    """Start the node's store daemon and wait until it serves; its record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a dead daemon's record
    command = [
        sys.executable,
        "-m",
        "real.engine.daemon",
        "--node",
        str(node),
        "--watch-pid",
        str(watch_pid),
        "--file",
        str(path),
    ]
    log_path = path.with_suffix(".log")
    with open(log_path, "ab") as output:
        process = subprocess.Popen(
            command,
            env={**os.environ, TOKEN_ENV: token},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the worker's process group: outlives restarts
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while (record := read_discovery(path)) is None:
        if process.poll() is not None:
            raise RuntimeError(
                f"node {node} store daemon exited with {process.returncode}; see {log_path}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"node {node} store daemon did not serve in {START_TIMEOUT_S} s")
        time.sleep(0.01)
    log.info("node %d: store daemon %s serving on %s", node, record["pid"], record["address"])
    return record


def stop_daemon(path: Path, pid: int, timeout_s: float = 10.0) -> bool:
    """Stop the store daemon ``pid`` whose discovery file is ``path`` (SIGTERM: it stops its
    store, which removes its slot files, and its discovery and log files) and wait until it
    is gone; False if it was already gone or did not stop in ``timeout_s`` (logged)."""
    record = read_discovery(path)
    if record is None or int(record["pid"]) != pid:
        return False  # gone already, or the file names another daemon now: not ours to stop
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False  # it ended meanwhile
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and path.exists():
        if time.monotonic() > deadline:
            log.warning("store daemon %d did not stop within %.0f s", pid, timeout_s)
            return False
        time.sleep(0.01)
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m real.engine.daemon --node N --watch-pid P --file F`` (secret: GEMINI_TOKEN)."""
    parser = argparse.ArgumentParser(prog="python -m real.engine.daemon", description=__doc__)
    parser.add_argument("--node", type=int, required=True)
    parser.add_argument("--watch-pid", type=int, required=True, help="exit when it is gone")
    parser.add_argument("--file", type=Path, required=True, help="discovery file to write")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        parser.error(f"set {TOKEN_ENV} to the job's secret")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s store-daemon: %(message)s"
    )
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopped.set())
    prefix = f"gemini-d{os.getpid()}"
    store = NodeStore(args.node, token, args.host, 0, prefix)
    store.start()
    record = {"pid": os.getpid(), "address": store.address, "token": token, "prefix": prefix}
    temporary = args.file.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(record, handle)
    temporary.replace(args.file)
    log.info("node %d store serving on %s for pid %d", args.node, store.address, args.watch_pid)
    try:
        while not stopped.wait(0.5):
            if not pid_alive(args.watch_pid):
                log.info("pid %d is gone: the job ended", args.watch_pid)
                break
    finally:
        store.stop()
        with contextlib.suppress(OSError):
            args.file.unlink()
        with contextlib.suppress(OSError):
            args.file.with_suffix(".log").unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
