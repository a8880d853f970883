"""The node store: the process that owns a node's checkpoint memory and serves it over TCP.

One store runs per node for the node's lifetime (the node agent owns it; here it also runs as
``python -m real.engine.store --node N``). It creates the slot files in ``/dev/shm`` (two per
owner rank: committed and in progress), for the node's own ranks, which map them and copy their
state in, and for the peers whose replicas it holds, which stream chunks to it. Because the
store, not the trainer, owns the memory, a trainer crash loses nothing.

Operations (frames of :mod:`real.engine.protocol`, after authentication):

==============  ================================================================================
``ensure``      create or grow slot ``index`` of ``owner`` (never the newest committed one)
``slots``       paths of ``owner``'s slot files, for a (restarted) trainer to map
``holdings``    iterations held per owner rank, from the slot headers: committed, and complete
                (captured or prepared, committed or not)
``put_begin``   start receiving a replica: manifest as payload; the in-progress slot is chosen
``put_chunk``   one chunk: ``offset``, the bytes as payload; checked against the block checksums
``put_end``     check that every byte arrived and every block matches the manifest; ack
``commit``      the owner committed: make the verified replica the committed slot
``get``         serve a committed (else complete) shard: manifest then data, in one payload
``invalidate``  drop a slot found corrupted by a reader
``stats``       memory use
``sink``        benchmarks: receive a payload into plain memory (raw TCP baseline)
==============  ================================================================================

The store removes its slot files when it stops, on SIGTERM and on SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from real.engine import protocol
from real.engine.costs import Costs
from real.engine.manifest import manifest_key
from real.engine.receiver import Receiver
from real.engine.shm import SHM_DIR, Slot, held_slot, in_progress_index, newest_committed
from real.runtime.env import GEMINI_TOKEN
from shared.errors import ProtocolError

log = logging.getLogger(__name__)
TOKEN_ENV = GEMINI_TOKEN


def shared_memory_free(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


class NodeStore:
    """The store of node ``node``; ``start()`` serves in background threads.

    Args:
        node: this node's index.
        token: the job's secret; every connection must prove it knows it.
        host, port: where to listen (port 0: any free port; see ``address``).
        prefix: file name prefix of the slot files (default: a fresh random job id).
        shm_dir: folder of the slot files.
    """

    def __init__(
        self,
        node: int,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str | None = None,
        shm_dir: Path = SHM_DIR,
    ) -> None:
        self.node = node
        self.token = token
        self.manifest_key = manifest_key(token)  # a replica's manifest must carry its MAC
        self.prefix = prefix or f"gemini-{uuid.uuid4().hex[:10]}"
        self.shm_dir = shm_dir
        self.slots: dict[int, list[Slot | None]] = {}
        self.lock = threading.RLock()
        self._versions = 0
        self._server = socket.create_server((host, port))
        self.address = f"{host}:{self._server.getsockname()[1]}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self.scratch = bytearray()  # the raw-TCP benchmark's target (op ``sink``)
        self.costs = Costs()  # where this store's time goes (real.engine.costs)

    # -- slots ------------------------------------------------------------------------------

    def pair(self, owner: int) -> list[Slot | None]:
        with self.lock:
            return self.slots.setdefault(owner, [None, None])

    def ensure(
        self,
        owner: int,
        index: int,
        manifest_capacity: int,
        data_capacity: int,
        replace: bool = False,
    ) -> Slot:
        """Slot ``index`` of ``owner``, (re)created if it cannot hold the sizes given.

        A slot holding ``owner``'s newest committed checkpoint is not reallocated unless
        ``replace`` (``checkpoint.local_slots: 1``: the one local slot is always the newest,
        and its replicas on the peers stand in for it meanwhile).
        """
        with self.lock:
            pair = self.pair(owner)
            current = pair[index]
            if current is not None and current.fits(manifest_capacity, data_capacity):
                return current
            if current is not None and newest_committed(pair) == index and not replace:
                raise ValueError(
                    f"slot {index} of rank {owner} holds the newest committed "
                    "checkpoint; it cannot be reallocated"
                )
            free = shared_memory_free(self.shm_dir)
            if manifest_capacity + data_capacity > free:
                raise ValueError(
                    f"node {self.node}: a slot of {manifest_capacity + data_capacity} bytes "
                    f"does not fit the {free} bytes free in {self.shm_dir}"
                )
            self._versions += 1
            path = self.shm_dir / f"{self.prefix}-n{self.node}-o{owner}-s{index}-v{self._versions}"
            # Headroom: optimizer state and manifests may grow a little after the first capture.
            slot = Slot.create(path, manifest_capacity + (64 << 10), data_capacity)
            if current is not None:
                current.close()
                current.path.unlink(missing_ok=True)
            pair[index] = slot
            log.info(
                "node %d store: rank %d slot %d: %d bytes in %s (node total %d bytes)",
                self.node,
                owner,
                index,
                slot.size,
                path.name,
                self.memory_bytes(),
            )
            return slot

    def replica_slot(
        self, owner: int, manifest_len: int, data_len: int, keep: int | None = None
    ) -> Slot:
        """The replica slot to receive into: never the one holding iteration ``keep``."""
        with self.lock:
            index = in_progress_index(self.pair(owner), keep)
            slot = self.ensure(owner, index, manifest_len, data_len)
            slot.invalidate()
            return slot

    def holdings(self, complete: bool = False) -> dict[int, list[int]]:
        """Iterations held per owner rank: committed ones; with ``complete``, also those
        complete but not committed (a capture, a prepared replica)."""
        with self.lock:
            out = {}
            for owner, pair in self.slots.items():
                states = [s.state() for s in pair if s is not None]
                held = {
                    state.held if complete else state.iteration
                    for state in states
                    if state.committed or complete
                }
                out[owner] = sorted(i for i in held if i is not None)
            return out

    def held_slot(self, owner: int, iteration: int) -> Slot | None:
        """``owner``'s slot holding ``iteration`` whole: the committed one (the newer if both
        hold it: after a rollback, the iteration may have been checkpointed again), else one
        complete but not committed."""
        with self.lock:
            return held_slot(self.pair(owner), iteration)

    def memory_bytes(self) -> int:
        with self.lock:
            return sum(s.size for pair in self.slots.values() for s in pair if s is not None)

    # -- serving ----------------------------------------------------------------------------

    def start(self) -> NodeStore:
        thread = threading.Thread(target=self._accept_loop, name=f"store-{self.node}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, peer = self._server.accept()
            except OSError:
                return  # the listening socket was closed by stop()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(conn, peer), daemon=True)
            thread.start()

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        with self.lock:
            self._connections.add(conn)
        receiver = Receiver(self, conn)
        try:
            protocol.server_handshake(conn, self.token)
            while not self._stopping.is_set():
                try:
                    header = protocol.recv_header(conn)
                except ConnectionError as closed:
                    if isinstance(closed, ProtocolError):
                        raise
                    return  # the client hung up between frames: normal end
                receiver.handle(header)
        except (ConnectionError, ValueError, KeyError, TypeError, OSError) as error:
            log.warning("node %d store: closing connection from %s: %s", self.node, peer, error)
        finally:
            with self.lock:
                self._connections.discard(conn)
            conn.close()

    def stop(self) -> None:
        """Stop serving and delete every slot file this store created."""
        self._stopping.set()
        self._server.close()
        with self.lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            for pair in self.slots.values():
                for slot in pair:
                    if slot is not None:
                        slot.close()
                        slot.path.unlink(missing_ok=True)
            self.slots.clear()
        log.info("node %d store: stopped, slot files removed", self.node)


def main(argv: list[str] | None = None) -> int:
    """``python -m real.engine.store --node N [--host H] [--port P] [--ready-file F]``."""
    parser = argparse.ArgumentParser(prog="python -m real.engine.store", description=__doc__)
    parser.add_argument("--node", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prefix", default=None, help="slot file name prefix (job id)")
    parser.add_argument(
        "--ready-file", default=None, help="written with host:port once serving (atomically)"
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="the owner (a node agent): stop once it is no longer our parent, and leave "
        "Ctrl-C to it",
    )
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENV)
    if not token:
        parser.error(f"set {TOKEN_ENV} to the job's secret token")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    store = NodeStore(args.node, token, args.host, args.port, args.prefix)
    stopped = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    # Owned by an agent, Ctrl-C is the agent's: it stops its trainers (whose last checkpoint
    # may still reach this store) and then this store, with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN if args.parent_pid else on_signal)
    store.start()
    if args.ready_file:
        temporary = Path(f"{args.ready_file}.tmp")
        temporary.write_text(store.address)
        temporary.replace(args.ready_file)
    print(f"node {args.node} store serving on {store.address}", file=sys.stderr, flush=True)
    try:
        while not stopped.wait(PARENT_POLL_S):
            if args.parent_pid is not None and os.getppid() != args.parent_pid:
                # The agent was killed (SIGKILL, or the node's OOM killer): its node's memory
                # goes with it, as a lost node's would, instead of living on unowned.
                log.warning("node %d store: its agent is gone; stopping", args.node)
                break
    finally:
        store.stop()
    return 0


PARENT_POLL_S = 0.5
"""How often a store owned by an agent looks whether the agent still runs, s."""


if __name__ == "__main__":
    sys.exit(main())
