"""The embedded store process: a TCPStore server the agents reach at ``tcpstore://HOST:PORT``.

Run as ``python -m real.coord.kvserver --host 127.0.0.1 --port 0 [--port-file PATH]``: it
listens (port 0: the kernel picks a free one), prints ``PORT <n>`` on its first stdout line,
optionally writes the port to a file (atomically), and serves until SIGTERM / SIGINT, or until
the process that started it is gone (so an orphaned store never lingers).

:class:`StoreServer` is the owner side: it starts that process, reads the port, and stops it
(SIGTERM, timed wait, SIGKILL). The store holds only small coordination keys; checkpoint bytes
never pass through it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from real.coord.kv import StoreError
from real.processes import stop_process

_PARENT_POLL_S = 0.5


def serve(host: str, port: int, port_file: Path | None, parent_pid: int | None) -> int:
    """Host a TCPStore until told to stop; returns the exit status."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    store = TCPStore(
        host,
        port,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=30),
        use_libuv=True,
    )
    if port_file is not None:
        partial = port_file.with_suffix(port_file.suffix + ".partial")
        partial.write_text(f"{store.port}\n")
        partial.replace(port_file)
    print(f"PORT {store.port}", flush=True)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(_PARENT_POLL_S):
        if parent_pid is not None and os.getppid() != parent_pid:
            break
    del store
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--port-file", type=Path, help="also write the port to this file")
    parser.add_argument(
        "--parent-pid", type=int, help="exit when this process is no longer our parent"
    )
    args = parser.parse_args(argv)
    return serve(args.host, args.port, args.port_file, args.parent_pid)


class StoreServer:
    """Owner of one embedded store process; a context manager.

    Args:
        host: address the store listens on (loopback for the emulated cluster).
        port: 0 to let the kernel choose.
        start_timeout_s: how long to wait for the ``PORT`` line.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 60.0):
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``tcpstore://HOST:PORT`` for :func:`real.coord.kv.connect_kv`."""
        return f"tcpstore://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> StoreServer:
        """Start the store process and wait for its port."""
        command = [
            sys.executable,
            "-m",
            "real.coord.kvserver",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--parent-pid={os.getpid()}",
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            self.port = self._read_port(self._process)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_port(self, process: subprocess.Popen[bytes]) -> int:
        assert process.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(timeout=0.1):
                    line = process.stdout.readline().decode("utf-8", "replace").strip()
                    if line.startswith("PORT "):
                        return int(line.split()[1])
                    if not line and process.poll() is not None:
                        break
                elif process.poll() is not None:
                    break
        code = process.poll()
        reason = f"exited with {code}" if code is not None else "did not report its port"
        raise StoreError(
            f"the store process (python -m real.coord.kvserver) {reason} within "
            f"{self.start_timeout_s} s; run it by hand to see why"
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        stop_process(process, timeout_s)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> StoreServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
