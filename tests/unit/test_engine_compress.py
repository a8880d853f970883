"""Tests for real.engine.compress: byte planes + zstd, bitwise round trips at any offset."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from real.engine import compress


def _floats(count: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(count) * 0.02).astype(np.float32).tobytes()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=300), offset=st.integers(0, 11))
def test_round_trip_any_bytes_any_offset(data: bytes, offset: int) -> None:
    payload = compress.encode(data, offset)
    out = bytearray(len(data))
    compress.decode_into(payload, offset, memoryview(out))
    assert bytes(out) == data


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 4097])
def test_round_trip_floats_cut_mid_word(offset: int) -> None:
    state = _floats(50_000)
    chunk = memoryview(state)[offset : offset + 70_001]
    out = bytearray(len(chunk))
    compress.decode_into(compress.encode(chunk, offset), offset, memoryview(out))
    assert out == chunk


def test_byte_planes_beat_plain_zstd_on_floats() -> None:
    import zstandard

    state = _floats(200_000)
    planes = len(compress.encode(state, 0))
    plain = len(zstandard.ZstdCompressor(level=compress.LEVEL).compress(state))
    assert planes < plain < len(state)


def test_decode_refuses_a_wrong_size_or_garbage() -> None:
    payload = compress.encode(_floats(100), 0)
    with pytest.raises(compress.CodecError):
        compress.decode_into(payload, 0, memoryview(bytearray(399)))
    with pytest.raises(compress.CodecError):
        compress.decode_into(b"not zstd", 0, memoryview(bytearray(10)))


def test_measure_on_a_state() -> None:
    state = _floats(300_000) + bytes(400_000)  # floats, then zeros (compressible)
    measured = compress.measure(state, sample_bytes=200_000, pieces=4)
    assert measured.ratio > 1.2
    assert measured.compress_bytes_per_s > 0 and measured.decompress_bytes_per_s > 0
    with pytest.raises(ValueError, match="no data"):
        compress.measure(b"")
