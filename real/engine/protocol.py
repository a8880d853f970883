"""Wire format and authentication of the node stores' TCP endpoint.

Every message is a frame::

    4 bytes   big-endian length H of the header (1 .. MAX_HEADER_BYTES)
    H bytes   JSON header, UTF-8, an object with at least "op"
    P bytes   raw payload, P = header["payload_bytes"] (0 when absent)

Headers are small JSON; payloads are raw tensor bytes or a JSON manifest. Nothing is pickled.
Payloads are received straight into their destination (a slot's data region) with
``recv_into``, so a chunk is copied once, by the kernel.

Authentication, both ways, before anything else on a connection (the job's secret token
``K``; ``Ns`` and ``Nc`` are 32 fresh random bytes, hex, from the store and from the client)::

    store  -> client   {"op": "challenge", "nonce": Ns}
    client -> store    {"op": "auth", "nonce": Nc,
                        "mac": HMAC-SHA256(K, "gemini-store-auth/client\0" + Ns + "\0" + Nc)}
    store  -> client   {"op": "ok",
                        "mac": HMAC-SHA256(K, "gemini-store-auth/server\0" + Ns + "\0" + Nc)}

The client proves it knows ``K`` for the store's fresh nonce, and the store proves it for the
client's, so a client knows it talks to a store of its job (a stranger's listener that speaks the
protocol is refused), and a recorded exchange is worth nothing on another connection. The two
directions use different labels, so one side's answer can never serve as the other's. Both
sides compare MACs with ``hmac.compare_digest``; the store gives the client ``AUTH_TIMEOUT_S``
to answer. A wrong MAC, a malformed frame, an oversized header or an unknown op ends that one
connection; the store keeps serving the others. The same handshake, with the label
``gemini-kv-auth``, guards the embedded coordination store (:mod:`real.coord.kvserver`).

What it does not do: frames after the handshake are neither encrypted nor MACed. Checkpoint
bytes are bound end to end by the keyed manifest (:mod:`real.engine.manifest`), so a restore
refuses data that an on-path attacker changed; confidentiality needs a private network.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
from typing import Any

from shared.errors import ProtocolError, TokenRefused

MAX_HEADER_BYTES = 1 << 20
AUTH_TIMEOUT_S = 5.0
STORE_SERVICE = "gemini-store-auth"
_NONCE_HEX = 64
_LENGTH = struct.Struct(">I")


def make_token() -> str:
    """A fresh job secret: 32 random bytes, hex."""
    return os.urandom(32).hex()


def auth_mac(token: str, service: str, direction: str, server_nonce: str, client_nonce: str) -> str:
    """HMAC-SHA256 proof that the sender (``direction``: "client" or "server") knows ``token``,
    bound to both nonces of this connection and to the ``service`` it authenticates to."""
    message = f"{service}/{direction}\0{server_nonce}\0{client_nonce}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def _is_nonce(value: object) -> bool:
    if not isinstance(value, str) or len(value) != _NONCE_HEX:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def _same(mac: object, want: str) -> bool:
    return isinstance(mac, str) and hmac.compare_digest(mac.encode(), want.encode())


def send_frame(
    sock: socket.socket, header: dict[str, Any], payload: bytes | memoryview | None = None
) -> None:
    """Send one frame; ``payload_bytes`` is set from the payload."""
    if payload is not None:
        header = {**header, "payload_bytes": len(payload)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    sock.sendall(_LENGTH.pack(len(raw)) + raw)
    if payload is not None and len(payload):
        sock.sendall(payload)


def recv_exact(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    recv_into_exact(sock, memoryview(buffer))
    return buffer


def recv_into_exact(sock: socket.socket, target: memoryview) -> None:
    """Fill ``target`` from the socket; ConnectionError if the peer closes first."""
    received, size = 0, len(target)
    while received < size:
        got = sock.recv_into(target[received:], size - received)
        if got == 0:
            raise ConnectionError(f"connection closed after {received} of {size} bytes")
        received += got


def discard(sock: socket.socket, size: int) -> None:
    """Read and drop ``size`` payload bytes (a payload nobody wants)."""
    scratch = memoryview(bytearray(min(size, 1 << 20) or 1))
    while size > 0:
        got = sock.recv_into(scratch, min(size, len(scratch)))
        if got == 0:
            raise ConnectionError("connection closed inside a payload")
        size -= got


def recv_header(sock: socket.socket) -> dict[str, Any]:
    """Read one frame's header; the payload, if any, is left on the socket for the caller."""
    (length,) = _LENGTH.unpack(recv_exact(sock, _LENGTH.size))
    if not 0 < length <= MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header of {length} bytes (allowed 1..{MAX_HEADER_BYTES})")
    try:
        header = json.loads(recv_exact(sock, length))
    except ValueError as error:
        raise ProtocolError(f"frame header is not JSON: {error}") from error
    if not isinstance(header, dict) or not isinstance(header.get("op"), str):
        raise ProtocolError("frame header must be a JSON object with a string 'op'")
    payload = header.get("payload_bytes", 0)
    if not isinstance(payload, int) or isinstance(payload, bool) or payload < 0:
        raise ProtocolError(f"payload_bytes must be a non-negative integer, got {payload!r}")
    return header


def recv_frame(sock: socket.socket, max_payload: int = 1 << 30) -> tuple[dict[str, Any], bytes]:
    """Read a whole frame whose payload is small (a manifest, a reply)."""
    header = recv_header(sock)
    size = header.get("payload_bytes", 0)
    if size > max_payload:
        raise ProtocolError(f"payload of {size} bytes exceeds {max_payload}")
    return header, bytes(recv_exact(sock, size)) if size else b""


def server_handshake(sock: socket.socket, token: str, service: str = STORE_SERVICE) -> None:
    """Challenge the client, check its proof, then prove ``token`` to it in turn.

    Raises:
        ProtocolError: the client did not prove it knows ``token`` within AUTH_TIMEOUT_S.
    """
    server_nonce = os.urandom(_NONCE_HEX // 2).hex()
    previous = sock.gettimeout()
    sock.settimeout(AUTH_TIMEOUT_S)
    try:
        send_frame(sock, {"op": "challenge", "nonce": server_nonce})
        header = recv_header(sock)
        client_nonce = header.get("nonce")
        if header["op"] != "auth" or not _is_nonce(client_nonce):
            raise ProtocolError(f"expected an auth frame with a nonce, got op {header['op']!r}")
        assert isinstance(client_nonce, str)
        want = auth_mac(token, service, "client", server_nonce, client_nonce)
        if not _same(header.get("mac"), want):
            raise ProtocolError("authentication failed: wrong token (the client does not know it)")
        send_frame(
            sock,
            {"op": "ok", "mac": auth_mac(token, service, "server", server_nonce, client_nonce)},
        )
    except TimeoutError as error:
        raise ProtocolError("authentication timed out") from error
    finally:
        sock.settimeout(previous)


def client_handshake(sock: socket.socket, token: str, service: str = STORE_SERVICE) -> None:
    """Answer the server's challenge, then check that the server knows ``token`` too.

    Raises:
        TokenRefused: the server refused our proof (wrong token) or could not prove its own:
            it is not a server of this job.
        ProtocolError: the server did not speak the protocol.
    """
    header = recv_header(sock)
    server_nonce = header.get("nonce")
    if header["op"] != "challenge" or not _is_nonce(server_nonce):
        raise ProtocolError(f"the server did not send a challenge (op {header['op']!r})")
    assert isinstance(server_nonce, str)
    client_nonce = os.urandom(_NONCE_HEX // 2).hex()
    send_frame(
        sock,
        {
            "op": "auth",
            "nonce": client_nonce,
            "mac": auth_mac(token, service, "client", server_nonce, client_nonce),
        },
    )
    try:
        reply = recv_header(sock)
    except ConnectionError as error:
        raise TokenRefused("the server refused our token (wrong GEMINI_TOKEN?)") from error
    if reply["op"] != "ok":
        raise ProtocolError(f"the server refused the connection: {reply}")
    if not _same(reply.get("mac"), auth_mac(token, service, "server", server_nonce, client_nonce)):
        raise TokenRefused(
            "the server could not prove it knows the job token: it is not a server of this "
            "job (wrong address, or a stranger listening there)"
        )


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port)."""
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"store address {text!r} must look like host:port")
    return host, int(port)


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """``GEMINI_STORE_ADDRS``: comma-separated ``host:port``, one per node, in node order."""
    return [parse_address(part) for part in text.split(",") if part.strip()]
