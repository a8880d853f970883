"""An owned single-member etcd server on loopback, for tests and the launcher's etcd mode.

On a real cluster etcd runs as a service that outlives the job; on one machine the harness
starts its own: a temporary data folder, two free ports on 127.0.0.1 (clients, peers), a
readiness poll of the HTTP gateway's ``/version``, and a stop that terminates, waits, then kills,
and removes the data folder. The ``etcd`` binary comes from Debian's ``etcd-server`` package
(``GEMINI_SETUP_APT=1 ./setup.sh``).

With the job's secret (``token=``, or ``GEMINI_TOKEN``), etcd runs with authentication: before
enabling it, the owner makes a ``root`` user (a random password, kept in memory only, for the
set-up) and a user ``gemini`` whose role may read and write every key, with the password
derived from the secret (:func:`~real.coord.etcd_kv.derived_password`); ``url`` then names
the user, ``etcd://gemini@HOST:PORT``, and a client of the job finds the password from
``GEMINI_TOKEN``. A client without it is refused every read and write. Passwords travel in
HTTP request bodies on loopback, never on a command line. Without a secret, etcd runs open
(``auth=False``), as a bare test fixture.

etcd 3.4 serves the v3 API over HTTP at ``/v3/`` (``/v3beta/`` remains as an alias); etcd3gw
finds the path itself from ``/version``. Lease TTLs are whole seconds and at least
``1.5 * election timeout``; we start etcd with a 50 ms heartbeat and 500 ms election timeout so
that 1 s leases work in tests (the default would make the minimum 2 s).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from real.coord.etcd_kv import derived_password
from real.coord.kv import TOKEN_ENV
from real.runtime.processes import end_with_parent, free_port, stop_process
from shared.errors import KVError

logger = logging.getLogger(__name__)


def _terminate_with_parent() -> None:
    """In the child, before ``exec``: SIGTERM once the thread that started it ends (etcd keeps
    no parent watch of its own). Start etcd from a thread that lives as long as its owner: the
    owner's main thread."""
    end_with_parent(signal.SIGTERM)


def etcd_binary() -> str | None:
    """Path of the ``etcd`` executable, or None when it is not installed."""
    return shutil.which("etcd")


def enable_auth(client_url: str, token: str, user: str = "gemini") -> None:
    """Turn on authentication of a fresh etcd at ``client_url`` (plain HTTP, loopback or a
    private network): a ``root`` user (random password, forgotten: only this set-up needs it)
    and ``user``, who may read and write every key, with the password derived from the job's
    ``token``; from then on every request needs a login. Passwords travel in request bodies,
    never on a command line.

    Raises:
        KVError: etcd refused a step (auth already on, say).
    """
    password = derived_password(token)
    every_key = base64.b64encode(b"\0").decode()
    steps: list[tuple[str, dict[str, object]]] = [
        ("user/add", {"name": "root", "password": secrets.token_hex(16)}),
        ("role/add", {"name": "root"}),
        ("user/grant", {"user": "root", "role": "root"}),
        ("role/add", {"name": user}),
        (
            "role/grant",
            {
                "name": user,
                "perm": {"permType": "READWRITE", "key": every_key, "range_end": every_key},
            },
        ),
        ("user/add", {"name": user, "password": password}),
        ("user/grant", {"user": user, "role": user}),
        ("enable", {}),
    ]
    for step, body in steps:
        request = urllib.request.Request(
            f"{client_url}/v3/auth/{step}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5.0) as response:
                response.read()
        except (OSError, urllib.error.URLError) as error:
            raise KVError(f"etcd at {client_url}: auth set-up ({step}) failed: {error}") from error


class EtcdServer:
    """One etcd member on 127.0.0.1 with a temporary data folder; a context manager.

    Args:
        host: the loopback (or namespace) address to listen on.
        start_timeout_s: how long to wait for etcd to answer before giving up.
        log_path: where etcd's own output goes (default: a file in the data folder).
        token: the job's secret (default: ``GEMINI_TOKEN``): etcd then requires the user
            ``gemini`` with the password derived from it.
        auth: False runs etcd without authentication (tests of the bare backend only).

    Raises:
        ValueError: ``auth`` and no secret (neither ``token`` nor ``GEMINI_TOKEN``).
    """

    USER = "gemini"

    def __init__(
        self,
        host: str = "127.0.0.1",
        start_timeout_s: float = 15.0,
        log_path: Path | None = None,
        *,
        token: str | None = None,
        auth: bool = True,
    ) -> None:
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.log_path = log_path
        self.token = (token or os.environ.get(TOKEN_ENV) or None) if auth else None
        if auth and self.token is None:
            raise ValueError(
                f"EtcdServer with authentication needs the job's secret: pass token= or set "
                f"{TOKEN_ENV} (auth=False for an open test server)"
            )
        self.client_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._data_dir: Path | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def url(self) -> str:
        """``etcd://gemini@HOST:PORT`` (``etcd://HOST:PORT`` when open) for
        :func:`real.coord.kv.connect_kv`."""
        user = f"{self.USER}@" if self.token else ""
        return f"etcd://{user}{self.host}:{self.client_port}"

    def start(self, attempts: int = 3) -> EtcdServer:
        """Start etcd and wait until it answers; retries when a chosen port was taken.

        On any other error (Ctrl-C included) the started etcd and its folder are removed
        before the error goes on.
        """
        binary = etcd_binary()
        if binary is None:
            raise KVError(
                "etcd is not installed: install Debian's etcd-server "
                "(GEMINI_SETUP_APT=1 ./setup.sh) or use the embedded store (tcpstore://)"
            )
        last_error: Exception | None = None
        for _ in range(attempts):
            try:
                self._start_once(binary)
                return self
            except KVError as error:
                last_error = error
                self.stop()
            except BaseException:  # Ctrl-C or a bug while etcd starts: leave no etcd behind
                self.stop()
                raise
        raise KVError(f"etcd did not start after {attempts} attempts: {last_error}")

    def _start_once(self, binary: str) -> None:
        self._data_dir = Path(tempfile.mkdtemp(prefix="gemini-etcd-"))
        self.client_port, peer_port = free_port(self.host), free_port(self.host)
        client_url = f"http://{self.host}:{self.client_port}"
        peer_url = f"http://{self.host}:{peer_port}"
        log_path = self.log_path or self._data_dir / "etcd.log"
        command = [
            binary,
            "--name=gemini",
            f"--data-dir={self._data_dir / 'data'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=gemini={peer_url}",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--log-level=warn",
        ]
        with open(log_path, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Ctrl-C is left to its owner, which stops it with SIGTERM (see
                # real.coord.kvserver.serve): a terminal's Ctrl-C reaches the whole process
                # group, so etcd gets a session of its own (it handles SIGINT even when
                # started with it ignored). Out of the owner's session, it would outlive an
                # owner killed with SIGKILL or by a hang-up: it gets SIGTERM when the owner dies.
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = Path(log_path).read_text(errors="replace")[-2000:]
                raise KVError(f"etcd exited with {self._process.returncode} at start:\n{tail}")
            if self._answers(client_url):
                if self.token is not None:
                    enable_auth(client_url, self.token, self.USER)
                logger.info("etcd ready at %s (pid %d)", client_url, self._process.pid)
                return
            time.sleep(0.05)
        raise KVError(f"etcd did not answer at {client_url} within {self.start_timeout_s} s")

    @staticmethod
    def _answers(client_url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{client_url}/version", timeout=1.0) as response:
                return "etcdserver" in json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate etcd (SIGTERM, timed wait, SIGKILL) and remove its data folder."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, timeout_s)
        data_dir, self._data_dir = self._data_dir, None
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
