"""Manifest, checksums, wire framing and authentication of the checkpoint engine."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
import torch

from real.engine import protocol
from real.engine.manifest import (
    Manifest,
    TensorEntry,
    layout,
    seal,
    tensor_views,
    tensors_from,
    verify,
)
from shared.errors import ProtocolError, VerificationError


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(300, 70, generator=generator),
        "half": torch.randn(17, generator=generator).to(torch.bfloat16),
        "ids": torch.arange(11, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "strided": torch.randn(8, 6, generator=generator).t(),
    }


def _packed(tensors: dict[str, torch.Tensor]) -> tuple[Manifest, torch.Tensor]:
    manifest = layout(5, 2, tensors, {"position": 7, "groups": [{"lr": 0.1}]})
    manifest.block_bytes = 4096  # many blocks even for a small shard
    data = torch.zeros(manifest.data_bytes, dtype=torch.uint8)
    for entry, tensor in zip(manifest.tensors, tensors.values(), strict=True):
        if entry.nbytes:
            target = data[entry.offset : entry.offset + entry.nbytes]
            target.view(tensor.dtype).view(tensor.shape).copy_(tensor)
    seal(manifest, data.numpy().data)
    return manifest, data


def test_round_trip_is_bitwise_for_every_dtype_and_shape() -> None:
    tensors = _state()
    manifest, data = _packed(tensors)
    parsed = Manifest.from_bytes(manifest.to_bytes())
    verify(parsed, data.numpy().data)
    back = tensors_from(parsed, data, copy=True)
    assert parsed.values == {"position": 7, "groups": [{"lr": 0.1}]}
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor), name
    assert all(entry.offset % 64 == 0 for entry in parsed.tensors)


def test_views_of_the_data_are_those_of_a_slice_typed_and_shaped() -> None:
    """``tensor_views`` (one ``as_strided`` per tensor) gives the views that slicing the
    region and viewing the slice as the entry's dtype and shape gives: same memory, shape,
    strides and dtype, writes landing in the region; a region that starts inside a larger
    buffer too; an entry off its element size or outside the region is refused."""
    tensors = {**_state(), "cube": torch.randn(2, 1, 3), "one": torch.ones(1, 1)}
    manifest, data = _packed(tensors)
    for region in (data, torch.zeros(manifest.data_bytes + 64, dtype=torch.uint8)[64:]):
        region.copy_(data)
        views = tensor_views(manifest.tensors, region)
        for entry, view in zip(manifest.tensors, views, strict=True):
            if not entry.nbytes:
                assert view is None
                continue
            sliced = region[entry.offset : entry.offset + entry.nbytes]
            want = sliced.view(tensors[entry.name].dtype).view(entry.shape)
            assert view is not None and view.dtype == want.dtype
            assert (view.shape, view.stride()) == (want.shape, want.stride()), entry.name
            assert view.data_ptr() == want.data_ptr() and torch.equal(view, want)
        names = [entry.name for entry in manifest.tensors]
        ids = views[names.index("ids")]
        assert ids is not None
        ids[3] = -5  # a view writes into the region
        assert tensors_from(manifest, region, copy=True)["ids"][3] == -5
    with pytest.raises(VerificationError, match="not aligned"):
        tensor_views([TensorEntry("odd", "float32", (2,), 2, 8)], data)
    with pytest.raises(RuntimeError):  # a view must lie inside the region's storage
        tensor_views([TensorEntry("far", "float32", (4,), 0, 16)], data[:8].clone())


def test_the_encoded_layout_is_reused_and_the_json_is_the_plain_encoding() -> None:
    """A layout's tensors are encoded once for all the manifests that share its list; the
    bytes are those of encoding the whole document at once, and a list that grew is encoded
    anew."""
    import json

    manifest, _ = _packed(_state())
    document = {
        "format": json.loads(manifest.to_bytes())["format"],
        "iteration": 5,
        "rank": 2,
        "data_bytes": manifest.data_bytes,
        "block_bytes": 4096,
        "blocks": manifest.blocks,
        "shard_checksum": manifest.shard_checksum,
        "tensors": [
            {
                "name": t.name,
                "dtype": t.dtype,
                "shape": list(t.shape),
                "offset": t.offset,
                "nbytes": t.nbytes,
            }
            for t in manifest.tensors
        ],
        "values": manifest.values,
    }
    plain = json.dumps(document, separators=(",", ":")).encode()
    assert manifest.to_bytes() == plain
    later = Manifest(6, 2, manifest.tensors, {"position": 8}, manifest.data_bytes)
    assert json.loads(later.to_bytes())["tensors"] == document["tensors"]
    from real.engine import manifest as manifest_module

    assert manifest_module._encoded_tensors(manifest.tensors) is manifest_module._encoded_tensors(
        later.tensors
    )
    grown = manifest.tensors
    grown.append(type(grown[0])("extra", "float32", (2,), manifest.data_bytes, 8))
    assert json.loads(later.to_bytes())["tensors"][-1]["name"] == "extra"


def test_a_repeated_layout_parses_to_the_same_manifest() -> None:
    """A store parses the same tensors array save after save; the entries it keeps give the
    manifest a first parse gives, names with JSON punctuation included, and a data size the
    entries do not fit is refused however often the array was seen."""
    import json

    from real.engine.manifest import TensorEntry

    tensors = _state()
    tensors['odd ],"values":{"x"'] = torch.ones(3)
    manifest, _ = _packed(tensors)
    manifest.values = {"a": [1], "values": {"tensors": [2]}}  # the markers again, in values
    raw = manifest.to_bytes()
    assert raw.count(b'],"values":') == 2
    first = Manifest.from_bytes(raw)
    again = Manifest.from_bytes(raw)
    assert first == again == manifest
    assert first.tensors is not again.tensors  # each parse gets a list of its own
    assert 'odd ],"values":{"x"' in [t.name for t in again.tensors]
    # The same array with a data region too small for it.
    small = json.loads(raw)
    small["data_bytes"] = 8
    small["blocks"] = []
    small["shard_checksum"] = ""
    order = ["format", "iteration", "rank", "data_bytes", "block_bytes", "blocks"]
    document = {k: small[k] for k in [*order, "shard_checksum", "tensors", "values"]}
    shrunk = json.dumps(document, separators=(",", ":")).encode()
    with pytest.raises(VerificationError, match="outside the data"):
        Manifest.from_bytes(shrunk, sealed=False)
    # Another key order (not to_bytes's): parsed whole, the same manifest.
    reordered = json.dumps(
        {
            "tensors": json.loads(raw)["tensors"],
            **{k: v for k, v in json.loads(raw).items() if k != "tensors"},
        },
        separators=(",", ":"),
    ).encode()
    assert Manifest.from_bytes(reordered) == manifest
    assert all(isinstance(t, TensorEntry) for t in Manifest.from_bytes(reordered).tensors)


@pytest.mark.parametrize("position", [0, 4095, 4096, -1])
def test_a_flipped_byte_anywhere_is_detected(position: int) -> None:
    manifest, data = _packed(_state())
    data[position] ^= 0x10
    with pytest.raises(VerificationError, match="block"):
        verify(manifest, data.numpy().data)


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[]", b'{"format": "other"}', b'{"format": "gemini-shard/1"}'],
)
def test_malformed_manifests_are_rejected(raw: bytes) -> None:
    with pytest.raises(VerificationError):
        Manifest.from_bytes(raw)


def test_manifest_with_a_tensor_outside_the_data_is_rejected() -> None:
    manifest, _ = _packed(_state())
    manifest.tensors[0] = manifest.tensors[0].__class__("w", "float32", (1,), 10**9, 4)
    with pytest.raises(VerificationError, match="outside"):
        Manifest.from_bytes(manifest.to_bytes())


def test_non_json_values_are_refused_at_layout() -> None:
    with pytest.raises(TypeError):
        layout(1, 0, {}, {"bad": object()})


def test_frames_carry_json_headers_and_raw_payloads() -> None:
    left, right = socket.socketpair()
    with left, right:
        protocol.send_frame(left, {"op": "put_chunk", "offset": 3}, b"\x00\x01\x02")
        header, payload = protocol.recv_frame(right)
        assert header == {"op": "put_chunk", "offset": 3, "payload_bytes": 3}
        assert payload == b"\x00\x01\x02"


@pytest.mark.parametrize(
    "wire",
    [
        struct.pack(">I", 0),
        struct.pack(">I", protocol.MAX_HEADER_BYTES + 1),
        struct.pack(">I", 5) + b"{bad}",
        struct.pack(">I", 2) + b"[]",
        struct.pack(">I", 31) + b'{"op": "x", "payload_bytes": -1}',
    ],
)
def test_malformed_frames_raise_protocol_errors(wire: bytes) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(wire)
        with pytest.raises(ProtocolError):
            protocol.recv_header(right)


def _handshake(server_token: str, client_token: str) -> tuple[Exception | None, Exception | None]:
    left, right = socket.socketpair()
    errors: list[Exception | None] = [None, None]

    def serve() -> None:
        try:
            protocol.server_handshake(left, server_token)
        except Exception as error:
            errors[0] = error
            left.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        protocol.client_handshake(right, client_token)
    except Exception as error:
        errors[1] = error
    thread.join(10)
    right.close()
    if errors[0] is None:
        left.close()
    return errors[0], errors[1]


def test_the_right_token_authenticates() -> None:
    token = protocol.make_token()
    assert _handshake(token, token) == (None, None)


def test_a_wrong_token_is_refused_on_both_sides() -> None:
    server_error, client_error = _handshake(protocol.make_token(), protocol.make_token())
    assert isinstance(server_error, ProtocolError)
    assert "wrong token" in str(server_error)
    assert isinstance(client_error, ConnectionError)


def test_addresses_parse() -> None:
    assert protocol.parse_addresses("a:1, 10.0.0.2:80") == [("a", 1), ("10.0.0.2", 80)]
    with pytest.raises(ValueError, match="host:port"):
        protocol.parse_address("nope")
