"""Nobody without the job's secret reads or writes the coordination store.

The embedded store (a real ``python -m real.coord.kvserver`` process) listens on loopback only,
serves nothing before a client proves the secret, and proves it back (a fake store is refused).
etcd (Debian's etcd-server; skipped without the binary) runs with a user and password, and over
TLS with client certificates: a client without the password, or without the certificates, is
refused, and the password never appears on a command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from real.coord.connect import connect_kv
from real.coord.etcd_kv import EtcdKV, derived_password, etcd_options
from real.coord.etcd_server import EtcdServer, etcd_binary
from real.coord.kv import KeyValueStore, parse_kv_url
from real.coord.kvserver import KV_SERVICE, StoreServer
from real.engine import protocol
from real.runtime.processes import free_port, stop_process
from shared.errors import CredentialsRefused, KVError, ProtocolError

ETCD_MISSING = "etcd binary absent: install Debian's etcd-server (GEMINI_SETUP_APT=1 ./setup.sh)"
needs_etcd = pytest.mark.skipif(etcd_binary() is None, reason=ETCD_MISSING)


# -- the embedded store ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded() -> Iterator[StoreServer]:
    with StoreServer(token=protocol.make_token()) as server:
        yield server


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_embedded_store_listens_on_loopback_only(embedded: StoreServer) -> None:
    assert _listening_addresses(embedded.port) == {"0100007F"}  # 127.0.0.1, nothing else


def test_the_secret_is_in_the_stores_environment_not_its_command_line(
    embedded: StoreServer,
) -> None:
    assert embedded.pid is not None
    assert embedded.token.encode() not in Path(f"/proc/{embedded.pid}/cmdline").read_bytes()
    assert (
        f"GEMINI_TOKEN={embedded.token}".encode()
        in Path(f"/proc/{embedded.pid}/environ").read_bytes()
    )


def test_a_client_with_the_wrong_secret_can_neither_read_nor_write(
    embedded: StoreServer,
) -> None:
    with connect_kv(f"{embedded.url}/auth", token=embedded.token) as kv:
        kv.put("kept", b"v1")
        with pytest.raises(CredentialsRefused, match="do not share the job's secret"):
            connect_kv(f"{embedded.url}/auth", token=protocol.make_token())
        # A raw connection that skips the proof: its write and its read are never served.
        host, port = embedded.host, embedded.port
        for request in (
            {"op": "set", "key": "auth/kept", "payload_bytes": 2},
            {"op": "get", "key": "auth/kept"},
        ):
            with socket.create_connection((host, port), timeout=10.0) as sock:
                assert protocol.recv_header(sock)["op"] == "challenge"
                protocol.send_frame(sock, request, b"v2" if request["op"] == "set" else None)
                with pytest.raises(ConnectionError):
                    protocol.recv_header(sock)
        # A wrong proof, with the right framing, is refused as well.
        with socket.create_connection((host, port), timeout=10.0) as sock:
            nonce = str(protocol.recv_header(sock)["nonce"])
            mine = os.urandom(32).hex()
            mac = protocol.auth_mac(protocol.make_token(), KV_SERVICE, "client", nonce, mine)
            protocol.send_frame(sock, {"op": "auth", "nonce": mine, "mac": mac})
            with pytest.raises(ConnectionError):
                protocol.recv_header(sock)
        assert kv.get("kept") == b"v1"


def test_a_node_stores_proof_does_not_open_the_coordination_store(
    embedded: StoreServer,
) -> None:
    """The two services use different labels: a proof for one is worthless for the other."""
    with (
        socket.create_connection((embedded.host, embedded.port), timeout=10.0) as sock,
        pytest.raises(ProtocolError),
    ):
        protocol.client_handshake(sock, embedded.token, protocol.STORE_SERVICE)


def test_a_fake_coordination_store_is_refused(tmp_path: Path) -> None:
    token = protocol.make_token()
    server = socket.create_server(("127.0.0.1", 0))
    requests: list[str] = []

    def fake() -> None:  # speaks the protocol, does not know the secret
        with server:
            conn, _ = server.accept()
            with conn:
                protocol.send_frame(conn, {"op": "challenge", "nonce": os.urandom(32).hex()})
                auth = protocol.recv_header(conn)
                protocol.send_frame(conn, {"op": "ok", "mac": auth["mac"]})
                with contextlib.suppress(ConnectionError):
                    requests.append(protocol.recv_header(conn)["op"])

    thread = threading.Thread(target=fake, daemon=True)
    thread.start()
    with pytest.raises(KVError, match="could not prove"):
        connect_kv(f"tcpstore://127.0.0.1:{server.getsockname()[1]}/x", token=token)
    thread.join(10.0)
    assert not thread.is_alive() and requests == []


def test_the_embedded_store_refuses_to_start_without_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GEMINI_TOKEN", raising=False)
    with pytest.raises(ValueError, match="GEMINI_TOKEN"):
        StoreServer()
    with pytest.raises(ValueError, match="GEMINI_TOKEN"):
        connect_kv("tcpstore://127.0.0.1:1/x")
    environment = {k: v for k, v in os.environ.items() if k != "GEMINI_TOKEN"}
    finished = subprocess.run(
        [sys.executable, "-m", "real.coord.kvserver", "--port=0"],
        env=environment,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 2 and b"GEMINI_TOKEN" in finished.stderr


# -- etcd with a user and password ----------------------------------------------------------


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    if etcd_binary() is None:
        pytest.skip(ETCD_MISSING)
    with EtcdServer(token=protocol.make_token()) as server:
        yield server


def _raw_etcd(url: str, path: str, body: bytes) -> int:
    """POST to etcd's gateway with no credentials at all; the HTTP status."""
    _, host, port, _ = parse_kv_url(url)
    request = urllib.request.Request(f"http://{host}:{port}/v3/{path}", data=body)
    try:
        with urllib.request.urlopen(request, timeout=5.0) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@needs_etcd
def test_etcd_serves_the_jobs_user_and_refuses_everyone_else(
    etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert etcd.url.startswith("etcd://gemini@")
    assert etcd.token is not None
    with connect_kv(f"{etcd.url}/auth", token=etcd.token) as kv:
        kv.put("kept", b"v1")
        lease = kv.grant_lease(2.0)
        assert kv.create("leader", b"me", lease) and lease.refresh()
        lease.revoke()
        # A wrong secret derives a wrong password; no user at all is refused too.
        with pytest.raises(CredentialsRefused, match="refused user 'gemini'"):
            connect_kv(f"{etcd.url}/auth", token=protocol.make_token())
        with pytest.raises(KVError, match="requires a user"):
            connect_kv(f"{etcd.url.replace('gemini@', '')}/auth", token=etcd.token)
        # Raw HTTP without a login token: neither a write nor a read is served.
        key = "YXV0aC9rZXB0"  # base64 of "auth/kept"
        assert _raw_etcd(etcd.url, "kv/put", b'{"key":"%s","value":"djI="}' % key.encode()) != 200
        assert _raw_etcd(etcd.url, "kv/range", b'{"key":"%s"}' % key.encode()) != 200
        assert kv.get("kept") == b"v1"
        # The password may also come from a variable or a file instead of the secret.
        monkeypatch.setenv("GEMINI_ETCD_PASSWORD", derived_password(etcd.token))
        with connect_kv(f"{etcd.url}/auth", token="unused") as other:
            assert other.get("kept") == b"v1"


@needs_etcd
def test_an_expired_login_is_renewed(etcd: EtcdServer) -> None:
    assert etcd.token is not None
    with connect_kv(f"{etcd.url}/auth", token=etcd.token) as kv:
        assert isinstance(kv, EtcdKV)
        kv._client.session.headers["Authorization"] = "expired.token"  # as after --auth-token-ttl
        kv.put("renewed", b"yes")
        assert kv.get("renewed") == b"yes"


@needs_etcd
def test_no_password_on_etcds_command_line(etcd: EtcdServer) -> None:
    assert etcd.token is not None and etcd._process is not None
    cmdline = Path(f"/proc/{etcd._process.pid}/cmdline").read_bytes()
    assert derived_password(etcd.token).encode() not in cmdline
    assert etcd.token.encode() not in cmdline


# -- configuration: where credentials and TLS files come from -------------------------------


def test_etcd_options_take_secrets_from_the_environment_or_files(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("from-a-file\n")
    assert etcd_options("u", tls=False, environ={"GEMINI_ETCD_PASSWORD": "p"}).password == "p"
    by_file = {"GEMINI_ETCD_PASSWORD_FILE": str(password_file)}
    assert etcd_options("u", tls=False, environ=by_file).password == "from-a-file"
    by_token = etcd_options("u", tls=False, environ={"GEMINI_TOKEN": "t"})
    assert by_token.password == derived_password("t")
    assert derived_password("t") not in repr(by_token)
    assert etcd_options(None, tls=False, environ={"GEMINI_TOKEN": "t"}).password is None
    with pytest.raises(ValueError, match="needs a password"):
        etcd_options("u", tls=False, environ={})
    tls = {"GEMINI_ETCD_CA": "/ca.pem", "GEMINI_ETCD_CERT": "/c.pem", "GEMINI_ETCD_KEY": "/c.key"}
    options = etcd_options(None, tls=True, environ=tls)
    assert (options.ca_file, options.cert_file, options.key_file) == ("/ca.pem", "/c.pem", "/c.key")
    with pytest.raises(ValueError, match="use etcds://"):
        etcd_options(None, tls=False, environ=tls)
    with pytest.raises(ValueError, match="both"):
        etcd_options(None, tls=True, environ={"GEMINI_ETCD_CERT": "/c.pem"})


def test_a_url_with_a_password_is_refused() -> None:
    with pytest.raises(ValueError, match="no password in the URL"):
        parse_kv_url("etcd://gemini:hunter2@127.0.0.1:2379/job")
    with pytest.raises(ValueError, match="takes no user"):
        parse_kv_url("tcpstore://someone@127.0.0.1:29400/job")
    assert parse_kv_url("etcds://gemini@10.0.0.1:2379/job") == ("etcds", "10.0.0.1", 2379, "job/")


# -- etcd over TLS with client certificates --------------------------------------------------


def _certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and one certificate for 127.0.0.1, usable by server and client."""
    run = lambda *args: subprocess.run(  # noqa: E731
        ["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60
    )
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=gemini-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    run("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "node.pem", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    return {name: folder / name for name in ("ca.pem", "node.pem", "node.key")}


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[str, dict[str, Path]]]:
    """An etcd serving HTTPS that requires client certificates: (etcds URL, files)."""
    if etcd_binary() is None or shutil.which("openssl") is None:
        pytest.skip(ETCD_MISSING if etcd_binary() is None else "openssl absent")
    files = _certificates(tmp_path)
    data = Path(tempfile.mkdtemp(prefix="gemini-etcd-tls-"))
    client, peer = f"https://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [str(etcd_binary()), "--name=tls", f"--data-dir={data / 'data'}",
         f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
         f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
         f"--initial-cluster=tls={peer}", f"--cert-file={files['node.pem']}",
         f"--key-file={files['node.key']}", f"--trusted-ca-file={files['ca.pem']}",
         "--client-cert-auth", "--log-level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield client.replace("https://", "etcds://"), files
    finally:
        stop_process(process, 5.0)
        shutil.rmtree(data, ignore_errors=True)


def _connect_when_up(url: str, attempts: int = 200) -> KeyValueStore:
    for attempt in range(attempts):
        try:
            return connect_kv(url, timeout_s=2.0)
        except KVError as error:
            if "Connection refused" not in str(error) or attempt == attempts - 1:
                raise
            threading.Event().wait(0.05)
    raise AssertionError("unreachable")


@needs_etcd
def test_etcd_over_tls_needs_the_ca_and_a_client_certificate(
    tls_etcd: tuple[str, dict[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, files = tls_etcd
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")  # ignored
    monkeypatch.setenv("GEMINI_ETCD_CA", str(files["ca.pem"]))
    monkeypatch.setenv("GEMINI_ETCD_CERT", str(files["node.pem"]))
    monkeypatch.setenv("GEMINI_ETCD_KEY", str(files["node.key"]))
    with _connect_when_up(f"{url}/tls") as kv:
        kv.put("k", b"over tls")
        assert kv.get("k") == b"over tls"
    monkeypatch.delenv("GEMINI_ETCD_CERT")
    monkeypatch.delenv("GEMINI_ETCD_KEY")
    with pytest.raises(KVError):  # no client certificate: the server refuses the handshake
        connect_kv(f"{url}/tls", timeout_s=2.0)
    monkeypatch.setenv("GEMINI_ETCD_CERT", str(files["node.pem"]))
    monkeypatch.setenv("GEMINI_ETCD_KEY", str(files["node.key"]))
    monkeypatch.delenv("GEMINI_ETCD_CA")
    with pytest.raises(KVError, match="CERTIFICATE_VERIFY_FAILED"):  # a server we cannot trust
        connect_kv(f"{url}/tls", timeout_s=2.0)


def test_a_silent_listener_is_not_called_a_store_with_another_secret() -> None:
    """Something that accepts connections and says nothing (a wrong port) used to read as
    "the store and this client do not share the job's secret"."""
    from real.coord.embedded_kv import EmbeddedKV

    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with pytest.raises(KVError, match="sends no coordination store's greeting") as caught:
            EmbeddedKV("127.0.0.1", port, "job", timeout_s=0.5, token=protocol.make_token())
        assert "secret" not in str(caught.value)
