"""Wire format and authentication of the node stores' TCP endpoint.

Every message is a frame::

    4 bytes   big-endian length H of the header (1 .. MAX_HEADER_BYTES)
    H bytes   JSON header, UTF-8, an object with at least "op"
    P bytes   raw payload, P = header["payload_bytes"] (0 when absent)

Headers are small JSON; payloads are raw tensor bytes or a JSON manifest. Nothing is pickled.
Payloads are received straight into their destination (a slot's data region) with
``recv_into``, so a chunk is copied once, by the kernel.

Authentication, before anything else on a connection (the job's secret token ``K``)::

    store  -> client   {"op": "challenge", "nonce": <32 random bytes, hex>}
    client -> store    {"op": "auth", "mac": HMAC-SHA256(K, "gemini-store-auth:" + nonce)}
    store  -> client   {"op": "ok"}   (or closes the connection)

The store compares MACs with ``hmac.compare_digest`` and gives the client ``AUTH_TIMEOUT_S`` to
answer. A wrong MAC, a malformed frame, an oversized header or an unknown op ends that one
connection; the store keeps serving the others.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
from typing import Any

MAX_HEADER_BYTES = 1 << 20
AUTH_TIMEOUT_S = 5.0
_AUTH_CONTEXT = b"gemini-store-auth:"
_LENGTH = struct.Struct(">I")


class ProtocolError(ConnectionError):
    """The peer broke the wire format or failed authentication."""


def make_token() -> str:
    """A fresh job secret: 32 random bytes, hex."""
    return os.urandom(32).hex()


def auth_mac(token: str, nonce: str) -> str:
    return hmac.new(token.encode(), _AUTH_CONTEXT + nonce.encode(), hashlib.sha256).hexdigest()


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


def server_handshake(sock: socket.socket, token: str) -> None:
    """Challenge the client; raise ProtocolError unless it proves it knows ``token``."""
    nonce = os.urandom(32).hex()
    previous = sock.gettimeout()
    sock.settimeout(AUTH_TIMEOUT_S)
    try:
        send_frame(sock, {"op": "challenge", "nonce": nonce})
        header = recv_header(sock)
        mac = header.get("mac")
        if header["op"] != "auth" or not isinstance(mac, str):
            raise ProtocolError(f"expected an auth frame, got op {header['op']!r}")
        if not hmac.compare_digest(mac.encode(), auth_mac(token, nonce).encode()):
            raise ProtocolError("authentication failed: wrong token")
        send_frame(sock, {"op": "ok"})
    except TimeoutError as error:
        raise ProtocolError("authentication timed out") from error
    finally:
        sock.settimeout(previous)


def client_handshake(sock: socket.socket, token: str) -> None:
    header = recv_header(sock)
    if header["op"] != "challenge" or not isinstance(header.get("nonce"), str):
        raise ProtocolError(f"store did not send a challenge (op {header['op']!r})")
    send_frame(sock, {"op": "auth", "mac": auth_mac(token, header["nonce"])})
    try:
        reply = recv_header(sock)
    except ConnectionError as error:
        raise ProtocolError("store refused the token (wrong GEMINI_TOKEN?)") from error
    if reply["op"] != "ok":
        raise ProtocolError(f"store refused the connection: {reply}")


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port)."""
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"store address {text!r} must look like host:port")
    return host, int(port)


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """``GEMINI_STORE_ADDRS``: comma-separated ``host:port``, one per node, in node order."""
    return [parse_address(part) for part in text.split(",") if part.strip()]
