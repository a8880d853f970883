"""A node store run as an owned child process (what the node agent does).

``StoreProcess`` starts ``python -m real.engine.store``, waits (polling, bounded) until the
store has written its address to a ready file, and on ``stop()`` sends SIGTERM, joins with a
timeout and kills as a last resort; then it deletes any slot file of its prefix still in
``/dev/shm`` (a store killed with SIGKILL cannot remove its own). The token travels in the
environment (``GEMINI_TOKEN``), never on the command line where ``ps`` would show it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from real.engine.shm import SHM_DIR
from real.engine.store import TOKEN_ENV
from real.runtime.processes import stop_process

log = logging.getLogger(__name__)


class StoreProcess:
    """Owner of one store process.

    Args:
        node: the node the store serves.
        token: the job's secret token.
        host: address to listen on.
        prefix: slot file name prefix (job id); default: chosen by the store.
        log_path: where the store's stderr goes (default: discarded).
    """

    def __init__(
        self,
        node: int,
        token: str,
        host: str = "127.0.0.1",
        prefix: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.node = node
        self.token = token
        self.host = host
        self.prefix = prefix
        self.log_path = log_path
        self.address = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def start(self, timeout_s: float = 30.0) -> str:
        """Start the store and return its ``host:port`` once it serves."""
        self.sweep()  # a previous store of this prefix killed with SIGKILL left its files
        self._folder = tempfile.TemporaryDirectory(prefix="gemini-store-")
        ready = Path(self._folder.name) / "ready"
        command = [
            sys.executable,
            "-m",
            "real.engine.store",
            "--node",
            str(self.node),
            "--host",
            self.host,
            "--ready-file",
            str(ready),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.prefix:
            command += ["--prefix", self.prefix]
        stderr = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                command,
                env={**os.environ, TOKEN_ENV: self.token},
                stdin=subprocess.DEVNULL,
                stderr=stderr,
            )
        finally:
            if self.log_path:
                stderr.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(
                    f"node {self.node} store exited with code {code} before serving; see its log"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"node {self.node} store did not serve within {timeout_s} s")
            time.sleep(0.01)
        self.address = ready.read_text().strip()
        # The ready file is needed only until now: remove its folder at once, so an owner
        # killed later (a hardware failure kills the whole node agent) leaves nothing in /tmp.
        self._folder.cleanup()
        self._folder = None
        return self.address

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, timed join, then SIGKILL; returns the exit code (None: never started)."""
        process, self.process = self.process, None
        code = None if process is None else stop_process(process, timeout_s)
        if process is not None:
            # A store that died by SIGKILL (or was killed here) leaves its files. One never
            # started here leaves the prefix's files alone: they may be a live store's (an
            # agent refused as a second copy of a live one removed that one's checkpoints).
            self.sweep()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
        return code

    def sweep(self) -> int:
        """Delete this store's slot files (``<prefix>-n<node>-*``: stores of other nodes may
        share the prefix); only with an explicit prefix (the store's random default is known
        only to the store). Returns how many."""
        if not self.prefix or (self.process is not None and self.process.poll() is None):
            return 0
        removed = 0
        for path in SHM_DIR.glob(f"{self.prefix}-n{self.node}-*"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        if removed:
            log.warning("node %d: removed %d slot files left by a killed store", self.node, removed)
        return removed

    def __enter__(self) -> StoreProcess:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
