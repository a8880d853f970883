"""A direct probe of a node agent: is the node alive, now, rather than at its lease's expiry?

Every node agent answers ``ping`` on a small TCP endpoint (:class:`ProbeServer`, its address
registered beside its store's). When a trainer's collective breaks, the root probes the members
(:func:`probe`): an agent whose endpoint refuses the connection (its process is gone) or that
does not answer within the bound is lost at once, well before its heartbeat lease would expire.
A node that is merely slow answers within the bound and is not declared lost; a silent partition
is still caught by the lease. The answer carries the node id, so a recycled address is not
mistaken for the node.

A connection is accepted by the kernel even while the agent is stopped (SIGSTOP), so the probe
waits for the agent's own answer, not for the connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class ProbeServer:
    """Answers ``ping\\n`` with ``pong <node_id>\\n``; one thread, closed by :meth:`close`.

    Args:
        node_id: this node's id.
        host: the address to listen on.
    """

    def __init__(self, node_id: int, host: str) -> None:
        self.node_id = node_id
        self._sock = socket.create_server((host, 0))
        self._sock.settimeout(0.5)
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="probe", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        answer = f"pong {self.node_id}\n".encode()
        while not self._closed.is_set():
            try:
                connection, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                connection.settimeout(1.0)
                with contextlib.suppress(OSError):
                    if connection.recv(16).startswith(b"ping"):
                        connection.sendall(answer)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        self._thread.join(2.0)


def probe(address: str, node_id: int, timeout_s: float) -> bool:
    """Whether the agent of ``node_id`` at ``host:port`` answers within ``timeout_s``."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as connection:
            connection.sendall(b"ping\n")
            connection.settimeout(max(0.001, deadline - time.monotonic()))
            reply = connection.recv(64)
    except (OSError, ValueError):
        return False
    return reply.strip() == f"pong {node_id}".encode()


def refuses(address: str, timeout_s: float) -> bool:
    """Whether ``host:port`` refuses a connection: nothing listens there, so the process that
    did is gone (a host that does not answer at all proves nothing: it may be partitioned)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return False
    except ConnectionRefusedError:
        return True
    except (OSError, ValueError):
        return False


def probe_all(addresses: Mapping[int, str], timeout_s: float) -> list[int]:
    """Probe every ``{node_id: address}`` at once; the node ids that did not answer."""
    nodes: Iterable[int] = sorted(addresses)
    if not addresses:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
        answers = dict(
            zip(
                nodes,
                pool.map(lambda n: probe(addresses[n], n, timeout_s), sorted(addresses)),
                strict=True,
            )
        )
    return [node for node, alive in answers.items() if not alive]
